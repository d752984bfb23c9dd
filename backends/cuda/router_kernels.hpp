// The routers beyond token-choice softmax and sigmoid (kernels.hpp's route): the hash
// router and expert choice, with the same decisions as core/router.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "backends/cuda/kernels.hpp"
#include "moe/moe.h"

namespace moe::cuda {

struct HashParams {
  int64_t tokens = 0, experts = 0, top_k = 0, d_model = 0;
  moe_hash_mode_t mode = MOE_HASH_CONTENT;  // resolved: mix, table or content
  const int64_t* token_ids = nullptr;       // device, [T] (mix and table)
  const int32_t* table = nullptr;           // device, [vocab * k] (table)
  int64_t vocab_size = 0;
};

// Rows of x with a non-finite value are routed nowhere; the others get k experts, each
// with gate 1/k and P = 1/k. lse is 0 (no logits). Demand counted into demand[E].
void route_hash(const HashParams& p, moe_dtype_t dtype, const void* x, int32_t* experts,
                float* gates, float* prob, float* lse, uint8_t* nonfinite, int64_t* demand,
                cudaStream_t stream);

// Expert choice: every expert takes the `capacity` finite tokens with the largest key
// (P, or the softmax of noisy scores in noisy training calls; equal keys: the earlier
// token). experts/gates are [T, E]: slot e holds e and P[t,e] when expert e took the
// token, else -1 and 0. `route` must have filled prob, lse and nonfinite.
void select_expert_choice(const RouteParams& p, int64_t capacity, const float* logits,
                          const float* prob, const uint8_t* nonfinite, int32_t* experts,
                          float* gates, int64_t* demand, cudaStream_t stream);

}  // namespace moe::cuda
