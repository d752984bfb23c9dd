// The reference implementation of every Backend stage (see backend.hpp).
#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/backend.hpp"
#include "backends/cpu_ref/reference_gemm.hpp"
#include "core/activation.hpp"

namespace moe {
namespace {

template <typename S>
void router_logits_ref(const LayerConfig& c, int64_t T, const S* x, const S* wr, S* z) {
  reference_gemm(false, false, T, c.num_experts, c.d_model, x, c.d_model, wr, c.num_experts, z,
                 c.num_experts, false);
}

template <typename S>
void router_logits_backward_ref(const LayerConfig& c, int64_t T, const S* x, const S* wr,
                                const S* dz, S* dx, S* dwr) {
  const int64_t d = c.d_model, E = c.num_experts;
  if (dx) reference_gemm(false, true, T, d, E, dz, E, wr, E, dx, d, true);
  if (dwr) reference_gemm(true, false, d, E, T, x, d, dz, E, dwr, E, true);
}

template <typename S>
void permute_ref(const LayerConfig& c, const Plan& plan, const S* x, S* xp) {
  const int64_t d = c.d_model;
  for (int64_t r = 0; r < plan.rows; ++r) {
    const int64_t t = plan.token_of_row[r];
    if (t >= 0) {
      std::copy_n(x + t * d, d, xp + r * d);
    } else {
      std::fill_n(xp + r * d, d, S(0));
    }
  }
}

template <typename S>
void experts_forward_ref(const LayerConfig& c, const Plan& plan, const ExpertWeights<S>& w,
                         ExpertActivations<S>& a) {
  const int64_t d = c.d_model, dff = c.d_ff, F = c.ff_width();
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const int64_t n = plan.rows_of(e), r0 = plan.offset[e];
    if (n == 0) continue;
    S* h_pre = a.h_pre + r0 * F;
    S* h = a.h + r0 * dff;
    S* yp = a.yp + r0 * d;
    reference_gemm(false, false, n, F, d, a.xp + r0 * d, d, w.w1 + e * d * F, F, h_pre, F, false,
                   w.b1 ? w.b1 + e * F : nullptr);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < dff; ++j) {
        const double act = activate(c.activation, h_pre[i * F + j]);
        h[i * dff + j] = static_cast<S>(c.gated() ? act * h_pre[i * F + dff + j] : act);
      }
    reference_gemm(false, false, n, d, dff, h, dff, w.w2 + e * dff * d, d, yp, d, false,
                   w.b2 ? w.b2 + e * d : nullptr);
  }
}

template <typename S>
void combine_ref(const LayerConfig& c, const Plan& plan, const double* gate, const S* yp, S* y) {
  const int64_t d = c.d_model, slots = plan.slots;
  std::vector<double> acc(static_cast<size_t>(d));
  for (int64_t t = 0; t < plan.tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t j = 0; j < slots; ++j) {
      const int64_t r = plan.row[t * slots + j];
      if (r < 0) continue;
      const double g = gate[t * slots + j];
      for (int64_t i = 0; i < d; ++i) acc[i] += g * static_cast<double>(yp[r * d + i]);
    }
    for (int64_t i = 0; i < d; ++i) y[t * d + i] = static_cast<S>(acc[i]);
  }
}

template <typename S>
void combine_backward_ref(const LayerConfig& c, const Plan& plan, const double* gate, const S* yp,
                          const S* dy, S* dyp, double* dgate) {
  const int64_t d = c.d_model, slots = plan.slots;
  std::fill_n(dyp, plan.rows * d, S(0));
  for (int64_t t = 0; t < plan.tokens; ++t) {
    for (int64_t j = 0; j < slots; ++j) {
      const int64_t s = t * slots + j, r = plan.row[s];
      dgate[s] = 0.0;
      if (r < 0) continue;
      double dot = 0.0;
      for (int64_t i = 0; i < d; ++i) {
        dot += static_cast<double>(dy[t * d + i]) * static_cast<double>(yp[r * d + i]);
        dyp[r * d + i] = static_cast<S>(gate[s] * static_cast<double>(dy[t * d + i]));
      }
      dgate[s] = dot;
    }
  }
}

template <typename S>
void column_sums_into(const S* m, int64_t rows, int64_t cols, S* out) {
  for (int64_t j = 0; j < cols; ++j) {
    double sum = 0.0;
    for (int64_t i = 0; i < rows; ++i) sum += m[i * cols + j];
    out[j] = static_cast<S>(out[j] + sum);
  }
}

template <typename S>
void experts_backward_ref(const LayerConfig& c, const Plan& plan, const ExpertWeights<S>& w,
                          const ExpertActivations<S>& a, const S* dyp, S* dxp,
                          ExpertGradients<S>& g) {
  const int64_t d = c.d_model, dff = c.d_ff, F = c.ff_width();
  std::vector<S> dh, dh_pre;
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const int64_t n = plan.rows_of(e), r0 = plan.offset[e];
    if (n == 0) continue;
    const S* xp = a.xp + r0 * d;
    const S* h_pre = a.h_pre + r0 * F;
    const S* h = a.h + r0 * dff;
    const S* dy = dyp + r0 * d;
    dh.assign(n * dff, S(0));
    dh_pre.assign(n * F, S(0));
    reference_gemm(false, true, n, dff, d, dy, d, w.w2 + e * dff * d, d, dh.data(), dff, false);
    if (g.dw2) reference_gemm(true, false, dff, d, n, h, dff, dy, d, g.dw2 + e * dff * d, d, true);
    if (g.db2) column_sums_into(dy, n, d, g.db2 + e * d);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < dff; ++j) {
        const double gate_in = h_pre[i * F + j];
        const double grad = dh[i * dff + j];
        if (c.gated()) {
          const double up = h_pre[i * F + dff + j];
          dh_pre[i * F + j] =
              static_cast<S>(grad * up * activate_derivative(c.activation, gate_in));
          dh_pre[i * F + dff + j] = static_cast<S>(grad * activate(c.activation, gate_in));
        } else {
          dh_pre[i * F + j] = static_cast<S>(grad * activate_derivative(c.activation, gate_in));
        }
      }
    if (g.dw1)
      reference_gemm(true, false, d, F, n, xp, d, dh_pre.data(), F, g.dw1 + e * d * F, F, true);
    if (g.db1) column_sums_into(dh_pre.data(), n, F, g.db1 + e * F);
    reference_gemm(false, true, n, d, F, dh_pre.data(), F, w.w1 + e * d * F, F, dxp + r0 * d, d,
                   false);
  }
}

template <typename S>
void permute_backward_ref(const LayerConfig& c, const Plan& plan, const S* dxp, S* dx) {
  const int64_t d = c.d_model, slots = plan.slots;
  for (int64_t t = 0; t < plan.tokens; ++t)
    for (int64_t j = 0; j < slots; ++j) {
      const int64_t r = plan.row[t * slots + j];
      if (r < 0) continue;
      for (int64_t i = 0; i < d; ++i)
        dx[t * d + i] = static_cast<S>(static_cast<double>(dx[t * d + i]) + dxp[r * d + i]);
    }
}

}  // namespace

#define MOE_DEFINE_REFERENCE_STAGES(S)                                                             \
  void Backend::router_logits(const LayerConfig& c, int64_t T, const S* x, const S* wr, S* z) {    \
    router_logits_ref(c, T, x, wr, z);                                                             \
  }                                                                                                \
  void Backend::router_logits_backward(const LayerConfig& c, int64_t T, const S* x, const S* wr,   \
                                       const S* dz, S* dx, S* dwr) {                               \
    router_logits_backward_ref(c, T, x, wr, dz, dx, dwr);                                          \
  }                                                                                                \
  void Backend::permute(const LayerConfig& c, const Plan& plan, const S* x, S* xp) {               \
    permute_ref(c, plan, x, xp);                                                                   \
  }                                                                                                \
  void Backend::experts_forward(const LayerConfig& c, const Plan& plan, const ExpertWeights<S>& w, \
                                ExpertActivations<S>& a) {                                         \
    experts_forward_ref(c, plan, w, a);                                                            \
  }                                                                                                \
  void Backend::combine(const LayerConfig& c, const Plan& plan, const double* gate, const S* yp,   \
                        S* y) {                                                                    \
    combine_ref(c, plan, gate, yp, y);                                                             \
  }                                                                                                \
  void Backend::combine_backward(const LayerConfig& c, const Plan& plan, const double* gate,       \
                                 const S* yp, const S* dy, S* dyp, double* dgate) {                \
    combine_backward_ref(c, plan, gate, yp, dy, dyp, dgate);                                       \
  }                                                                                                \
  void Backend::experts_backward(const LayerConfig& c, const Plan& plan,                           \
                                 const ExpertWeights<S>& w, const ExpertActivations<S>& a,         \
                                 const S* dyp, S* dxp, ExpertGradients<S>& g) {                    \
    experts_backward_ref(c, plan, w, a, dyp, dxp, g);                                              \
  }                                                                                                \
  void Backend::permute_backward(const LayerConfig& c, const Plan& plan, const S* dxp, S* dx) {    \
    permute_backward_ref(c, plan, dxp, dx);                                                        \
  }

void Backend::read_to_host(const moe_tensor_t& tensor, void* host, size_t bytes) {
  std::memcpy(host, tensor.data, bytes);
}

MOE_DEFINE_REFERENCE_STAGES(float)
MOE_DEFINE_REFERENCE_STAGES(double)
MOE_DEFINE_REFERENCE_STAGES(bfloat16)

}  // namespace moe
