// onednn: the CPU backend. Expert and router products run as oneDNN matmul primitives
// (runtime dimensions, made once and cached); the activation, permute, combine and
// bias gradients are OpenMP loops (threaded_stages, activation_kernels). float32, and
// bfloat16 storage with float32 accumulation. float64 stays with cpu_ref.
#pragma once

#include "backends/backend.hpp"

namespace moe {

class OnednnBackend final : public Backend {
 public:
  const char* name() const override { return "onednn"; }
  std::string unsupported_reason(const LayerConfig& config) const override;

#define MOE_ONEDNN_OVERRIDES(S)                                                                  \
  void router_logits(const LayerConfig& c, int64_t tokens, const S* x, const S* wr, S* z)        \
      override;                                                                                  \
  void router_logits_backward(const LayerConfig& c, int64_t tokens, const S* x, const S* wr,     \
                              const S* dz, S* dx, S* dwr) override;                              \
  void permute(const LayerConfig& c, const Plan& plan, const S* x, S* xp) override;              \
  void experts_forward(const LayerConfig& c, const Plan& plan, const ExpertWeights<S>& w,        \
                       ExpertActivations<S>& a) override;                                        \
  void combine(const LayerConfig& c, const Plan& plan, const double* gate, const S* yp, S* y)    \
      override;                                                                                  \
  void combine_backward(const LayerConfig& c, const Plan& plan, const double* gate, const S* yp, \
                        const S* dy, S* dyp, double* dgate) override;                            \
  void experts_backward(const LayerConfig& c, const Plan& plan, const ExpertWeights<S>& w,       \
                        const ExpertActivations<S>& a, const S* dyp, S* dxp,                     \
                        ExpertGradients<S>& g) override;                                         \
  void permute_backward(const LayerConfig& c, const Plan& plan, const S* dxp, S* dx) override;

  MOE_ONEDNN_OVERRIDES(float)
  MOE_ONEDNN_OVERRIDES(bfloat16)
#undef MOE_ONEDNN_OVERRIDES
};

}  // namespace moe
