// Compiled with -fno-math-errno so that the calls to expf/erff/tanhf below are pure
// and GCC can replace them with their libmvec vector versions (declared here rather
// than through <math.h>, whose declarations need -ffast-math), one clone per ISA.
#include "backends/onednn/activation_kernels.hpp"

#include <vector>

#include "core/parallel_threshold.hpp"

extern "C" {
float expf(float) noexcept __attribute__((__simd__("notinbranch")));
float erff(float) noexcept __attribute__((__simd__("notinbranch")));
float tanhf(float) noexcept __attribute__((__simd__("notinbranch")));
}

namespace moe::onednn {
namespace {

#define MOE_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kTanhCubic = 0.044715f;

// out[j] = act(x[j]) * (up ? up[j] : 1), for j < n.
MOE_VECTOR_CLONES void forward_row(moe_activation_t kind, const float* __restrict x,
                                   const float* __restrict up, float* __restrict out, int64_t n) {
  switch (kind) {
    case MOE_ACTIVATION_RELU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = x[j] > 0.0f ? x[j] : 0.0f;
      break;
    case MOE_ACTIVATION_GELU:
    case MOE_ACTIVATION_GEGLU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = 0.5f * x[j] * (1.0f + erff(x[j] * kInvSqrt2));
      break;
    case MOE_ACTIVATION_GELU_TANH:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j)
        out[j] =
            0.5f * x[j] * (1.0f + tanhf(kSqrt2OverPi * (x[j] + kTanhCubic * x[j] * x[j] * x[j])));
      break;
    case MOE_ACTIVATION_SILU:
    case MOE_ACTIVATION_SWIGLU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = x[j] / (1.0f + expf(-x[j]));
      break;
  }
  if (up) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] *= up[j];
  }
}

// d_act[j] = act'(x[j]) and act_out[j] = act(x[j]), both from the same intermediates
// (the gated backward needs the activation too, and it costs no extra exp or erf).
MOE_VECTOR_CLONES void derivative_row(moe_activation_t kind, const float* __restrict x,
                                      float* __restrict d_act, float* __restrict act_out,
                                      int64_t n) {
  switch (kind) {
    case MOE_ACTIVATION_RELU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        d_act[j] = x[j] > 0.0f ? 1.0f : 0.0f;
        act_out[j] = x[j] > 0.0f ? x[j] : 0.0f;
      }
      break;
    case MOE_ACTIVATION_GELU:
    case MOE_ACTIVATION_GEGLU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float cdf = 0.5f * (1.0f + erff(x[j] * kInvSqrt2));
        d_act[j] = cdf + x[j] * kInvSqrt2Pi * expf(-0.5f * x[j] * x[j]);
        act_out[j] = x[j] * cdf;
      }
      break;
    case MOE_ACTIVATION_GELU_TANH:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float t = tanhf(kSqrt2OverPi * (x[j] + kTanhCubic * x[j] * x[j] * x[j]));
        const float d_inner = kSqrt2OverPi * (1.0f + 3.0f * kTanhCubic * x[j] * x[j]);
        d_act[j] = 0.5f * (1.0f + t) + 0.5f * x[j] * (1.0f - t * t) * d_inner;
        act_out[j] = 0.5f * x[j] * (1.0f + t);
      }
      break;
    case MOE_ACTIVATION_SILU:
    case MOE_ACTIVATION_SWIGLU:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float s = 1.0f / (1.0f + expf(-x[j]));
        d_act[j] = s * (1.0f + x[j] * (1.0f - s));
        act_out[j] = x[j] * s;
      }
      break;
  }
}

// Row access in float: float rows are used in place, bfloat16 rows are widened into
// (and narrowed from) per-thread scratch.
const float* as_float(const float* row, int64_t, std::vector<float>&) {
  return row;
}
const float* as_float(const bfloat16* row, int64_t n, std::vector<float>& scratch) {
  scratch.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) scratch[j] = row[j];
  return scratch.data();
}
float* output_row(float* row, int64_t, std::vector<float>&) {
  return row;
}
float* output_row(bfloat16*, int64_t n, std::vector<float>& scratch) {
  scratch.resize(static_cast<size_t>(n));
  return scratch.data();
}
void store(const float*, float*, int64_t) {}  // written in place by output_row
void store(const float* from, bfloat16* row, int64_t n) {
  for (int64_t j = 0; j < n; ++j) row[j] = from[j];
}

}  // namespace

template <typename S>
void activation_forward(moe_activation_t kind, bool gated, int64_t rows, int64_t d_ff,
                        const S* h_pre, S* h) {
  const int64_t F = gated ? 2 * d_ff : d_ff;
#pragma omp parallel if (worth_threads(rows * F))
  {
    std::vector<float> gate_scratch, up_scratch, out_scratch;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const float* gate = as_float(h_pre + i * F, d_ff, gate_scratch);
      const float* up = gated ? as_float(h_pre + i * F + d_ff, d_ff, up_scratch) : nullptr;
      float* out = output_row(h + i * d_ff, d_ff, out_scratch);
      forward_row(kind, gate, up, out, d_ff);
      store(out, h + i * d_ff, d_ff);
    }
  }
}

template <typename S>
void activation_backward(moe_activation_t kind, bool gated, int64_t rows, int64_t d_ff,
                         const S* h_pre, const S* dh, S* dh_pre) {
  const int64_t F = gated ? 2 * d_ff : d_ff;
#pragma omp parallel if (worth_threads(rows * F))
  {
    std::vector<float> gate_scratch, up_scratch, dh_scratch, out_scratch;
    std::vector<float> d_act(static_cast<size_t>(d_ff)), act(static_cast<size_t>(d_ff));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const float* gate = as_float(h_pre + i * F, d_ff, gate_scratch);
      const float* grad = as_float(dh + i * d_ff, d_ff, dh_scratch);
      derivative_row(kind, gate, d_act.data(), act.data(), d_ff);
      float* d_gate = output_row(dh_pre + i * F, d_ff, out_scratch);
      if (gated) {
        // h = act(gate) * up: d gate = dh * up * act'(gate), d up = dh * act(gate).
        const float* up = as_float(h_pre + i * F + d_ff, d_ff, up_scratch);
        for (int64_t j = 0; j < d_ff; ++j) d_gate[j] = grad[j] * up[j] * d_act[j];
        store(d_gate, dh_pre + i * F, d_ff);
        float* d_up = output_row(dh_pre + i * F + d_ff, d_ff, out_scratch);
        for (int64_t j = 0; j < d_ff; ++j) d_up[j] = grad[j] * act[j];
        store(d_up, dh_pre + i * F + d_ff, d_ff);
      } else {
        for (int64_t j = 0; j < d_ff; ++j) d_gate[j] = grad[j] * d_act[j];
        store(d_gate, dh_pre + i * F, d_ff);
      }
    }
  }
}

template void activation_forward<float>(moe_activation_t, bool, int64_t, int64_t, const float*,
                                        float*);
template void activation_forward<bfloat16>(moe_activation_t, bool, int64_t, int64_t,
                                           const bfloat16*, bfloat16*);
template void activation_backward<float>(moe_activation_t, bool, int64_t, int64_t, const float*,
                                         const float*, float*);
template void activation_backward<bfloat16>(moe_activation_t, bool, int64_t, int64_t,
                                            const bfloat16*, const bfloat16*, bfloat16*);

}  // namespace moe::onednn
