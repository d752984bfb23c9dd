// Moving token rows between ranks and between the two row orders of expert
// parallelism: the exchange order (packed by peer rank) and the expert order (grouped
// by local expert, batch order within each). Plain copies: the bits never change.
#pragma once

#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/host_buffer.hpp"
#include "core/parallel_threshold.hpp"
#include "dist/expert_parallel.hpp"

namespace moe::dist {

// The byte count of each peer's rows: rows[p] * row_bytes.
inline std::vector<int64_t> bytes_of_rows(const std::vector<int64_t>& rows, int64_t row_bytes) {
  std::vector<int64_t> bytes(rows.size());
  for (size_t p = 0; p < rows.size(); ++p) bytes[p] = rows[p] * row_bytes;
  return bytes;
}

// Sends rows_out[p] rows of `width` to each peer p and returns the rows received,
// rows_in[p] from each peer, packed in rank order. `copies_out` and `copies_in`, the
// token copies these rows stand for (the row counts themselves when one row is one
// copy), feed the traffic's per-copy comparison.
template <typename S>
host_buffer<S> exchange_rows(ExpertParallel& ep, const S* rows,
                             const std::vector<int64_t>& rows_out,
                             const std::vector<int64_t>& rows_in, int64_t width, int64_t copies_out,
                             int64_t copies_in) {
  const int64_t row_bytes = width * static_cast<int64_t>(sizeof(S));
  const std::vector<int64_t> out_bytes = bytes_of_rows(rows_out, row_bytes),
                             in_bytes = bytes_of_rows(rows_in, row_bytes);
  const int64_t sent = std::accumulate(rows_out.begin(), rows_out.end(), int64_t{0});
  const int64_t received = std::accumulate(rows_in.begin(), rows_in.end(), int64_t{0});
  host_buffer<S> in(static_cast<size_t>(received * width));
  ep.exchange(rows, out_bytes, in.data(), in_bytes);
  ep.count_rows(sent * row_bytes, received * row_bytes, copies_out * row_bytes,
                copies_in * row_bytes);
  return in;
}

template <typename S>
host_buffer<S> exchange_rows(ExpertParallel& ep, const S* rows,
                             const std::vector<int64_t>& rows_out,
                             const std::vector<int64_t>& rows_in, int64_t width) {
  return exchange_rows(ep, rows, rows_out, rows_in, width,
                       std::accumulate(rows_out.begin(), rows_out.end(), int64_t{0}),
                       std::accumulate(rows_in.begin(), rows_in.end(), int64_t{0}));
}

// dst[i] = src[index[i]] for rows of `width`.
template <typename S>
void gather_rows(const S* src, const std::vector<int64_t>& index, int64_t width, S* dst) {
  const int64_t n = static_cast<int64_t>(index.size());
#pragma omp parallel for schedule(static) if (worth_threads(n * width))
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(dst + i * width, src + index[i] * width, sizeof(S) * width);
}

}  // namespace moe::dist
