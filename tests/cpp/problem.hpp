// A random MoE problem for the tests: a layer plus caller-owned weights, inputs and
// gradient buffers, all of one scalar type.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/bfloat16.hpp"
#include "moe/moe.hpp"

namespace moe_test {

template <typename S>
moe_dtype_t dtype_of();
template <>
inline moe_dtype_t dtype_of<float>() {
  return MOE_DTYPE_F32;
}
template <>
inline moe_dtype_t dtype_of<double>() {
  return MOE_DTYPE_F64;
}
template <>
inline moe_dtype_t dtype_of<moe::bfloat16>() {
  return MOE_DTYPE_BF16;
}

// The backend the suites run on: cpu_ref, or the one named by MOE_TEST_BACKEND (ctest
// runs the float32 suites once more on onednn that way). float64 is cpu_ref's alone.
inline const char* test_backend() {
  const char* name = std::getenv("MOE_TEST_BACKEND");
  return name && *name ? name : "cpu_ref";
}

inline bool is_gated(moe_activation_t a) {
  return a == MOE_ACTIVATION_SWIGLU || a == MOE_ACTIVATION_GEGLU;
}

inline moe_layer_config_t make_config(int64_t d, int64_t d_ff, int64_t E, int64_t k) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = d;
  c.d_ff = d_ff;
  c.num_experts = E;
  c.top_k = k;
  c.backend = test_backend();
  return c;
}

template <typename S>
struct Problem {
  moe_layer_config_t config;
  int64_t T, d, d_ff, E, F;
  std::vector<S> x, y, dy, dx;
  std::vector<S> router, w1, b1, w2, b2;
  std::vector<S> g_router, g_w1, g_b1, g_w2, g_b2;
  moe::Layer layer;

  Problem(moe_layer_config_t cfg, int64_t tokens, uint64_t seed)
      : config(with_dtype(cfg)),
        T(tokens),
        d(cfg.d_model),
        d_ff(cfg.d_ff),
        E(cfg.num_experts),
        F(is_gated(cfg.activation) ? 2 * cfg.d_ff : cfg.d_ff),
        layer(config) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    auto fill = [&](std::vector<S>& v, size_t n, double scale) {
      v.resize(n);
      for (auto& e : v) e = static_cast<S>(scale * normal(rng));
    };
    fill(x, T * d, 1.0);
    fill(dy, T * d, 1.0);
    fill(router, d * E, 1.0 / std::sqrt(static_cast<double>(d)));
    fill(w1, E * d * F, 1.0 / std::sqrt(static_cast<double>(d)));
    fill(w2, E * d_ff * d, 1.0 / std::sqrt(static_cast<double>(d_ff)));
    if (config.expert_bias) {
      fill(b1, E * F, 0.1);
      fill(b2, E * d, 0.1);
    }
    y.assign(T * d, S(0));
    dx.assign(T * d, S(0));
    g_router.assign(d * E, S(0));
    g_w1.assign(E * d * F, S(0));
    g_w2.assign(E * d_ff * d, S(0));
    if (config.expert_bias) {
      g_b1.assign(E * F, S(0));
      g_b2.assign(E * d, S(0));
    }
    bind();
  }

  static moe_layer_config_t with_dtype(moe_layer_config_t c) {
    c.dtype = dtype_of<S>();
    if (c.dtype == MOE_DTYPE_F64) c.backend = "cpu_ref";
    return c;
  }

  bool learned() const { return config.router != MOE_ROUTER_HASH; }

  moe_weights_t weights(std::vector<S>& r, std::vector<S>& a1, std::vector<S>& c1,
                        std::vector<S>& a2, std::vector<S>& c2) {
    moe_weights_t w = MOE_WEIGHTS_INIT;
    if (learned()) w.router = moe::tensor(r.data(), dtype_of<S>(), {d, E});
    w.w1 = moe::tensor(a1.data(), dtype_of<S>(), {E, d, F});
    w.w2 = moe::tensor(a2.data(), dtype_of<S>(), {E, d_ff, d});
    if (config.expert_bias) {
      w.b1 = moe::tensor(c1.data(), dtype_of<S>(), {E, F});
      w.b2 = moe::tensor(c2.data(), dtype_of<S>(), {E, d});
    }
    return w;
  }

  void bind() { layer.set_weights(weights(router, w1, b1, w2, b2)); }

  moe_forward_args_t forward_args(bool train = true) {
    moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
    a.x = moe::tensor(x.data(), dtype_of<S>(), {T, d});
    a.y = moe::tensor(y.data(), dtype_of<S>(), {T, d});
    a.train = train ? 1 : 0;
    return a;
  }

  moe::Context forward(bool train = true) { return layer.forward(forward_args(train)); }

  moe_backward_args_t backward_args(uint32_t flags = 0) {
    moe_backward_args_t a = MOE_BACKWARD_ARGS_INIT;
    a.dy = moe::tensor(dy.data(), dtype_of<S>(), {T, d});
    a.dx = moe::tensor(dx.data(), dtype_of<S>(), {T, d});
    a.grads = weights(g_router, g_w1, g_b1, g_w2, g_b2);
    a.flags = flags;
    return a;
  }

  void backward(const moe::Context& ctx, uint32_t flags = 0) {
    layer.backward(ctx, backward_args(flags));
  }

  // The scalar whose gradient backward computes: <y, dy> + the scaled losses.
  double loss(bool train = false) {
    moe::Context ctx = forward(train);
    double sum = 0.0;
    for (int64_t i = 0; i < T * d; ++i)
      sum += static_cast<double>(y[i]) * static_cast<double>(dy[i]);
    const moe_losses_t l = ctx.losses();
    return sum + l.aux_loss_scaled + l.z_loss_scaled;
  }
};

// Every output and gradient of two problems, bit for bit.
template <typename S>
void expect_same_results(const Problem<S>& a, const Problem<S>& b) {
  EXPECT_EQ(a.y, b.y);
  EXPECT_EQ(a.dx, b.dx);
  EXPECT_EQ(a.g_router, b.g_router);
  EXPECT_EQ(a.g_w1, b.g_w1);
  EXPECT_EQ(a.g_b1, b.g_b1);
  EXPECT_EQ(a.g_w2, b.g_w2);
  EXPECT_EQ(a.g_b2, b.g_b2);
}

}  // namespace moe_test
