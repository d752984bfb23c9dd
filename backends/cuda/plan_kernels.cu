#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device_buffer.hpp"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/plan_kernels.hpp"

namespace moe::cuda {
namespace {

// Sort key: the group in the high word, then the key's bits inverted, so that ascending
// order is by group, then descending key. Non-negative floats order as their bits do.
__global__ void sort_keys_kernel(int64_t items, int64_t groups, const int32_t* group_of,
                                 const float* key, uint64_t* sort_key, int64_t* index) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= items) return;
  const int32_t g = group_of[i];
  const float k = key[i];
  const uint32_t bits = k > 0.f ? __float_as_uint(k) : 0u;  // -0 and +0 alike
  const uint64_t group = g < 0 ? static_cast<uint64_t>(groups) : static_cast<uint64_t>(g);
  sort_key[i] = (group << 32) | static_cast<uint64_t>(~bits);
  index[i] = i;
}

// The rank of a sorted item is its distance from the first item of its group.
__global__ void ranks_kernel(int64_t items, int64_t groups, const uint64_t* sorted_key,
                             const int64_t* sorted_index, int64_t* rank) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= items) return;
  const uint64_t group = sorted_key[i] >> 32;
  if (group >= static_cast<uint64_t>(groups)) return;
  int64_t lo = 0, hi = i;  // first position whose group is `group`
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if ((sorted_key[mid] >> 32) < group) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  rank[sorted_index[i]] = i - lo;
}

__global__ void drop_ranked_kernel(int64_t copies, const int64_t* rank, const int64_t* summary,
                                   SummaryLayout L, uint8_t* dropped) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c < copies && rank[c] >= summary[L.capacity()]) dropped[c] = 1;
}

constexpr int kScanThreads = 512;

// One block per expert scans all copies in token order.
__global__ void rank_kept_kernel(int64_t copies, const int32_t* expert_of, const int64_t* summary,
                                 SummaryLayout L, int64_t* row, uint8_t* dropped) {
  using Scan = cub::BlockScan<int64_t, kScanThreads>;
  __shared__ typename Scan::TempStorage storage;
  const int32_t e = blockIdx.x;
  const int64_t C = summary[L.capacity()];
  int64_t running = 0;
  for (int64_t base = 0; base < copies; base += kScanThreads) {
    const int64_t c = base + threadIdx.x;
    const int64_t flag = c < copies && expert_of[c] == e && !dropped[c] ? 1 : 0;
    int64_t prefix, block_total;
    Scan(storage).ExclusiveSum(flag, prefix, block_total);
    __syncthreads();
    if (flag) {
      const int64_t rank = running + prefix;
      if (rank < C) {
        row[c] = rank;
      } else {
        dropped[c] = 1;
      }
    }
    running += block_total;
  }
}

__global__ void place_rows_kernel(int64_t copies, int64_t slots, const int32_t* expert_of,
                                  const int64_t* offsets, int64_t* row, int64_t* row_token) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= copies || row[c] < 0) return;
  const int64_t r = offsets[expert_of[c]] + row[c];
  row[c] = r;
  row_token[r] = c / slots;
}

int end_bit_for(int64_t groups) {
  int bits = 1;
  while ((int64_t{1} << bits) <= groups) ++bits;
  return 32 + bits;
}

}  // namespace

void rank_by_descending_key(int64_t items, int64_t groups, const int32_t* group_of,
                            const float* key, int64_t* rank, cudaStream_t stream) {
  if (items == 0) return;
  check(cudaMemsetAsync(rank, 0xff, items * sizeof(int64_t), stream), "cudaMemsetAsync");
  DeviceBuffer keys(items * sizeof(uint64_t), stream),
      sorted_keys(items * sizeof(uint64_t), stream);
  DeviceBuffer index(items * sizeof(int64_t), stream),
      sorted_index(items * sizeof(int64_t), stream);
  sort_keys_kernel<<<blocks_for(items), kThreads, 0, stream>>>(
      items, groups, group_of, key, keys.get<uint64_t>(), index.get<int64_t>());
  check_launch("sort_keys");
  size_t temp_bytes = 0;
  const int end_bit = end_bit_for(groups);
  check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.get<uint64_t>(),
                                        sorted_keys.get<uint64_t>(), index.get<int64_t>(),
                                        sorted_index.get<int64_t>(), items, 0, end_bit, stream),
        "cub::DeviceRadixSort::SortPairs");
  DeviceBuffer temp(temp_bytes, stream);
  check(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, keys.get<uint64_t>(),
                                        sorted_keys.get<uint64_t>(), index.get<int64_t>(),
                                        sorted_index.get<int64_t>(), items, 0, end_bit, stream),
        "cub::DeviceRadixSort::SortPairs");
  ranks_kernel<<<blocks_for(items), kThreads, 0, stream>>>(
      items, groups, sorted_keys.get<uint64_t>(), sorted_index.get<int64_t>(), rank);
  check_launch("ranks");
}

void drop_lowest_gates(int64_t copies, int64_t experts, const int32_t* expert_of,
                       const float* gates, const int64_t* summary, uint8_t* dropped,
                       cudaStream_t stream) {
  if (copies == 0) return;
  DeviceBuffer rank(copies * sizeof(int64_t), stream);
  rank_by_descending_key(copies, experts, expert_of, gates, rank.get<int64_t>(), stream);
  drop_ranked_kernel<<<blocks_for(copies), kThreads, 0, stream>>>(
      copies, rank.get<int64_t>(), summary, SummaryLayout{experts}, dropped);
  check_launch("drop_ranked");
}

void rank_kept_copies(int64_t copies, int64_t experts, const int32_t* expert_of,
                      const int64_t* summary, int64_t* row, uint8_t* dropped, cudaStream_t stream) {
  if (copies == 0 || experts == 0) return;
  rank_kept_kernel<<<static_cast<unsigned>(experts), kScanThreads, 0, stream>>>(
      copies, expert_of, summary, SummaryLayout{experts}, row, dropped);
  check_launch("rank_kept");
}

void place_rows(int64_t copies, int64_t slots, const int32_t* expert_of, const int64_t* offsets,
                int64_t* row, int64_t* row_token, cudaStream_t stream) {
  if (copies == 0) return;
  place_rows_kernel<<<blocks_for(copies), kThreads, 0, stream>>>(copies, slots, expert_of, offsets,
                                                                 row, row_token);
  check_launch("place_rows");
}

}  // namespace moe::cuda
