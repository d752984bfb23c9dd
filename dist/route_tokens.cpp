#include "dist/route_tokens.hpp"

#include <algorithm>
#include <numeric>
#include <tuple>

namespace moe::dist {
namespace {

// One token copy's metadata, as it travels: the token's row in its message to this
// rank and the slot (row * k + slot), the expert's index in the holder's weights, and
// the gate.
struct CopyMeta {
  int64_t key;
  int64_t local_expert;
  double gate;
};

// Positions times replica counts can pass 2^63 only for absurd batches, but exactly.
__extension__ typedef __int128 wide;

// Which holder of expert e (index into holders[e]) serves the kept copy at position
// `pos` among the batch's `kept` copies of e: contiguous blocks, equal within one.
int64_t replica_of(int64_t pos, int64_t kept, int64_t replicas) {
  return static_cast<int64_t>((static_cast<wide>(pos) * replicas) / kept);
}

// First position served by replica i: ceil(i * kept / replicas).
int64_t replica_begin(int64_t i, int64_t kept, int64_t replicas) {
  return static_cast<int64_t>((static_cast<wide>(i) * kept + replicas - 1) / replicas);
}

}  // namespace

Plan expert_rows_plan(const std::vector<int64_t>& demand, int64_t capacity) {
  const int64_t J = static_cast<int64_t>(demand.size());
  Plan p;
  p.slots = 1;
  p.capacity = capacity;
  p.order.resize(J);
  std::iota(p.order.begin(), p.order.end(), 0);
  p.demand = p.served = demand;
  p.offset.assign(J + 1, 0);
  for (int64_t j = 0; j < J; ++j) p.offset[j + 1] = p.offset[j] + demand[j];
  p.rows = p.tokens = p.offset[J];
  p.dropped.assign(p.rows, 0);
  p.row.resize(p.rows);
  std::iota(p.row.begin(), p.row.end(), 0);
  p.token_of_row.assign(p.rows, -1);
  return p;
}

void route_tokens(ExpertParallel& ep, const LayerConfig& c, const Routing& r,
                  const std::vector<uint8_t>& dropped, Dispatch& d) {
  const Placement& pl = ep.placement;
  const int W = ep.world(), me = ep.rank();
  const int64_t E = c.num_experts, k = r.slots, T = r.tokens;
  auto kept = [&](int q, int64_t e) { return d.kept_by_rank[q * E + e]; };
  std::vector<int64_t> kept_total(E, 0), kept_ahead(E, 0);
  for (int q = 0; q < W; ++q)
    for (int64_t e = 0; e < E; ++e) {
      kept_total[e] += kept(q, e);
      if (q < me) kept_ahead[e] += kept(q, e);
    }

  // As the source: each kept copy's destination (rank, local expert), in token order.
  TokenRoutes routes;
  std::vector<std::vector<std::tuple<int64_t, int64_t, int64_t>>> to(W);  // (j, t, s)
  std::vector<int64_t> seen(E, 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s < k; ++s) {
      const int64_t i = t * k + s;
      const int32_t e = r.expert[i];
      if (e < 0 || dropped[i]) continue;
      const int64_t m = static_cast<int64_t>(pl.holders[e].size());
      const int64_t h = replica_of(kept_ahead[e] + seen[e]++, kept_total[e], m);
      to[pl.holders[e][h]].emplace_back(pl.holder_index[e][h], t, s);
    }
  routes.to_ranks.tokens = T;
  routes.to_ranks.slots = W;
  routes.to_ranks.row.assign(T * W, -1);
  routes.send_rows.assign(W, 0);
  routes.copies_out.assign(W, 0);
  std::vector<CopyMeta> meta_out;
  for (int p = 0; p < W; ++p) {
    std::sort(to[p].begin(), to[p].end());
    // The distinct tokens sent to p, ascending, numbered in that order.
    std::vector<int64_t> tokens;
    for (const auto& copy : to[p]) tokens.push_back(std::get<1>(copy));
    std::sort(tokens.begin(), tokens.end());
    tokens.erase(std::unique(tokens.begin(), tokens.end()), tokens.end());
    const int64_t first = routes.to_ranks.rows;
    for (size_t u = 0; u < tokens.size(); ++u) {
      routes.to_ranks.row[tokens[u] * W + p] = first + static_cast<int64_t>(u);
      routes.to_ranks.token_of_row.push_back(tokens[u]);
    }
    routes.to_ranks.rows += static_cast<int64_t>(tokens.size());
    routes.send_rows[p] = static_cast<int64_t>(tokens.size());
    routes.copies_out[p] = static_cast<int64_t>(to[p].size());
    for (const auto& [j, t, s] : to[p]) {
      const int64_t u = routes.to_ranks.row[t * W + p] - first;
      meta_out.push_back({u * k + s, j, r.gate[t * k + s]});
      routes.sent_copy.push_back(t * k + s);
    }
  }

  // As a holder: the copies each rank sends to this rank's experts (this rank's
  // replica's share of each expert's kept copies, intersected with the rank's).
  routes.copies_in.assign(W, 0);
  for (size_t j = 0; j < pl.local_experts.size(); ++j) {
    const int32_t e = pl.local_experts[j];
    const auto& holders = pl.holders[e];
    const int64_t m = static_cast<int64_t>(holders.size());
    const int64_t h = std::find(holders.begin(), holders.end(), me) - holders.begin();
    const int64_t lo = replica_begin(h, kept_total[e], m),
                  hi = replica_begin(h + 1, kept_total[e], m);
    int64_t ahead = 0;
    for (int q = 0; q < W; ++q) {
      const int64_t a = std::max(lo, ahead), b = std::min(hi, ahead + kept(q, e));
      routes.copies_in[q] += std::max<int64_t>(0, b - a);
      ahead += kept(q, e);
    }
  }
  const auto meta_bytes = [](const std::vector<int64_t>& n) {
    std::vector<int64_t> bytes(n.size());
    for (size_t i = 0; i < n.size(); ++i) bytes[i] = n[i] * static_cast<int64_t>(sizeof(CopyMeta));
    return bytes;
  };
  const int64_t copies_received =
      std::accumulate(routes.copies_in.begin(), routes.copies_in.end(), int64_t{0});
  std::vector<CopyMeta> meta_in(copies_received);
  ep.exchange(meta_out.data(), meta_bytes(routes.copies_out), meta_in.data(),
              meta_bytes(routes.copies_in));
  ep.count_rows(static_cast<int64_t>(meta_out.size() * sizeof(CopyMeta)),
                copies_received * static_cast<int64_t>(sizeof(CopyMeta)), 0, 0);

  // The received token rows, packed by sender; each sender's rows are its distinct
  // tokens in ascending order, so the row count is the largest row index plus one.
  routes.recv_rows.assign(W, 0);
  std::vector<int64_t> first_row(W + 1, 0), first_copy(W + 1, 0);
  for (int q = 0; q < W; ++q) first_copy[q + 1] = first_copy[q] + routes.copies_in[q];
  for (int q = 0; q < W; ++q) {
    for (int64_t i = first_copy[q]; i < first_copy[q + 1]; ++i)
      routes.recv_rows[q] = std::max(routes.recv_rows[q], meta_in[i].key / k + 1);
    first_row[q + 1] = first_row[q] + routes.recv_rows[q];
  }
  const int64_t U = first_row[W], J = ep.local_expert_count();

  // The expert rows: by local expert, then sender rank, then token (batch order), as
  // each sender's copies arrive sorted by (expert, token).
  std::vector<int64_t> demand(J, 0);
  for (const CopyMeta& m : meta_in) ++demand[m.local_expert];
  Plan& local = d.local;
  local = expert_rows_plan(demand, d.capacity);
  routes.copies.tokens = U;
  routes.copies.slots = k;
  routes.copies.rows = local.rows;
  routes.copies.row.assign(U * k, -1);
  routes.copies.token_of_row.assign(local.rows, -1);
  routes.gate.assign(U * k, 0.0);
  routes.received_copy.resize(copies_received);
  std::vector<int64_t> fill(local.offset.begin(), local.offset.end() - 1);
  for (int q = 0; q < W; ++q) {
    for (int64_t i = first_copy[q]; i < first_copy[q + 1]; ++i) {
      const CopyMeta& m = meta_in[i];
      const int64_t u = first_row[q] + m.key / k, slot = u * k + m.key % k;
      const int64_t row = fill[m.local_expert]++;
      local.token_of_row[row] = u;
      routes.copies.row[slot] = row;
      routes.copies.token_of_row[row] = u;
      routes.gate[slot] = m.gate;
      routes.received_copy[i] = slot;
    }
  }
  d.send_rows = routes.copies_out;
  d.recv_rows = routes.copies_in;
  ep.count_dispatch(d.send_rows, d.recv_rows);
  d.routes = std::move(routes);
}

}  // namespace moe::dist
