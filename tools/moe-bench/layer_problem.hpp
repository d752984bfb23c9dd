// One benchmark layer: a MoE layer of a standard shape with random weights, inputs and
// gradient buffers, ready for timed forward and backward calls. With a communicator it
// is this rank's part of an expert-parallel layer: its own tokens, its own experts.
#pragma once

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "moe/moe.hpp"
#include "tools/moe-bench/shapes.hpp"

namespace moe::bench {

inline moe_layer_config_t layer_config(const Shape& s, moe_dtype_t dtype, const char* backend) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = s.d_model;
  c.d_ff = s.d_ff;
  c.num_experts = s.experts;
  c.top_k = s.top_k;
  c.activation = s.activation;
  c.dtype = dtype;
  c.backend = backend;
  return c;
}

template <typename S>
class LayerProblem {
 public:
  // `skew` > 0 adds skew / sqrt(d) to expert 0's router column: a hot expert, the
  // skewed load a placement from load is for.
  LayerProblem(const Shape& s, moe_dtype_t dtype, const std::string& backend,
               moe_comm_t comm = nullptr, double skew = 0.0)
      : layer(layer_config(s, dtype, backend.c_str())), shape_(s), dtype_(dtype) {
    if (comm) layer.set_comm(comm);
    const int64_t T = s.tokens, d = s.d_model, E = s.experts, F = s.ff_width();
    const int64_t held = static_cast<int64_t>(layer.local_experts().size());
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.f, 1.f);
    auto random = [&](std::vector<S>& v, int64_t n, float scale) {
      v.resize(static_cast<size_t>(n));
      for (S& e : v) e = S(scale * normal(rng));
    };
    random(x_, T * d, 1.f);
    random(dy_, T * d, 1.f);
    random(router_, d * E, 1.f / std::sqrt(float(d)));
    for (int64_t i = 0; i < d; ++i)
      router_[i * E] = S(static_cast<float>(router_[i * E]) +
                         static_cast<float>(skew / std::sqrt(static_cast<double>(d))));
    random(w1_, held * d * F, 1.f / std::sqrt(float(d)));
    random(w2_, held * s.d_ff * d, 1.f / std::sqrt(float(s.d_ff)));
    y_.resize(x_.size());
    dx_.resize(x_.size());
    g_router_.resize(router_.size());
    g_w1_.resize(w1_.size());
    forward_args_.x = moe::tensor(x_.data(), dtype, {T, d});
    forward_args_.y = moe::tensor(y_.data(), dtype, {T, d});
    forward_args_.train = 1;
    backward_args_.dy = moe::tensor(dy_.data(), dtype, {T, d});
    backward_args_.dx = moe::tensor(dx_.data(), dtype, {T, d});
    bind(held);
  }

  // Applies a slot-table placement as docs/distributed.md prescribes: the expert
  // weights moved through the communicator, the table installed, the weights bound.
  void set_placement(const std::vector<int32_t>& table) {
    const int64_t d = shape_.d_model, F = shape_.ff_width();
    w1_ = layer.move_expert_tensor(table, w1_, d * F);
    w2_ = layer.move_expert_tensor(table, w2_, shape_.d_ff * d);
    layer.set_placement(table);
    bind(static_cast<int64_t>(layer.local_experts().size()));
  }

  moe::Context forward() { return layer.forward(forward_args_); }
  void backward(const moe::Context& ctx) { layer.backward(ctx, backward_args_); }

  moe::Layer layer;

 private:
  void bind(int64_t held) {
    const int64_t d = shape_.d_model, E = shape_.experts, F = shape_.ff_width();
    g_router_.resize(router_.size());
    g_w1_.resize(w1_.size());
    g_w2_.resize(w2_.size());
    moe_weights_t w = MOE_WEIGHTS_INIT;
    w.router = moe::tensor(router_.data(), dtype_, {d, E});
    w.w1 = moe::tensor(w1_.data(), dtype_, {held, d, F});
    w.w2 = moe::tensor(w2_.data(), dtype_, {held, shape_.d_ff, d});
    layer.set_weights(w);
    backward_args_.grads.router = moe::tensor(g_router_.data(), dtype_, {d, E});
    backward_args_.grads.w1 = moe::tensor(g_w1_.data(), dtype_, {held, d, F});
    backward_args_.grads.w2 = moe::tensor(g_w2_.data(), dtype_, {held, shape_.d_ff, d});
  }

  Shape shape_;
  moe_dtype_t dtype_;
  std::vector<S> x_, dy_, y_, dx_, router_, w1_, w2_, g_router_, g_w1_, g_w2_;
  moe_forward_args_t forward_args_ = MOE_FORWARD_ARGS_INIT;
  moe_backward_args_t backward_args_ = MOE_BACKWARD_ARGS_INIT;
};

}  // namespace moe::bench
