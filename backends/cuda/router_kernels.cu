#include <cuda_bf16.h>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device_buffer.hpp"
#include "backends/cuda/launch.cuh"
#include "backends/cuda/plan_kernels.hpp"
#include "backends/cuda/router_kernels.hpp"
#include "core/hash_router.hpp"
#include "core/random.hpp"

namespace moe::cuda {
namespace {

__device__ inline bool finite_value(float v) {
  return isfinite(v);
}
__device__ inline bool finite_value(__nv_bfloat16 v) {
  return isfinite(__bfloat162float(v));
}

template <typename S>
__global__ void route_hash_kernel(HashParams p, const S* x, int32_t* experts, float* gates,
                                  float* prob, float* lse, uint8_t* nonfinite,
                                  unsigned long long* demand) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= p.tokens) return;
  const int64_t E = p.experts, k = p.top_k, d = p.d_model;
  const S* row = x + t * d;
  int32_t* chosen = experts + t * k;
  for (int64_t e = 0; e < E; ++e) prob[t * E + e] = 0.f;
  lse[t] = 0.f;
  bool finite = true;
  for (int64_t i = 0; i < d; ++i) finite = finite && finite_value(row[i]);
  nonfinite[t] = finite ? 0 : 1;
  if (!finite) {
    for (int64_t j = 0; j < k; ++j) {
      chosen[j] = -1;
      gates[t * k + j] = 0.f;
    }
    return;
  }
  const bool in_table = p.mode == MOE_HASH_TABLE && p.table != nullptr && p.token_ids[t] >= 0 &&
                        p.token_ids[t] < p.vocab_size;
  if (in_table) {
    for (int64_t j = 0; j < k; ++j) chosen[j] = p.table[p.token_ids[t] * k + j];
  } else if (p.mode == MOE_HASH_CONTENT) {
    hash_experts(hash_bytes(row, sizeof(S) * d), E, k, chosen);
  } else {
    hash_experts(static_cast<uint64_t>(p.token_ids[t]), E, k, chosen);
  }
  const float share = 1.f / static_cast<float>(k);
  for (int64_t j = 0; j < k; ++j) {
    gates[t * k + j] = share;
    prob[t * E + chosen[j]] = share;
    atomicAdd(&demand[chosen[j]], 1ULL);
  }
}

// The selection key of every (token, expert) and its group (the expert; -1 for
// non-finite rows): P, or the softmax of noisy scores.
__global__ void expert_choice_keys_kernel(RouteParams p, const float* logits, const float* prob,
                                          const uint8_t* nonfinite, int32_t* group, float* key) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= p.tokens) return;
  const int64_t E = p.experts;
  for (int64_t e = 0; e < E; ++e) {
    group[t * E + e] = nonfinite[t] ? -1 : static_cast<int32_t>(e);
    key[t * E + e] = prob[t * E + e];
  }
  if (nonfinite[t] || p.noise_std <= 0.0) return;
  auto noisy = [&](int64_t e) {
    const double draw = p.noise_type == MOE_NOISE_GUMBEL ? standard_gumbel(p.seed, p.step, t, e)
                                                         : standard_normal(p.seed, p.step, t, e);
    return logits[t * E + e] / p.temperature + p.noise_std * draw;
  };
  double m = -INFINITY;
  for (int64_t e = 0; e < E; ++e) m = fmax(m, noisy(e));
  double sum = 0.0;
  for (int64_t e = 0; e < E; ++e) sum += exp(noisy(e) - m);
  for (int64_t e = 0; e < E; ++e) key[t * E + e] = static_cast<float>(exp(noisy(e) - m) / sum);
}

__global__ void take_ranked_kernel(int64_t items, int64_t E, int64_t capacity, const int64_t* rank,
                                   const float* prob, int32_t* experts, float* gates,
                                   unsigned long long* demand) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= items) return;
  const bool taken = rank[i] >= 0 && rank[i] < capacity;
  const int32_t e = static_cast<int32_t>(i % E);
  experts[i] = taken ? e : -1;
  gates[i] = taken ? prob[i] : 0.f;
  if (taken) atomicAdd(&demand[e], 1ULL);
}

}  // namespace

void route_hash(const HashParams& p, moe_dtype_t dtype, const void* x, int32_t* experts,
                float* gates, float* prob, float* lse, uint8_t* nonfinite, int64_t* demand,
                cudaStream_t stream) {
  if (p.tokens == 0) return;
  auto* counts = reinterpret_cast<unsigned long long*>(demand);
  if (dtype == MOE_DTYPE_BF16) {
    route_hash_kernel<<<blocks_for(p.tokens, 128), 128, 0, stream>>>(
        p, static_cast<const __nv_bfloat16*>(x), experts, gates, prob, lse, nonfinite, counts);
  } else {
    route_hash_kernel<<<blocks_for(p.tokens, 128), 128, 0, stream>>>(
        p, static_cast<const float*>(x), experts, gates, prob, lse, nonfinite, counts);
  }
  check_launch("route_hash");
}

void select_expert_choice(const RouteParams& p, int64_t capacity, const float* logits,
                          const float* prob, const uint8_t* nonfinite, int32_t* experts,
                          float* gates, int64_t* demand, cudaStream_t stream) {
  const int64_t items = p.tokens * p.experts;
  if (items == 0) return;
  DeviceBuffer group(items * sizeof(int32_t), stream), key(items * sizeof(float), stream),
      rank(items * sizeof(int64_t), stream);
  expert_choice_keys_kernel<<<blocks_for(p.tokens, 128), 128, 0, stream>>>(
      p, logits, prob, nonfinite, group.get<int32_t>(), key.get<float>());
  check_launch("expert_choice_keys");
  rank_by_descending_key(items, p.experts, group.get<int32_t>(), key.get<float>(),
                         rank.get<int64_t>(), stream);
  take_ranked_kernel<<<blocks_for(items), kThreads, 0, stream>>>(
      items, p.experts, capacity, rank.get<int64_t>(), prob, experts, gates,
      reinterpret_cast<unsigned long long*>(demand));
  check_launch("take_ranked");
}

}  // namespace moe::cuda
