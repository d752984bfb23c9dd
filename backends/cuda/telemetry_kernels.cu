#include <cub/block/block_reduce.cuh>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device_buffer.hpp"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/telemetry_kernels.hpp"
#include "core/telemetry/step_stats.hpp"

namespace moe::cuda {
namespace {

constexpr int kMaxBlocks = 132;
using L = StatsLayout;

struct Max {
  __device__ double operator()(double a, double b) const { return a > b ? a : b; }
};

// Each thread sums its tokens (a grid-stride loop over a fixed grid); blocks reduce
// in a fixed tree and leave their partial sums for finish_kernel to add in block order.
// Integer counts go straight to `out` with atomics, which are exact.
__global__ void token_sums_kernel(StatsInputs in, double* partial, int64_t* out) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const int64_t E = in.experts, slots = in.slots;
  const StatsLayout layout{E};
  auto* counts = reinterpret_cast<unsigned long long*>(out);
  double sums[L::kDoubles] = {0, 0, 0, 0, 0, 0, 0};
  unsigned long long fully_dropped = 0, pairs = 0, same_top1 = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < in.tokens;
       t += stride) {
    if (in.nonfinite[t]) continue;
    const float* p = in.prob + t * E;
    double entropy = 0, first = -1, second = -1, mass = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double v = p[e];
      if (v > 0) entropy -= v * log(v);
      if (v > first) {
        second = first;
        first = v;
      } else if (v > second) {
        second = v;
      }
    }
    sums[L::kEntropy] += entropy;
    sums[L::kTop1] += first;
    sums[L::kMargin] += E > 1 ? first - second : first;
    const int32_t* chosen = in.experts_of + t * slots;
    int64_t picked = 0, dropped = 0;
    for (int64_t i = 0; i < slots; ++i) {
      if (chosen[i] < 0) continue;
      ++picked;
      dropped += in.dropped[t * slots + i];
      mass += p[chosen[i]];
      if (layout.coactivation_words() == 0) continue;
      for (int64_t j = 0; j < slots; ++j)
        if (chosen[j] >= 0)
          atomicAdd(&counts[layout.coactivation() + chosen[i] * E + chosen[j]], 1ULL);
    }
    sums[L::kTopkMass] += mass;
    fully_dropped += picked > 0 && dropped == picked;
    if (in.logits)
      for (int64_t e = 0; e < E; ++e)
        sums[L::kLogitMaxAbs] =
            fmax(sums[L::kLogitMaxAbs], fabs(static_cast<double>(in.logits[t * E + e])));

    // The pair (t, t + 1) within one sequence.
    if (in.seq_len <= 0 || t + 1 >= in.tokens || (t + 1) % in.seq_len == 0 || in.nonfinite[t + 1])
      continue;
    ++pairs;
    const int32_t* next = chosen + slots;
    same_top1 += first_choice(chosen, in.gates + t * slots, slots, in.expert_choice) ==
                 first_choice(next, in.gates + (t + 1) * slots, slots, in.expert_choice);
    int64_t shared = 0;
    for (int64_t i = 0; i < slots; ++i)
      for (int64_t j = 0; j < slots; ++j) shared += chosen[i] >= 0 && chosen[i] == next[j];
    sums[L::kSeqOverlap] += static_cast<double>(shared) / static_cast<double>(in.top_k);
    double dot = 0, na = 0, nb = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double a = p[e], b = p[E + e];
      dot += a * b;
      na += a * a;
      nb += b * b;
    }
    sums[L::kSeqCosine] += na > 0 && nb > 0 ? dot / sqrt(na * nb) : 0.0;
  }
  for (int f = 0; f < L::kDoubles; ++f) {
    const double total = f == L::kLogitMaxAbs ? Reduce(storage).Reduce(sums[f], Max())
                                              : Reduce(storage).Sum(sums[f]);
    if (threadIdx.x == 0) partial[blockIdx.x * L::kDoubles + f] = total;
    __syncthreads();
  }
  const unsigned long long tallies[3] = {fully_dropped, pairs, same_top1};
  const int64_t where[3] = {layout.tokens_fully_dropped(), layout.seq_pairs(),
                            layout.seq_same_top1()};
  for (int i = 0; i < 3; ++i) {
    const double total = Reduce(storage).Sum(static_cast<double>(tallies[i]));
    if (threadIdx.x == 0 && total > 0)
      atomicAdd(&counts[where[i]], static_cast<unsigned long long>(total));
    __syncthreads();
  }
}

__global__ void finish_kernel(int blocks, const double* partial, int64_t* out) {
  const int f = threadIdx.x;
  if (f >= L::kDoubles) return;
  double total = 0;
  for (int b = 0; b < blocks; ++b) {
    const double v = partial[b * L::kDoubles + f];
    total = f == L::kLogitMaxAbs ? fmax(total, v) : total + v;
  }
  reinterpret_cast<double*>(out)[f] = total;
}

}  // namespace

void step_stats(const StatsInputs& in, int64_t* out, cudaStream_t stream) {
  const StatsLayout layout{in.experts};
  check(cudaMemsetAsync(out, 0, layout.words() * sizeof(int64_t), stream), "cudaMemsetAsync");
  if (in.tokens == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>(blocks_for(in.tokens), kMaxBlocks));
  DeviceBuffer partial(blocks * L::kDoubles * sizeof(double), stream);
  token_sums_kernel<<<blocks, kThreads, 0, stream>>>(in, partial.get<double>(), out);
  check_launch("token_sums");
  finish_kernel<<<1, 32, 0, stream>>>(blocks, partial.get<double>(), out);
  check_launch("finish_sums");
}

}  // namespace moe::cuda
