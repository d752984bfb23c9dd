#include "core/layer/shared_experts.hpp"

#include <cmath>
#include <numeric>

#include "core/activation.hpp"
#include "core/bfloat16.hpp"

namespace moe {
namespace {

// The shared MLP as the config of a layer of one expert of the whole width.
LayerConfig one_expert_config(const LayerConfig& c) {
  LayerConfig one = c;
  one.num_experts = 1;
  one.top_k = 1;
  one.d_ff = c.shared_width();
  one.expert_bias = false;
  one.capacity_factor = 0.0;
  return one;
}

// Every token is one row of that expert, in token order.
Plan whole_batch_plan(int64_t tokens) {
  Plan plan;
  plan.tokens = tokens;
  plan.slots = 1;
  plan.capacity = tokens;
  plan.demand = {tokens};
  plan.served = {tokens};
  plan.order = {0};
  plan.offset = {0, tokens};
  plan.rows = tokens;
  plan.token_of_row.resize(tokens);
  std::iota(plan.token_of_row.begin(), plan.token_of_row.end(), int64_t{0});
  plan.row = plan.token_of_row;
  plan.dropped.assign(tokens, 0);
  return plan;
}

template <typename S>
ExpertWeights<S> shared_weights(const BoundWeights& w) {
  return {static_cast<const S*>(w.shared_w1.data), nullptr, static_cast<const S*>(w.shared_w2.data),
          nullptr};
}

}  // namespace

template <typename S>
void shared_experts_forward(const Layer& layer, SavedTensors<S>& saved, S* y) {
  const LayerConfig& c = layer.config;
  if (c.num_shared_experts == 0) return;
  const LayerConfig one = one_expert_config(c);
  const int64_t T = saved.routing.tokens, d = c.d_model;
  const Plan plan = whole_batch_plan(T);
  saved.shared_h_pre.resize(T * one.ff_width());
  saved.shared_h.resize(T * one.d_ff);
  saved.shared_y.resize(T * d);
  // The saved input has the excluded tokens' rows zeroed; their output is dropped below.
  ExpertActivations<S> acts{saved.x.data(), saved.shared_h_pre.data(), saved.shared_h.data(),
                            saved.shared_y.data()};
  if (T > 0) layer.backend.experts_forward(one, plan, shared_weights<S>(layer.weights), acts);
  saved.shared_gate.assign(c.shared_expert_gate ? T : 0, 1.0);
  if (c.shared_expert_gate && T > 0) {
    host_buffer<S> z(T);
    layer.backend.router_logits(one, T, saved.x.data(),
                                static_cast<const S*>(layer.weights.shared_gate.data), z.data());
    for (int64_t t = 0; t < T; ++t) saved.shared_gate[t] = sigmoid(static_cast<double>(z[t]));
  }
  for (int64_t t = 0; t < T; ++t) {
    if (saved.routing.nonfinite[t]) continue;
    const double gate = c.shared_expert_gate ? saved.shared_gate[t] : 1.0;
    for (int64_t i = 0; i < d; ++i)
      y[t * d + i] = static_cast<S>(static_cast<double>(y[t * d + i]) +
                                    gate * static_cast<double>(saved.shared_y[t * d + i]));
  }
}

template <typename S>
void shared_experts_backward(const Layer& layer, const SavedTensors<S>& saved,
                             const moe_backward_args_t& args) {
  const LayerConfig& c = layer.config;
  if (c.num_shared_experts == 0) return;
  const LayerConfig one = one_expert_config(c);
  const int64_t T = saved.routing.tokens, d = c.d_model;
  if (T == 0) return;
  const Plan plan = whole_batch_plan(T);
  const S* dy = static_cast<const S*>(args.dy.data);
  S* dx = static_cast<S*>(args.dx.data);
  const moe_weights_t& g = args.grads;
  // d(shared output) = gate * dy on the tokens that took part; d(gate logit) =
  // <dy, shared output> * gate * (1 - gate).
  host_buffer<S> dys(T * d), dxs(T * d), dz(c.shared_expert_gate ? T : 0);
  for (int64_t t = 0; t < T; ++t) {
    const bool took_part = !saved.routing.nonfinite[t];
    const double gate = c.shared_expert_gate ? saved.shared_gate[t] : 1.0;
    double dgate = 0.0;
    for (int64_t i = 0; i < d; ++i) {
      const double dyi = took_part ? static_cast<double>(dy[t * d + i]) : 0.0;
      dys[t * d + i] = static_cast<S>(gate * dyi);
      dgate += dyi * static_cast<double>(saved.shared_y[t * d + i]);
    }
    if (c.shared_expert_gate) dz[t] = static_cast<S>(dgate * gate * (1.0 - gate));
  }
  const ExpertActivations<S> acts{
      const_cast<S*>(saved.x.data()), const_cast<S*>(saved.shared_h_pre.data()),
      const_cast<S*>(saved.shared_h.data()), const_cast<S*>(saved.shared_y.data())};
  ExpertGradients<S> grads{static_cast<S*>(g.shared_w1.data), nullptr,
                           static_cast<S*>(g.shared_w2.data), nullptr};
  layer.backend.experts_backward(one, plan, shared_weights<S>(layer.weights), acts, dys.data(),
                                 dxs.data(), grads);
  if (dx)
    for (int64_t i = 0; i < T * d; ++i)
      dx[i] = static_cast<S>(static_cast<double>(dx[i]) + static_cast<double>(dxs[i]));
  if (c.shared_expert_gate)
    layer.backend.router_logits_backward(one, T, saved.x.data(),
                                         static_cast<const S*>(layer.weights.shared_gate.data),
                                         dz.data(), dx, static_cast<S*>(g.shared_gate.data));
}

#define MOE_SHARED_EXPERTS(S)                                                    \
  template void shared_experts_forward<S>(const Layer&, SavedTensors<S>&, S*);   \
  template void shared_experts_backward<S>(const Layer&, const SavedTensors<S>&, \
                                           const moe_backward_args_t&);
MOE_SHARED_EXPERTS(float)
MOE_SHARED_EXPERTS(double)
MOE_SHARED_EXPERTS(bfloat16)

}  // namespace moe
