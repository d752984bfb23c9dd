// Launchers of the CUDA backend's kernels. Pointers are device pointers; `dtype` says
// whether activations and weights are float32 or bfloat16 (routing quantities are
// always float32, counts int64). Every launcher enqueues on `stream` and checks the
// launch. These are plain functions over raw pointers (DeepEP's kernel-layer style),
// so benchmarks can time them one by one.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/portable.hpp"
#include "moe/moe.h"

namespace moe::cuda {

struct RouteParams {
  int64_t tokens = 0, experts = 0, top_k = 0;
  bool sigmoid_router = false;
  bool renormalize = false;
  double temperature = 1.0;
  double noise_std = 0.0;
  moe_noise_t noise_type = MOE_NOISE_NONE;
  uint64_t seed = 0;
  int64_t step = 0;
  int64_t token_offset = 0;  // the first token's index in the batch (selection noise)
};

// Layout of the small per-step summary that forward reads back (int64 words).
struct SummaryLayout {
  int64_t experts;
  MOE_HOST_DEVICE int64_t demand() const { return 0; }
  MOE_HOST_DEVICE int64_t served() const { return experts; }
  MOE_HOST_DEVICE int64_t offsets() const { return 2 * experts; }  // E + 1 entries
  MOE_HOST_DEVICE int64_t capacity() const { return 3 * experts + 1; }
  MOE_HOST_DEVICE int64_t dropped_total() const { return 3 * experts + 2; }
  MOE_HOST_DEVICE int64_t nonfinite_rows() const { return 3 * experts + 3; }
  MOE_HOST_DEVICE int64_t words() const { return 3 * experts + 4; }
};

// Top-k selection, gates, probabilities, per-token logsumexp; demand counted into
// demand[E] (int64, zeroed by the caller).
void route(const RouteParams& p, const float* logits, const double* selection_bias,
           int32_t* experts, float* gates, float* prob, float* sig, float* lse, uint8_t* nonfinite,
           int64_t* demand, cudaStream_t stream);

// Capacity, served counts, packed row offsets, drop total, and the aux and z losses.
// `losses` has E + 4 doubles: [0] aux loss, [1] z-loss, [2, 2 + E) the sum of P[:, e]
// over finite rows (importance), [E + 2] the sum of lse^2, [E + 3] the finite rows.
// fixed_capacity < 0 means dropless (C = max demand); capacity_at_most_valid caps C at
// the finite rows (expert choice).
void summarize(const RouteParams& p, int64_t fixed_capacity, bool capacity_at_most_valid,
               const float* prob, const float* lse, const uint8_t* nonfinite, int64_t* summary,
               double* losses, cudaStream_t stream);

// offsets[e] = e * rows_each for e in [0, experts]: a padded layout's offsets, written
// on the device (an upload from pageable memory would wait for the stream).
void padded_offsets(int64_t experts, int64_t rows_each, int64_t* offsets, cudaStream_t stream);

// The expert of every buffer row, from the buffer's row offsets [experts + 1].
void row_experts(int64_t experts, int64_t rows, const int64_t* offsets, int32_t* row_expert,
                 cudaStream_t stream);

// dst[t] = src[t], rows flagged non-finite set to zero.
void copy_finite_rows(moe_dtype_t dtype, int64_t tokens, int64_t width, const void* src,
                      const uint8_t* nonfinite, void* dst, cudaStream_t stream);

// xp[r] = x[row_token[r]], or zeros where row_token[r] < 0 (padding).
void permute(moe_dtype_t dtype, int64_t rows, int64_t width, const void* x,
             const int64_t* row_token, void* xp, cudaStream_t stream);

// h_pre += b1[expert of row] (if b1); h = act(h_pre) (gated: act(gate) * up).
void bias_activation(moe_dtype_t dtype, moe_activation_t act, int64_t rows, int64_t d_ff,
                     void* h_pre, const void* b1, const int32_t* row_expert, void* h,
                     cudaStream_t stream);

// y[r] += b[expert of row].
void add_row_bias(moe_dtype_t dtype, int64_t rows, int64_t width, void* y, const void* b,
                  const int32_t* row_expert, cudaStream_t stream);

// y[t] = sum over slots j (in order) of gates[t,j] * yp[row[t,j]].
void combine(moe_dtype_t dtype, int64_t tokens, int64_t slots, int64_t width, const float* gates,
             const int64_t* row, const void* yp, void* y, cudaStream_t stream);

// dyp[row] = gate * dy[t]; dgate[t,j] = <dy[t], yp[row]> (0 where row < 0).
void combine_backward(moe_dtype_t dtype, int64_t tokens, int64_t slots, int64_t width,
                      const float* gates, const int64_t* row, const void* yp, const void* dy,
                      void* dyp, float* dgate, cudaStream_t stream);

// dh_pre from dh through the (gated) activation.
void activation_backward(moe_dtype_t dtype, moe_activation_t act, int64_t rows, int64_t d_ff,
                         const void* h_pre, const void* dh, void* dh_pre, cudaStream_t stream);

// out[e, :] (+)= column sums of m over expert e's rows [offsets[e], offsets[e+1]).
void expert_column_sums(moe_dtype_t dtype, int64_t experts, int64_t width, const void* m,
                        const int64_t* offsets, void* out, bool accumulate, cudaStream_t stream);

// dx[t] (+)= sum over slots j (in order) of dxp[row[t,j]].
void gather_rows(moe_dtype_t dtype, int64_t tokens, int64_t slots, int64_t width,
                 const int64_t* row, const void* dxp, void* dx, bool accumulate,
                 cudaStream_t stream);

// Logit gradients dz [T,E] (float32) from gate gradients, with the aux and z losses
// of the batch: its pre-drop demand [E] (device) and finite rows (the group's, under
// expert parallelism): T - *nonfinite_rows when that device word is given, else
// valid_tokens.
void route_backward(const RouteParams& p, double load_balance_alpha, double z_loss_coef,
                    const int32_t* experts, const float* gates, const float* dgate,
                    const float* prob, const float* sig, const float* logits, const float* lse,
                    const uint8_t* nonfinite, const int64_t* demand, int64_t valid_tokens,
                    const int64_t* nonfinite_rows, float* dz, cudaStream_t stream);

// float32 -> dtype.
void convert_from_float(moe_dtype_t dtype, int64_t n, const float* src, void* dst,
                        cudaStream_t stream);

}  // namespace moe::cuda
