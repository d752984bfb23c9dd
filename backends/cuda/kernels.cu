#include <cuda_bf16.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <type_traits>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/kernels.hpp"
#include "backends/cuda/launch.cuh"
#include "core/activation.hpp"  // sigmoid() in double, for routing
#include "core/random.hpp"

namespace moe::cuda {
namespace {

using bf16 = __nv_bfloat16;

__device__ inline float to_float(float v) {
  return v;
}
__device__ inline float to_float(bf16 v) {
  return __bfloat162float(v);
}
template <typename S>
__device__ inline S from_float(float v);
template <>
__device__ inline float from_float<float>(float v) {
  return v;
}
template <>
__device__ inline bf16 from_float<bf16>(float v) {
  return __float2bfloat16(v);
}

// N consecutive elements moved as one 16-byte access when N * sizeof(S) == 16.
template <typename S, int N>
struct Pack {
  S v[N];
  __device__ void load(const S* p) {
    if constexpr (N * sizeof(S) == 16) {
      *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(p);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = p[i];
    }
  }
  __device__ void store(S* p) const {
    if constexpr (N * sizeof(S) == 16) {
      *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(v);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) p[i] = v[i];
    }
  }
};

template <typename S>
constexpr int kVec = 16 / sizeof(S);

// Vector width usable for rows of `width` elements (rows stay 16-byte aligned).
template <typename S>
bool vectorizable(int64_t width) {
  return width % kVec<S> == 0;
}

// Activations in float: the double forms in core/activation.hpp would run on the GPU's
// slow float64 units, over every element of the hidden layer.
__device__ inline float sigmoid_f(float x) {
  return 1.f / (1.f + __expf(-x));
}

__device__ inline float activate_f(moe_activation_t kind, float x) {
  switch (kind) {
    case MOE_ACTIVATION_RELU: return x > 0.f ? x : 0.f;
    case MOE_ACTIVATION_GELU:
    case MOE_ACTIVATION_GEGLU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case MOE_ACTIVATION_GELU_TANH:
      return 0.5f * x * (1.f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case MOE_ACTIVATION_SILU:
    case MOE_ACTIVATION_SWIGLU: return x * sigmoid_f(x);
  }
  return 0.f;
}

__device__ inline float activate_derivative_f(moe_activation_t kind, float x) {
  switch (kind) {
    case MOE_ACTIVATION_RELU: return x > 0.f ? 1.f : 0.f;
    case MOE_ACTIVATION_GELU:
    case MOE_ACTIVATION_GEGLU:
      return 0.5f * (1.f + erff(x * 0.70710678118654752f)) +
             x * 0.39894228040143268f * __expf(-0.5f * x * x);
    case MOE_ACTIVATION_GELU_TANH: {
      const float t = tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x));
      const float d_inner = 0.79788456080286536f * (1.f + 3.f * 0.044715f * x * x);
      return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * d_inner;
    }
    case MOE_ACTIVATION_SILU:
    case MOE_ACTIVATION_SWIGLU: {
      const float s = sigmoid_f(x);
      return s * (1.f + x * (1.f - s));
    }
  }
  return 0.f;
}

// ---------------------------------------------------------------- routing

__global__ void route_kernel(RouteParams p, const float* logits, const double* bias,
                             int32_t* experts, float* gates, float* prob, float* sig, float* lse,
                             uint8_t* nonfinite, unsigned long long* demand) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= p.tokens) return;
  const int64_t E = p.experts, k = p.top_k;
  const float* z = logits + t * E;
  int32_t* chosen = experts + t * k;
  bool finite = true;
  for (int64_t e = 0; e < E; ++e) finite = finite && isfinite(z[e]);
  if (!finite) {
    nonfinite[t] = 1;
    lse[t] = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      chosen[j] = -1;
      gates[t * k + j] = 0.f;
    }
    for (int64_t e = 0; e < E; ++e) prob[t * E + e] = 0.f;
    return;
  }
  nonfinite[t] = 0;
  double m = z[0];
  for (int64_t e = 1; e < E; ++e) m = fmax(m, static_cast<double>(z[e]));
  double sum = 0.0;
  for (int64_t e = 0; e < E; ++e) sum += exp(z[e] - m);
  lse[t] = static_cast<float>(m + log(sum));

  // Probabilities P: softmax(u), or sigmoid(u) / sum(sigmoid(u)) taken as a softmax of
  // log sigmoid(u) (the plain ratio is 0/0 when every score is below about -745).
  const double tau = p.temperature;
  auto score = [&](int64_t e) {
    const double u = z[e] / tau;
    return p.sigmoid_router ? log_sigmoid(u) : u;
  };
  double um = -INFINITY, total = 0.0;
  for (int64_t e = 0; e < E; ++e) um = fmax(um, score(e));
  for (int64_t e = 0; e < E; ++e) total += exp(score(e) - um);
  for (int64_t e = 0; e < E; ++e) {
    prob[t * E + e] = static_cast<float>(exp(score(e) - um) / total);
    if (p.sigmoid_router) sig[t * E + e] = static_cast<float>(sigmoid(z[e] / tau));
  }

  // Top-k by selection key; equal keys go to the larger score (sigmoid keys saturate),
  // then to the lower expert id (as cpu_ref).
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    double best_key = 0.0, best_noisy = 0.0;
    for (int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int64_t i = 0; i < j; ++i) taken = taken || chosen[i] == e;
      if (taken) continue;
      double noisy = z[e] / tau;
      if (p.noise_std > 0.0) {
        noisy += p.noise_std * (p.noise_type == MOE_NOISE_GUMBEL
                                    ? standard_gumbel(p.seed, p.step, p.token_offset + t, e)
                                    : standard_normal(p.seed, p.step, p.token_offset + t, e));
      }
      const double key = (p.sigmoid_router ? sigmoid(noisy) : noisy) + bias[e];
      if (best < 0 || key > best_key || (key == best_key && noisy > best_noisy)) {
        best = e;
        best_key = key;
        best_noisy = noisy;
      }
    }
    chosen[j] = static_cast<int32_t>(best);
    atomicAdd(&demand[best], 1ULL);
  }
  // Gates: the base (P, or sigmoid(u)) of each chosen expert, or with renormalisation
  // the same softmax over the chosen experts' scores alone.
  double chosen_max = -INFINITY, chosen_total = 0.0;
  for (int64_t j = 0; j < k; ++j) chosen_max = fmax(chosen_max, score(chosen[j]));
  for (int64_t j = 0; j < k; ++j) chosen_total += exp(score(chosen[j]) - chosen_max);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t e = chosen[j];
    const double a = p.renormalize      ? exp(score(e) - chosen_max) / chosen_total
                     : p.sigmoid_router ? sigmoid(z[e] / tau)
                                        : exp(score(e) - um) / total;
    gates[t * k + j] = static_cast<float>(a);
  }
}

// Block e < E: sum of P[:, e] over finite rows; block E: sum of lse^2 and the count
// of finite rows. Fixed thread mapping and tree reduction: deterministic.
__global__ void routing_sums_kernel(int64_t T, int64_t E, const float* prob, const float* lse,
                                    const uint8_t* nonfinite, double* scratch) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const int64_t e = blockIdx.x;
  double a = 0.0, b = 0.0;
  for (int64_t t = threadIdx.x; t < T; t += kThreads) {
    if (nonfinite[t]) continue;
    if (e < E) {
      a += prob[t * E + e];
    } else {
      a += static_cast<double>(lse[t]) * lse[t];
      b += 1.0;
    }
  }
  const double sa = Reduce(storage).Sum(a);
  __syncthreads();
  const double sb = Reduce(storage).Sum(b);
  if (threadIdx.x == 0) {
    if (e < E) {
      scratch[e] = sa;
    } else {
      scratch[E] = sa;
      scratch[E + 1] = sb;
    }
  }
}

__global__ void finalize_kernel(int64_t E, int64_t T, int64_t fixed_capacity,
                                bool capacity_at_most_valid, int64_t* summary, double* losses) {
  const SummaryLayout L{E};
  const double* scratch = losses + 2;
  int64_t total = 0, max_demand = 0;
  for (int64_t e = 0; e < E; ++e) {
    total += summary[L.demand() + e];
    max_demand = max(max_demand, summary[L.demand() + e]);
  }
  const double valid = scratch[E + 1];
  int64_t C = fixed_capacity >= 0 ? fixed_capacity : max_demand;
  if (capacity_at_most_valid) C = min(C, static_cast<int64_t>(valid));
  int64_t offset = 0, dropped = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t d = summary[L.demand() + e];
    const int64_t s = min(d, C);
    summary[L.served() + e] = s;
    summary[L.offsets() + e] = offset;
    offset += s;
    dropped += d - s;
  }
  summary[L.offsets() + E] = offset;
  summary[L.capacity()] = C;
  summary[L.dropped_total()] = dropped;
  summary[L.nonfinite_rows()] = T - static_cast<int64_t>(valid);
  double aux = 0.0;
  if (valid > 0 && total > 0)
    for (int64_t e = 0; e < E; ++e)
      aux += static_cast<double>(summary[L.demand() + e]) / static_cast<double>(total) *
             (scratch[e] / valid);
  losses[0] = static_cast<double>(E) * aux;
  losses[1] = valid > 0 ? scratch[E] / valid : 0.0;
}

__global__ void padded_offsets_kernel(int64_t E, int64_t rows_each, int64_t* offsets) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e <= E) offsets[e] = e * rows_each;
}

// The expert owning each buffer row: the last e with offsets[e] <= r.
__global__ void row_experts_kernel(int64_t E, int64_t rows, const int64_t* offsets,
                                   int32_t* row_expert) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  int64_t lo = 0, hi = E - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= r) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  row_expert[r] = static_cast<int32_t>(lo);
}

// ---------------------------------------------------------------- data movement

template <typename S, int N>
__global__ void copy_rows_kernel(int64_t rows, int64_t width, const S* src,
                                 const int64_t* source_row, const uint8_t* zero_row, S* dst) {
  const int64_t r = blockIdx.x;
  const int64_t from = source_row ? source_row[r] : r;
  const bool zero = (zero_row && zero_row[r]) || from < 0;  // padding rows are zeros
  for (int64_t i = threadIdx.x * N; i < width; i += blockDim.x * N) {
    Pack<S, N> pack;
    if (zero) {
#pragma unroll
      for (int j = 0; j < N; ++j) pack.v[j] = from_float<S>(0.f);
    } else {
      pack.load(src + from * width + i);
    }
    pack.store(dst + r * width + i);
  }
}

template <typename S, int N>
__global__ void combine_kernel(int64_t slots, int64_t width, const float* gates, const int64_t* row,
                               const S* yp, S* y) {
  const int64_t t = blockIdx.x;
  for (int64_t i = threadIdx.x * N; i < width; i += blockDim.x * N) {
    float acc[N] = {};
    for (int64_t j = 0; j < slots; ++j) {
      const int64_t r = row[t * slots + j];
      if (r < 0) continue;
      const float g = gates[t * slots + j];
      Pack<S, N> pack;
      pack.load(yp + r * width + i);
#pragma unroll
      for (int q = 0; q < N; ++q) acc[q] += g * to_float(pack.v[q]);
    }
    Pack<S, N> out;
#pragma unroll
    for (int q = 0; q < N; ++q) out.v[q] = from_float<S>(acc[q]);
    out.store(y + t * width + i);
  }
}

template <typename S, int N>
__global__ void combine_backward_kernel(int64_t slots, int64_t width, const float* gates,
                                        const int64_t* row, const S* yp, const S* dy, S* dyp,
                                        float* dgate) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const int64_t c = blockIdx.x, t = c / slots;
  const int64_t r = row[c];
  if (r < 0) {
    if (threadIdx.x == 0) dgate[c] = 0.f;
    return;
  }
  const float g = gates[c];
  float dot = 0.f;
  for (int64_t i = threadIdx.x * N; i < width; i += blockDim.x * N) {
    Pack<S, N> d, y, out;
    d.load(dy + t * width + i);
    y.load(yp + r * width + i);
#pragma unroll
    for (int q = 0; q < N; ++q) {
      const float dv = to_float(d.v[q]);
      dot += dv * to_float(y.v[q]);
      out.v[q] = from_float<S>(g * dv);
    }
    out.store(dyp + r * width + i);
  }
  const float total = Reduce(storage).Sum(dot);
  if (threadIdx.x == 0) dgate[c] = total;
}

template <typename S, int N>
__global__ void gather_rows_kernel(int64_t slots, int64_t width, const int64_t* row, const S* dxp,
                                   S* dx, bool accumulate) {
  const int64_t t = blockIdx.x;
  for (int64_t i = threadIdx.x * N; i < width; i += blockDim.x * N) {
    float acc[N] = {};
    if (accumulate) {
      Pack<S, N> prior;
      prior.load(dx + t * width + i);
#pragma unroll
      for (int q = 0; q < N; ++q) acc[q] = to_float(prior.v[q]);
    }
    for (int64_t j = 0; j < slots; ++j) {
      const int64_t r = row[t * slots + j];
      if (r < 0) continue;
      Pack<S, N> pack;
      pack.load(dxp + r * width + i);
#pragma unroll
      for (int q = 0; q < N; ++q) acc[q] += to_float(pack.v[q]);
    }
    Pack<S, N> out;
#pragma unroll
    for (int q = 0; q < N; ++q) out.v[q] = from_float<S>(acc[q]);
    out.store(dx + t * width + i);
  }
}

// ---------------------------------------------------------------- expert elementwise

template <typename S, int N>
__global__ void bias_activation_kernel(moe_activation_t act, bool gated, int64_t d_ff, S* h_pre,
                                       const S* b1, const int32_t* row_expert, S* h) {
  const int64_t r = blockIdx.x;
  const int64_t F = gated ? 2 * d_ff : d_ff;
  const int32_t e = row_expert[r];
  for (int64_t j = threadIdx.x * N; j < d_ff; j += blockDim.x * N) {
    Pack<S, N> gate, up, out;
    gate.load(h_pre + r * F + j);
    if (gated) up.load(h_pre + r * F + d_ff + j);
    if (b1) {
      Pack<S, N> bg, bu;
      bg.load(b1 + e * F + j);
      if (gated) bu.load(b1 + e * F + d_ff + j);
#pragma unroll
      for (int q = 0; q < N; ++q) {
        gate.v[q] = from_float<S>(to_float(gate.v[q]) + to_float(bg.v[q]));
        if (gated) up.v[q] = from_float<S>(to_float(up.v[q]) + to_float(bu.v[q]));
      }
      gate.store(h_pre + r * F + j);
      if (gated) up.store(h_pre + r * F + d_ff + j);
    }
#pragma unroll
    for (int q = 0; q < N; ++q) {
      const float a = activate_f(act, to_float(gate.v[q]));
      out.v[q] = from_float<S>(gated ? a * to_float(up.v[q]) : a);
    }
    out.store(h + r * d_ff + j);
  }
}

template <typename S, int N>
__global__ void add_row_bias_kernel(int64_t width, S* y, const S* b, const int32_t* row_expert) {
  const int64_t r = blockIdx.x;
  const int32_t e = row_expert[r];
  for (int64_t i = threadIdx.x * N; i < width; i += blockDim.x * N) {
    Pack<S, N> v, bias;
    v.load(y + r * width + i);
    bias.load(b + e * width + i);
#pragma unroll
    for (int q = 0; q < N; ++q) v.v[q] = from_float<S>(to_float(v.v[q]) + to_float(bias.v[q]));
    v.store(y + r * width + i);
  }
}

template <typename S, int N>
__global__ void activation_backward_kernel(moe_activation_t act, bool gated, int64_t d_ff,
                                           const S* h_pre, const S* dh, S* dh_pre) {
  const int64_t r = blockIdx.x;
  const int64_t F = gated ? 2 * d_ff : d_ff;
  for (int64_t j = threadIdx.x * N; j < d_ff; j += blockDim.x * N) {
    Pack<S, N> gate, up, grad, dgate, dup;
    gate.load(h_pre + r * F + j);
    grad.load(dh + r * d_ff + j);
    if (gated) up.load(h_pre + r * F + d_ff + j);
#pragma unroll
    for (int q = 0; q < N; ++q) {
      const float g = to_float(gate.v[q]);
      const float dv = to_float(grad.v[q]);
      if (gated) {
        const float u = to_float(up.v[q]);
        dgate.v[q] = from_float<S>(dv * u * activate_derivative_f(act, g));
        dup.v[q] = from_float<S>(dv * activate_f(act, g));
      } else {
        dgate.v[q] = from_float<S>(dv * activate_derivative_f(act, g));
      }
    }
    dgate.store(dh_pre + r * F + j);
    if (gated) dup.store(dh_pre + r * F + d_ff + j);
  }
}

template <typename S>
__global__ void expert_column_sums_kernel(int64_t width, const S* m, const int64_t* offsets, S* out,
                                          bool accumulate) {
  const int64_t e = blockIdx.y;
  const int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (col >= width) return;
  const int64_t begin = offsets[e], end = offsets[e + 1];
  float acc = accumulate ? to_float(out[e * width + col]) : 0.f;
  for (int64_t r = begin; r < end; ++r) acc += to_float(m[r * width + col]);
  out[e * width + col] = from_float<S>(acc);
}

__global__ void route_backward_kernel(RouteParams p, double alpha, double z_coef,
                                      const int32_t* experts, const float* gates,
                                      const float* dgate, const float* prob, const float* sig,
                                      const float* logits, const float* lse,
                                      const uint8_t* nonfinite, const int64_t* demand,
                                      int64_t valid_tokens, const int64_t* nonfinite_rows,
                                      float* dz) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= p.tokens) return;
  const int64_t E = p.experts, k = p.top_k;
  float* out = dz + t * E;
  const double valid =
      static_cast<double>(nonfinite_rows ? p.tokens - *nonfinite_rows : valid_tokens);
  if (nonfinite[t] || valid <= 0) {
    for (int64_t e = 0; e < E; ++e) out[e] = 0.f;
    return;
  }
  int64_t total = 0;
  for (int64_t e = 0; e < E; ++e) total += demand[e];
  const double tau = p.temperature;
  const int32_t* chosen = experts + t * k;
  const float* g = gates + t * k;
  const float* dg = dgate + t * k;
  const float* P = prob + t * E;

  // base_e * d(loss)/d(base_e) for the chosen experts (base: P, or sigmoid(u)). With
  // renormalisation g_j = base_j / sum_chosen(base), so it is (dg_j - dg.g) g_j: no
  // division by a sum of sigmoids, which is 0 in float below about -103.
  double dg_dot_g = 0.0;
  if (p.renormalize)
    for (int64_t j = 0; j < k; ++j) dg_dot_g += static_cast<double>(dg[j]) * g[j];
  auto d_base = [&](int64_t e) {
    double acc = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      if (chosen[j] != e) continue;
      const double base = p.sigmoid_router ? sig[t * E + e] : P[e];
      acc += p.renormalize ? (dg[j] - dg_dot_g) * g[j] : dg[j] * base;
    }
    return acc;
  };
  auto d_prob_aux = [&](int64_t e) {
    return alpha * static_cast<double>(E) * static_cast<double>(demand[e]) /
           static_cast<double>(total) / valid;
  };
  double dot = 0.0, base_total = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    dot += d_prob_aux(e) * P[e];
    base_total += d_base(e);
  }
  for (int64_t e = 0; e < E; ++e) {
    // Sigmoid: (d_base + (d_prob - dot) P) (1 - s); softmax: P (d_prob - dot) + d_base -
    // P sum(d_base); both over tau.
    const double aux = (d_prob_aux(e) - dot) * P[e];
    const double d = p.sigmoid_router ? (d_base(e) + aux) * (1.0 - sig[t * E + e])
                                      : aux + d_base(e) - P[e] * base_total;
    out[e] = static_cast<float>(d / tau);
  }
  if (z_coef != 0.0) {  // the caller's gradient may scale it by any sign
    const double scale = z_coef * 2.0 * lse[t] / valid;
    for (int64_t e = 0; e < E; ++e)
      out[e] += static_cast<float>(scale * exp(static_cast<double>(logits[t * E + e]) - lse[t]));
  }
}

template <typename S>
__global__ void convert_kernel(int64_t n, const float* src, S* dst) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) dst[i] = from_float<S>(src[i]);
}

template <typename T>
struct TypeTag {
  using type = T;
};
template <int N>
using Width = std::integral_constant<int, N>;

// Inside a dispatched lambda: names the element type S and the vector width N.
#define MOE_TAG_TYPES(s_tag, n_tag)         \
  using S = typename decltype(s_tag)::type; \
  constexpr int N = decltype(n_tag)::value; \
  (void)N

// Calls f(TypeTag<S>, Width<N>) for the dtype, with the widest vector that divides
// `width`.
template <typename F>
void dispatch(moe_dtype_t dtype, int64_t width, F&& f) {
  if (dtype == MOE_DTYPE_BF16) {
    if (vectorizable<bf16>(width)) {
      f(TypeTag<bf16>{}, Width<kVec<bf16>>{});
    } else {
      f(TypeTag<bf16>{}, Width<1>{});
    }
  } else {
    if (vectorizable<float>(width)) {
      f(TypeTag<float>{}, Width<kVec<float>>{});
    } else {
      f(TypeTag<float>{}, Width<1>{});
    }
  }
}

}  // namespace

void route(const RouteParams& p, const float* logits, const double* selection_bias,
           int32_t* experts, float* gates, float* prob, float* sig, float* lse, uint8_t* nonfinite,
           int64_t* demand, cudaStream_t stream) {
  if (p.tokens == 0) return;
  route_kernel<<<blocks_for(p.tokens, 128), 128, 0, stream>>>(
      p, logits, selection_bias, experts, gates, prob, sig, lse, nonfinite,
      reinterpret_cast<unsigned long long*>(demand));
  check_launch("route");
}

void summarize(const RouteParams& p, int64_t fixed_capacity, bool capacity_at_most_valid,
               const float* prob, const float* lse, const uint8_t* nonfinite, int64_t* summary,
               double* losses, cudaStream_t stream) {
  routing_sums_kernel<<<static_cast<unsigned>(p.experts + 1), kThreads, 0, stream>>>(
      p.tokens, p.experts, prob, lse, nonfinite, losses + 2);
  check_launch("routing_sums");
  finalize_kernel<<<1, 1, 0, stream>>>(p.experts, p.tokens, fixed_capacity, capacity_at_most_valid,
                                       summary, losses);
  check_launch("finalize");
}

void padded_offsets(int64_t experts, int64_t rows_each, int64_t* offsets, cudaStream_t stream) {
  padded_offsets_kernel<<<blocks_for(experts + 1), kThreads, 0, stream>>>(experts, rows_each,
                                                                          offsets);
  check_launch("padded_offsets");
}

void row_experts(int64_t experts, int64_t rows, const int64_t* offsets, int32_t* row_expert,
                 cudaStream_t stream) {
  if (rows == 0) return;
  row_experts_kernel<<<blocks_for(rows), kThreads, 0, stream>>>(experts, rows, offsets, row_expert);
  check_launch("row_experts");
}

void copy_finite_rows(moe_dtype_t dtype, int64_t tokens, int64_t width, const void* src,
                      const uint8_t* nonfinite, void* dst, cudaStream_t stream) {
  if (tokens == 0) return;
  dispatch(dtype, width, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    copy_rows_kernel<S, N><<<static_cast<unsigned>(tokens), kThreads, 0, stream>>>(
        tokens, width, static_cast<const S*>(src), nullptr, nonfinite, static_cast<S*>(dst));
  });
  check_launch("copy_finite_rows");
}

void permute(moe_dtype_t dtype, int64_t rows, int64_t width, const void* x,
             const int64_t* row_token, void* xp, cudaStream_t stream) {
  if (rows == 0) return;
  dispatch(dtype, width, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    copy_rows_kernel<S, N><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        rows, width, static_cast<const S*>(x), row_token, nullptr, static_cast<S*>(xp));
  });
  check_launch("permute");
}

void bias_activation(moe_dtype_t dtype, moe_activation_t act, int64_t rows, int64_t d_ff,
                     void* h_pre, const void* b1, const int32_t* row_expert, void* h,
                     cudaStream_t stream) {
  if (rows == 0) return;
  const bool gated = act == MOE_ACTIVATION_SWIGLU || act == MOE_ACTIVATION_GEGLU;
  dispatch(dtype, d_ff, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    bias_activation_kernel<S, N><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        act, gated, d_ff, static_cast<S*>(h_pre), static_cast<const S*>(b1), row_expert,
        static_cast<S*>(h));
  });
  check_launch("bias_activation");
}

void add_row_bias(moe_dtype_t dtype, int64_t rows, int64_t width, void* y, const void* b,
                  const int32_t* row_expert, cudaStream_t stream) {
  if (rows == 0) return;
  dispatch(dtype, width, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    add_row_bias_kernel<S, N><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        width, static_cast<S*>(y), static_cast<const S*>(b), row_expert);
  });
  check_launch("add_row_bias");
}

void combine(moe_dtype_t dtype, int64_t tokens, int64_t slots, int64_t width, const float* gates,
             const int64_t* row, const void* yp, void* y, cudaStream_t stream) {
  if (tokens == 0) return;
  dispatch(dtype, width, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    combine_kernel<S, N><<<static_cast<unsigned>(tokens), kThreads, 0, stream>>>(
        slots, width, gates, row, static_cast<const S*>(yp), static_cast<S*>(y));
  });
  check_launch("combine");
}

void combine_backward(moe_dtype_t dtype, int64_t tokens, int64_t slots, int64_t width,
                      const float* gates, const int64_t* row, const void* yp, const void* dy,
                      void* dyp, float* dgate, cudaStream_t stream) {
  if (tokens == 0) return;
  dispatch(dtype, width, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    combine_backward_kernel<S, N><<<static_cast<unsigned>(tokens * slots), kThreads, 0, stream>>>(
        slots, width, gates, row, static_cast<const S*>(yp), static_cast<const S*>(dy),
        static_cast<S*>(dyp), dgate);
  });
  check_launch("combine_backward");
}

void activation_backward(moe_dtype_t dtype, moe_activation_t act, int64_t rows, int64_t d_ff,
                         const void* h_pre, const void* dh, void* dh_pre, cudaStream_t stream) {
  if (rows == 0) return;
  const bool gated = act == MOE_ACTIVATION_SWIGLU || act == MOE_ACTIVATION_GEGLU;
  dispatch(dtype, d_ff, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    activation_backward_kernel<S, N><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        act, gated, d_ff, static_cast<const S*>(h_pre), static_cast<const S*>(dh),
        static_cast<S*>(dh_pre));
  });
  check_launch("activation_backward");
}

void expert_column_sums(moe_dtype_t dtype, int64_t experts, int64_t width, const void* m,
                        const int64_t* offsets, void* out, bool accumulate, cudaStream_t stream) {
  if (experts == 0 || width == 0) return;
  const dim3 grid(blocks_for(width), static_cast<unsigned>(experts));
  dispatch(dtype, 1, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    expert_column_sums_kernel<S><<<grid, kThreads, 0, stream>>>(
        width, static_cast<const S*>(m), offsets, static_cast<S*>(out), accumulate);
  });
  check_launch("expert_column_sums");
}

void gather_rows(moe_dtype_t dtype, int64_t tokens, int64_t slots, int64_t width,
                 const int64_t* row, const void* dxp, void* dx, bool accumulate,
                 cudaStream_t stream) {
  if (tokens == 0) return;
  dispatch(dtype, width, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    gather_rows_kernel<S, N><<<static_cast<unsigned>(tokens), kThreads, 0, stream>>>(
        slots, width, row, static_cast<const S*>(dxp), static_cast<S*>(dx), accumulate);
  });
  check_launch("gather_rows");
}

void route_backward(const RouteParams& p, double load_balance_alpha, double z_loss_coef,
                    const int32_t* experts, const float* gates, const float* dgate,
                    const float* prob, const float* sig, const float* logits, const float* lse,
                    const uint8_t* nonfinite, const int64_t* demand, int64_t valid_tokens,
                    const int64_t* nonfinite_rows, float* dz, cudaStream_t stream) {
  if (p.tokens == 0) return;
  route_backward_kernel<<<blocks_for(p.tokens, 128), 128, 0, stream>>>(
      p, load_balance_alpha, z_loss_coef, experts, gates, dgate, prob, sig, logits, lse, nonfinite,
      demand, valid_tokens, nonfinite_rows, dz);
  check_launch("route_backward");
}

void convert_from_float(moe_dtype_t dtype, int64_t n, const float* src, void* dst,
                        cudaStream_t stream) {
  if (n == 0) return;
  dispatch(dtype, 1, [&](auto s_tag, auto n_tag) {
    MOE_TAG_TYPES(s_tag, n_tag);
    convert_kernel<S><<<blocks_for(n), kThreads, 0, stream>>>(n, src, static_cast<S*>(dst));
  });
  check_launch("convert_from_float");
}

}  // namespace moe::cuda
