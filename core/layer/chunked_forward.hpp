// The token path's forward pipelined in chunks (moe_ep_options_t.chunks): each rank's
// rows to each peer go in `chunks` contiguous pieces of its message, and while the
// experts run on one chunk's rows, the next chunk's rows travel and the earlier chunks'
// results return. Every expert row is computed from the same inputs as without chunks
// and written to the same place in the saved activations, so backward, which is not
// chunked, sees exactly what the unchunked forward would have saved.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "backends/backend.hpp"
#include "core/host_buffer.hpp"
#include "dist/dispatch.hpp"
#include "dist/route_tokens.hpp"
#include "dist/row_exchange.hpp"

namespace moe {

namespace chunked {

// Row i of a block of `rows` rows falls in chunk floor(i * chunks / rows) (blocks split
// into equal pieces, within one): the first row of chunk c.
inline int64_t first_row(int64_t rows, int64_t c, int64_t chunks) {
  return (rows * c + chunks - 1) / chunks;
}

// [chunk][peer] rows of each peer's block in each chunk, and where they start in it.
struct Split {
  std::vector<std::vector<int64_t>> rows, start;
};

inline Split split(const std::vector<int64_t>& block_rows, int64_t chunks) {
  Split s;
  s.rows.assign(chunks, std::vector<int64_t>(block_rows.size()));
  s.start = s.rows;
  for (int64_t c = 0; c < chunks; ++c)
    for (size_t p = 0; p < block_rows.size(); ++p) {
      s.start[c][p] = first_row(block_rows[p], c, chunks);
      s.rows[c][p] = first_row(block_rows[p], c + 1, chunks) - s.start[c][p];
    }
  return s;
}

// Copies chunk rows between a whole buffer packed by peer blocks and a chunk's buffer
// packed by peer: to_chunk true gathers, false scatters.
template <typename S>
void move_rows(S* whole, const std::vector<int64_t>& block_rows, const Split& split, int64_t c,
               int64_t width, S* chunk, bool to_chunk) {
  int64_t block = 0, at = 0;
  for (size_t p = 0; p < block_rows.size(); ++p) {
    S* a = whole + (block + split.start[c][p]) * width;
    S* b = chunk + at * width;
    const size_t bytes = sizeof(S) * static_cast<size_t>(split.rows[c][p] * width);
    if (bytes) to_chunk ? std::memcpy(b, a, bytes) : std::memcpy(a, b, bytes);
    at += split.rows[c][p];
    block += block_rows[p];
  }
}

inline int64_t sum(const std::vector<int64_t>& v) {
  int64_t n = 0;
  for (int64_t x : v) n += x;
  return n;
}

}  // namespace chunked

// Forward of the token path in `chunks` pieces. `sent` is this rank's rows to the peers
// (routes.to_ranks order); fills `acts` (the whole local plan's rows) and `returned`
// (the peers' partial rows, in routes.to_ranks order). Collective.
template <typename S>
void chunked_token_forward(Backend& backend, const LayerConfig& c, const LayerConfig& expert_config,
                           const Plan& local, const dist::TokenRoutes& routes,
                           const ExpertWeights<S>& weights, dist::ExpertParallel& ep, const S* sent,
                           ExpertActivations<S> acts, S* returned) {
  const int64_t d = c.d_model, n = ep.chunks, F = c.ff_width(), k = routes.copies.slots;
  const int W = ep.world();
  const chunked::Split out = chunked::split(routes.send_rows, n),
                       in = chunked::split(routes.recv_rows, n);
  const int64_t U = routes.copies.tokens;
  std::vector<int64_t> first(W + 1, 0);
  for (int q = 0; q < W; ++q) first[q + 1] = first[q] + routes.recv_rows[q];
  // The chunk of every received row, and the chunk's received rows in packed order.
  std::vector<int64_t> chunk_of(U, 0);
  std::vector<std::vector<int64_t>> received_rows(n);
  for (int64_t ch = 0; ch < n; ++ch)
    for (int q = 0; q < W; ++q)
      for (int64_t i = 0; i < in.rows[ch][q]; ++i) {
        const int64_t u = first[q] + in.start[ch][q] + i;
        chunk_of[u] = ch;
        received_rows[ch].push_back(u);
      }
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(S));
  ep.count_rows(
      chunked::sum(routes.send_rows) * row_bytes, chunked::sum(routes.recv_rows) * row_bytes,
      chunked::sum(routes.copies_out) * row_bytes, chunked::sum(routes.copies_in) * row_bytes);
  ep.count_rows(
      chunked::sum(routes.recv_rows) * row_bytes, chunked::sum(routes.send_rows) * row_bytes,
      chunked::sum(routes.copies_in) * row_bytes, chunked::sum(routes.copies_out) * row_bytes);
  host_buffer<S> received(U * d);
  std::vector<host_buffer<S>> send_chunk(n), recv_chunk(n), partial(n), back(n);
  std::vector<dist::ExpertParallel::Started> dispatch(n), result(n);
  auto bytes = [&](const std::vector<int64_t>& rows) {
    return dist::bytes_of_rows(rows, row_bytes);
  };
  auto start_dispatch = [&](int64_t ch) {
    send_chunk[ch].resize(chunked::sum(out.rows[ch]) * d);
    recv_chunk[ch].resize(chunked::sum(in.rows[ch]) * d);
    chunked::move_rows(const_cast<S*>(sent), routes.send_rows, out, ch, d, send_chunk[ch].data(),
                       true);
    dispatch[ch] = ep.exchange_start(send_chunk[ch].data(), bytes(out.rows[ch]),
                                     recv_chunk[ch].data(), bytes(in.rows[ch]));
  };
  auto wait_all = [&] {
    for (auto& s : dispatch) ep.exchange_wait(s);
    for (auto& s : result) ep.exchange_wait(s);
  };
  try {
    start_dispatch(0);
    for (int64_t ch = 0; ch < n; ++ch) {
      ep.exchange_wait(dispatch[ch]);
      chunked::move_rows(received.data(), routes.recv_rows, in, ch, d, recv_chunk[ch].data(),
                         false);
      if (ch + 1 < n) start_dispatch(ch + 1);
      // This chunk's expert rows, in the local plan's order.
      const int64_t J = static_cast<int64_t>(local.order.size());
      std::vector<int64_t> demand(J, 0), whole_row;
      for (int64_t j = 0; j < J; ++j)
        for (int64_t r = local.offset[j]; r < local.offset[j + 1]; ++r)
          if (chunk_of[local.token_of_row[r]] == ch) {
            whole_row.push_back(r);
            ++demand[j];
          }
      Plan sub = dist::expert_rows_plan(demand, local.capacity);
      for (int64_t i = 0; i < sub.rows; ++i) sub.token_of_row[i] = local.token_of_row[whole_row[i]];
      if (sub.rows > 0) {
        host_buffer<S> xp(sub.rows * d), h_pre(sub.rows * F), h(sub.rows * c.d_ff),
            yp(sub.rows * d);
        dist::gather_rows(received.data(), sub.token_of_row, d, xp.data());
        ExpertActivations<S> part{xp.data(), h_pre.data(), h.data(), yp.data()};
        backend.experts_forward(expert_config, sub, weights, part);
        for (int64_t i = 0; i < sub.rows; ++i) {
          const int64_t r = whole_row[i];
          std::memcpy(acts.xp + r * d, xp.data() + i * d, sizeof(S) * d);
          std::memcpy(acts.h_pre + r * F, h_pre.data() + i * F, sizeof(S) * F);
          std::memcpy(acts.h + r * c.d_ff, h.data() + i * c.d_ff, sizeof(S) * c.d_ff);
          std::memcpy(acts.yp + r * d, yp.data() + i * d, sizeof(S) * d);
        }
      }
      // The chunk's received rows' partial sums, returned.
      Plan rows_here;
      rows_here.tokens = static_cast<int64_t>(received_rows[ch].size());
      rows_here.slots = k;
      rows_here.rows = local.rows;
      rows_here.row.resize(rows_here.tokens * k);
      std::vector<double> gate(rows_here.tokens * k);
      for (int64_t m = 0; m < rows_here.tokens; ++m)
        for (int64_t s = 0; s < k; ++s) {
          rows_here.row[m * k + s] = routes.copies.row[received_rows[ch][m] * k + s];
          gate[m * k + s] = routes.gate[received_rows[ch][m] * k + s];
        }
      partial[ch].resize(rows_here.tokens * d);
      backend.combine(c, rows_here, gate.data(), acts.yp, partial[ch].data());
      back[ch].resize(chunked::sum(out.rows[ch]) * d);
      result[ch] = ep.exchange_start(partial[ch].data(), bytes(in.rows[ch]), back[ch].data(),
                                     bytes(out.rows[ch]));
    }
    for (int64_t ch = 0; ch < n; ++ch) {
      ep.exchange_wait(result[ch]);
      chunked::move_rows(returned, routes.send_rows, out, ch, d, back[ch].data(), false);
    }
  } catch (...) {
    try {
      wait_all();  // the transport holds the buffers until then
    } catch (...) {
    }
    throw;
  }
}

}  // namespace moe
