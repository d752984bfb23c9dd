#include "dist/dispatch.hpp"

#include <algorithm>
#include <numeric>
#include <string>

#include "core/aux_loss.hpp"
#include "core/error.hpp"

namespace moe::dist {
namespace {

// What each rank tells the group before anything moves.
struct Summary {
  // T, valid, lse^2 sum, sequence aux sum, sequences
  static constexpr int kHeader = 5;
  int64_t E;
  // [world][kHeader + 3E]: header, prob_sum[E], demand[E], aux_demand[E]
  std::vector<double> values;

  int64_t width() const { return kHeader + 3 * E; }
  const double* of(int q) const { return &values[q * width()]; }
  int64_t tokens(int q) const { return static_cast<int64_t>(of(q)[0]); }
  int64_t demand(int q, int64_t e) const { return static_cast<int64_t>(of(q)[kHeader + E + e]); }
  BatchSums sums(int q) const {
    const double* v = of(q);
    BatchSums b;
    b.valid_tokens = static_cast<int64_t>(v[1]);
    b.lse_sq_sum = v[2];
    b.sequence_aux_sum = v[3];
    b.sequences = static_cast<int64_t>(v[4]);
    b.prob_sum.assign(v + kHeader, v + kHeader + E);
    for (int64_t e = 0; e < E; ++e)
      b.aux_demand.push_back(static_cast<int64_t>(v[kHeader + 2 * E + e]));
    return b;
  }
};

Summary gather_summary(ExpertParallel& ep, const LayerConfig& c, const Routing& r) {
  const int64_t E = c.num_experts;
  const BatchSums local = sums_of(c, r);
  std::vector<double> mine(Summary::kHeader + 3 * E, 0.0);
  mine[0] = static_cast<double>(r.tokens);
  mine[1] = static_cast<double>(local.valid_tokens);
  mine[2] = local.lse_sq_sum;
  mine[3] = local.sequence_aux_sum;
  mine[4] = static_cast<double>(local.sequences);
  const std::vector<int64_t> demand = demand_of(r.expert, E);
  for (int64_t e = 0; e < E; ++e) {
    mine[Summary::kHeader + e] = local.prob_sum[e];
    mine[Summary::kHeader + E + e] = static_cast<double>(demand[e]);
    mine[Summary::kHeader + 2 * E + e] = static_cast<double>(local.aux_demand[e]);
  }
  return Summary{E, ep.all_gather(mine)};
}

// The batch's losses: sums over ranks, in rank order, so every rank has the same bits.
void make_losses_global(const LayerConfig& c, const Summary& s, int world,
                        std::vector<int64_t>& batch_demand, Routing& r) {
  const int64_t E = c.num_experts;
  BatchSums batch;
  batch_demand.assign(E, 0);
  for (int q = 0; q < world; ++q) {
    batch.add(s.sums(q));
    for (int64_t e = 0; e < E; ++e) batch_demand[e] += s.demand(q, e);
  }
  set_batch_losses(c, batch, r);
}

// The probability drop policy over the batch: each expert's owner ranks the gates of
// all copies sent to it (in batch order) and tells the senders which it drops.
// Returns this rank's drop marks; fills kept[q][j], the rows rank q keeps for the j-th
// expert this rank owns.
std::vector<uint8_t> owner_decided_drops(ExpertParallel& ep, const LayerConfig& c, const Summary& s,
                                         int64_t capacity, const Routing& r,
                                         std::vector<std::vector<int64_t>>& kept) {
  const Placement& pl = ep.placement;
  const int W = ep.world();
  // My copies in send order: by owner, expert, then token.
  std::vector<std::vector<int64_t>> copies_of(c.num_experts);
  for (size_t i = 0; i < r.expert.size(); ++i)
    if (r.expert[i] >= 0) copies_of[r.expert[i]].push_back(static_cast<int64_t>(i));
  std::vector<double> gates_out;
  std::vector<int64_t> out_bytes(W, 0), in_bytes(W, 0);
  for (int32_t e : pl.send_order) {
    for (int64_t i : copies_of[e]) gates_out.push_back(r.gate[i]);
    out_bytes[pl.owner[e]] += static_cast<int64_t>(copies_of[e].size() * sizeof(double));
  }
  std::vector<int64_t> in_offset(W + 1, 0);
  for (int q = 0; q < W; ++q) {
    int64_t n = 0;
    for (int32_t e : pl.owned_experts) n += s.demand(q, e);
    in_bytes[q] = n * static_cast<int64_t>(sizeof(double));
    in_offset[q + 1] = in_offset[q] + n;
  }
  std::vector<double> gates_in(in_offset[W]);
  ep.exchange(gates_out.data(), out_bytes, gates_in.data(), in_bytes);

  // As owner: per local expert, the batch's gates in rank order.
  std::vector<uint8_t> marks_out(in_offset[W], 0);
  std::vector<int64_t> cursor(in_offset.begin(), in_offset.end() - 1);
  kept.assign(W, std::vector<int64_t>(pl.owned_experts.size(), 0));
  for (size_t j = 0; j < pl.owned_experts.size(); ++j) {
    const int32_t e = pl.owned_experts[j];
    std::vector<double> gates;
    for (int q = 0; q < W; ++q)
      gates.insert(gates.end(), &gates_in[cursor[q]], &gates_in[cursor[q]] + s.demand(q, e));
    std::vector<uint8_t> marks(gates.size(), 0);
    drop_lowest_gates(gates, capacity, marks.data());
    int64_t at = 0;
    for (int q = 0; q < W; ++q) {
      const int64_t n = s.demand(q, e);
      std::copy_n(&marks[at], n, &marks_out[cursor[q]]);
      kept[q][j] = n - std::count(&marks[at], &marks[at] + n, uint8_t{1});
      at += n;
      cursor[q] += n;
    }
  }
  // Back to the senders, mirrored: byte counts are the gate counts.
  std::vector<int64_t> marks_in_bytes(W), marks_out_bytes(W);
  for (int q = 0; q < W; ++q) {
    marks_in_bytes[q] = out_bytes[q] / static_cast<int64_t>(sizeof(double));
    marks_out_bytes[q] = in_bytes[q] / static_cast<int64_t>(sizeof(double));
  }
  std::vector<uint8_t> marks_in(gates_out.size(), 0);
  ep.exchange(marks_out.data(), marks_out_bytes, marks_in.data(), marks_in_bytes);
  std::vector<uint8_t> dropped(r.expert.size(), 0);
  size_t at = 0;
  for (int32_t e : pl.send_order)
    for (int64_t i : copies_of[e]) dropped[i] = marks_in[at++];
  return dropped;
}

// The rows of the received buffer, regrouped by local expert in batch order.
Plan local_plan(const LayerConfig& local_config, const std::vector<std::vector<int64_t>>& kept,
                int64_t capacity) {
  const int W = static_cast<int>(kept.size());
  const int64_t J = local_config.num_experts;
  Plan p;
  p.slots = 1;
  p.capacity = capacity;
  p.order.resize(J);
  std::iota(p.order.begin(), p.order.end(), 0);
  p.demand.assign(J, 0);
  for (int q = 0; q < W; ++q)
    for (int64_t j = 0; j < J; ++j) p.demand[j] += kept[q][j];
  p.served = p.demand;
  p.offset.assign(J + 1, 0);
  for (int64_t j = 0; j < J; ++j) p.offset[j + 1] = p.offset[j] + p.demand[j];
  p.rows = p.tokens = p.offset[J];
  p.dropped.assign(p.rows, 0);
  p.row.assign(p.rows, -1);
  p.token_of_row.assign(p.rows, -1);
  // Received from rank q: its rows for local expert 0, then 1, ...
  int64_t received = 0;
  std::vector<int64_t> fill(p.offset.begin(), p.offset.end() - 1);
  for (int q = 0; q < W; ++q) {
    for (int64_t j = 0; j < J; ++j) {
      for (int64_t i = 0; i < kept[q][j]; ++i, ++received) {
        const int64_t r = fill[j]++;
        p.token_of_row[r] = received;
        p.row[received] = r;
      }
    }
  }
  // Rows from rank q precede rows from rank q+1 within each expert: batch order, as
  // the loop above visits ranks in order.
  return p;
}

}  // namespace

Dispatch make_dispatch(ExpertParallel& ep, const LayerConfig& c, int64_t forward_call,
                       Routing& routing, Plan& send_plan) {
  const Placement& pl = ep.placement;
  const int W = ep.world(), me = ep.rank();
  const int64_t E = c.num_experts;
  const Summary s = gather_summary(ep, c, routing);

  Dispatch d;
  d.forward_call = forward_call;
  make_losses_global(c, s, W, d.batch_demand, routing);
  int64_t batch_tokens = 0;
  for (int q = 0; q < W; ++q) batch_tokens += s.tokens(q);
  d.batch_tokens = batch_tokens;
  const int64_t capacity = configured_capacity(c, batch_tokens, d.batch_demand);

  // Drops, and kept[q][j]: the rows rank q keeps for this rank's j-th owned expert.
  std::vector<std::vector<int64_t>> kept;
  std::vector<uint8_t> dropped;
  const bool overflow = std::any_of(d.batch_demand.begin(), d.batch_demand.end(),
                                    [&](int64_t n) { return n > capacity; });
  const bool owner_drops = c.drop_policy == MOE_DROP_PROBABILITY && overflow;
  if (owner_drops) {
    dropped = owner_decided_drops(ep, c, s, capacity, routing, kept);
  } else {
    // By position, the copies of lower ranks come first: everything follows from counts.
    std::vector<int64_t> ahead(E, 0);
    kept.assign(W, std::vector<int64_t>(pl.owned_experts.size(), 0));
    d.kept_by_rank.assign(W * E, 0);
    for (int q = 0; q < W; ++q) {
      // (Orders other than token order are refused at attach over more than one rank,
      // so `ahead` is all zeros when one is asked for here.)
      if (q == me)
        dropped = ordered_position_drops(c, routing.expert, routing.slots, routing.fill_priority,
                                         capacity, ahead);
      for (int64_t e = 0; e < E; ++e)
        d.kept_by_rank[q * E + e] = std::clamp(capacity - ahead[e], int64_t{0}, s.demand(q, e));
      for (size_t j = 0; j < pl.owned_experts.size(); ++j)
        kept[q][j] = d.kept_by_rank[q * E + pl.owned_experts[j]];
      for (int64_t e = 0; e < E; ++e) ahead[e] += s.demand(q, e);
    }
  }
  send_plan = plan_from_drops(c, routing.tokens, routing.expert, std::move(dropped), capacity,
                              pl.send_order);
  d.capacity = capacity;
  d.local_config = c;
  d.local_config.num_experts = ep.local_expert_count();
  d.placement_epoch = ep.placement_epoch;
  if (ep.token_path()) {
    // The token path splits each expert's kept copies over its holders by their place
    // in the batch: every rank needs every rank's kept counts. The owners' drops leave
    // them on the owners; one more small gather brings them to all.
    if (owner_drops) {
      std::vector<double> mine(E, 0.0);
      for (int64_t e = 0; e < E; ++e) mine[e] = static_cast<double>(send_plan.served[e]);
      const std::vector<double> all = ep.all_gather(mine);
      d.kept_by_rank.assign(all.begin(), all.end());
    }
    return d;  // route_tokens (token_routes.hpp) completes it, once the gates are final
  }
  d.local = local_plan(d.local_config, kept, capacity);
  d.send_rows.assign(W, 0);
  d.recv_rows.assign(W, 0);
  for (int64_t e = 0; e < E; ++e) d.send_rows[pl.owner[e]] += send_plan.served[e];
  for (int q = 0; q < W; ++q)
    for (int64_t n : kept[q]) d.recv_rows[q] += n;
  ep.count_dispatch(d.send_rows, d.recv_rows);
  return d;
}

}  // namespace moe::dist
