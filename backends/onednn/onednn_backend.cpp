#include "backends/onednn/onednn_backend.hpp"

#include <algorithm>

#include "backends/onednn/activation_kernels.hpp"
#include "backends/onednn/matmul.hpp"
#include "backends/onednn/threaded_stages.hpp"
#include "core/host_buffer.hpp"

namespace moe {
namespace {

using onednn::matmul;

// Padding rows (pad_to_capacity) sit at the end of each expert's block. The products
// skip them, since their inputs and output gradients are zero and nothing reads their
// outputs; their buffer rows are zeroed instead. This spends no FLOPs on padding and
// gives the same bits as the unpadded layer.
template <typename S>
void zero_padding_rows(const Plan& plan, int64_t e, S* buffer, int64_t width) {
  const int64_t first = plan.offset[e] + plan.served[e], count = plan.offset[e + 1] - first;
  std::fill_n(buffer + first * width, count * width, S(0.0f));
}

template <typename S>
void experts_forward_impl(const LayerConfig& c, const Plan& plan, const ExpertWeights<S>& w,
                          ExpertActivations<S>& a) {
  const int64_t d = c.d_model, dff = c.d_ff, F = c.ff_width();
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const int64_t n = plan.served[e], r0 = plan.offset[e];
    matmul(false, false, n, F, d, a.xp + r0 * d, w.w1 + e * d * F, a.h_pre + r0 * F, false,
           w.b1 ? w.b1 + e * F : nullptr);
    zero_padding_rows(plan, e, a.h_pre, F);
  }
  // One pass over every expert's rows: they are contiguous in the buffer.
  onednn::activation_forward(c.activation, c.gated(), plan.rows, dff, a.h_pre, a.h);
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const int64_t n = plan.served[e], r0 = plan.offset[e];
    matmul(false, false, n, d, dff, a.h + r0 * dff, w.w2 + e * dff * d, a.yp + r0 * d, false,
           w.b2 ? w.b2 + e * d : nullptr);
    zero_padding_rows(plan, e, a.yp, d);
  }
}

template <typename S>
void experts_backward_impl(const LayerConfig& c, const Plan& plan, const ExpertWeights<S>& w,
                           const ExpertActivations<S>& a, const S* dyp, S* dxp,
                           ExpertGradients<S>& g) {
  const int64_t d = c.d_model, dff = c.d_ff, F = c.ff_width();
  host_buffer<S> dh(static_cast<size_t>(plan.rows * dff)),
      dh_pre(static_cast<size_t>(plan.rows * F));
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const int64_t n = plan.served[e], r0 = plan.offset[e];
    const S* dy = dyp + r0 * d;
    // dh = dy W2^T; dW2 += h^T dy; db2 += column sums of dy.
    matmul(false, true, n, dff, d, dy, w.w2 + e * dff * d, dh.data() + r0 * dff, false);
    zero_padding_rows(plan, e, dh.data(), dff);
    if (n == 0) continue;
    if (g.dw2) matmul(true, false, dff, d, n, a.h + r0 * dff, dy, g.dw2 + e * dff * d, true);
    if (g.db2) onednn::add_column_sums(dy, n, d, g.db2 + e * d);
  }
  onednn::activation_backward(c.activation, c.gated(), plan.rows, dff, a.h_pre, dh.data(),
                              dh_pre.data());
  for (int64_t e = 0; e < c.num_experts; ++e) {
    const int64_t n = plan.served[e], r0 = plan.offset[e];
    const S* dpre = dh_pre.data() + r0 * F;
    // dW1 += xp^T dh_pre; db1 += column sums of dh_pre; dxp = dh_pre W1^T.
    matmul(false, true, n, d, F, dpre, w.w1 + e * d * F, dxp + r0 * d, false);
    zero_padding_rows(plan, e, dxp, d);
    if (n == 0) continue;
    if (g.dw1) matmul(true, false, d, F, n, a.xp + r0 * d, dpre, g.dw1 + e * d * F, true);
    if (g.db1) onednn::add_column_sums(dpre, n, F, g.db1 + e * F);
  }
}

}  // namespace

std::string OnednnBackend::unsupported_reason(const LayerConfig& config) const {
  if (config.dtype == MOE_DTYPE_F32 || config.dtype == MOE_DTYPE_BF16) return "";
  return std::string("dtype ") + dtype_name(config.dtype) +
         " (onednn runs float32 and bfloat16; float64 is cpu_ref's)";
}

#define MOE_DEFINE_ONEDNN_STAGES(S)                                                                \
  void OnednnBackend::router_logits(const LayerConfig& c, int64_t T, const S* x, const S* wr,      \
                                    S* z) {                                                        \
    matmul(false, false, T, c.num_experts, c.d_model, x, wr, z, false);                            \
  }                                                                                                \
  void OnednnBackend::router_logits_backward(const LayerConfig& c, int64_t T, const S* x,          \
                                             const S* wr, const S* dz, S* dx, S* dwr) {            \
    if (dx) matmul(false, true, T, c.d_model, c.num_experts, dz, wr, dx, true);                    \
    if (dwr) matmul(true, false, c.d_model, c.num_experts, T, x, dz, dwr, true);                   \
  }                                                                                                \
  void OnednnBackend::permute(const LayerConfig& c, const Plan& plan, const S* x, S* xp) {         \
    onednn::permute_rows(plan, c.d_model, x, xp);                                                  \
  }                                                                                                \
  void OnednnBackend::experts_forward(const LayerConfig& c, const Plan& plan,                      \
                                      const ExpertWeights<S>& w, ExpertActivations<S>& a) {        \
    experts_forward_impl(c, plan, w, a);                                                           \
  }                                                                                                \
  void OnednnBackend::combine(const LayerConfig& c, const Plan& plan, const double* gate,          \
                              const S* yp, S* y) {                                                 \
    onednn::combine_rows(plan, c.d_model, gate, yp, y);                                            \
  }                                                                                                \
  void OnednnBackend::combine_backward(const LayerConfig& c, const Plan& plan, const double* gate, \
                                       const S* yp, const S* dy, S* dyp, double* dgate) {          \
    onednn::combine_rows_backward(plan, c.d_model, gate, yp, dy, dyp, dgate);                      \
  }                                                                                                \
  void OnednnBackend::experts_backward(const LayerConfig& c, const Plan& plan,                     \
                                       const ExpertWeights<S>& w, const ExpertActivations<S>& a,   \
                                       const S* dyp, S* dxp, ExpertGradients<S>& g) {              \
    experts_backward_impl(c, plan, w, a, dyp, dxp, g);                                             \
  }                                                                                                \
  void OnednnBackend::permute_backward(const LayerConfig& c, const Plan& plan, const S* dxp,       \
                                       S* dx) {                                                    \
    onednn::permute_rows_backward(plan, c.d_model, dxp, dx);                                       \
  }

MOE_DEFINE_ONEDNN_STAGES(float)
MOE_DEFINE_ONEDNN_STAGES(bfloat16)

}  // namespace moe
