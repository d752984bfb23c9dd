// The onednn backend against the cpu_ref oracle, layer for layer: the same routing
// decisions, float32 outputs and gradients within 1e-5 relative, bfloat16 within 1e-2,
// bit-identical repeated runs. (The other suites also run whole on onednn: ctest's
// onednn.* entries, with MOE_TEST_BACKEND=onednn.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

#include "problem.hpp"

namespace {

using moe::bfloat16;
using moe_test::make_config;
using moe_test::Problem;

// max |a - b| / max |b|: the error relative to the reference's scale.
template <typename A, typename B>
double relative_error(const std::vector<A>& a, const std::vector<B>& b) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return scale > 0.0 ? diff / scale : diff;
}

moe_layer_config_t on_backend(moe_layer_config_t c, const char* backend) {
  c.backend = backend;
  return c;
}

// Every output and gradient of `lib` within `tolerance` of `ref` (the router's for
// learned routers; the hash router has none).
template <typename S>
void expect_close(const Problem<S>& lib, const Problem<S>& ref, double tolerance) {
  EXPECT_LE(relative_error(lib.y, ref.y), tolerance) << "y";
  EXPECT_LE(relative_error(lib.dx, ref.dx), tolerance) << "dx";
  EXPECT_LE(relative_error(lib.g_w1, ref.g_w1), tolerance) << "d w1";
  EXPECT_LE(relative_error(lib.g_w2, ref.g_w2), tolerance) << "d w2";
  EXPECT_LE(relative_error(lib.g_b1, ref.g_b1), tolerance) << "d b1";
  EXPECT_LE(relative_error(lib.g_b2, ref.g_b2), tolerance) << "d b2";
  if (ref.learned()) {
    EXPECT_LE(relative_error(lib.g_router, ref.g_router), tolerance) << "d router";
  }
}

struct Case {
  std::string name;
  moe_router_t router;
  moe_activation_t activation;
  double capacity_factor;
  moe_drop_policy_t policy;
  int pad;
  int64_t T, E, k;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  const std::pair<const char*, moe_router_t> routers[] = {
      {"softmax", MOE_ROUTER_SOFTMAX},
      {"sigmoid", MOE_ROUTER_SIGMOID},
      {"expert_choice", MOE_ROUTER_EXPERT_CHOICE},
      {"hash", MOE_ROUTER_HASH}};
  const std::pair<const char*, moe_activation_t> activations[] = {
      {"relu", MOE_ACTIVATION_RELU},           {"gelu", MOE_ACTIVATION_GELU},
      {"gelu_tanh", MOE_ACTIVATION_GELU_TANH}, {"silu", MOE_ACTIVATION_SILU},
      {"swiglu", MOE_ACTIVATION_SWIGLU},       {"geglu", MOE_ACTIVATION_GEGLU}};
  for (const auto& [rname, router] : routers)
    for (const auto& [aname, activation] : activations) {
      out.push_back({std::string(rname) + "_" + aname + "_dropless", router, activation, 0.0,
                     MOE_DROP_POSITION, 0, 97, 8, 2});
      out.push_back({std::string(rname) + "_" + aname + "_capacity", router, activation, 1.0,
                     MOE_DROP_PROBABILITY, 0, 97, 8, 2});
    }
  out.push_back({"padded_capacity", MOE_ROUTER_SOFTMAX, MOE_ACTIVATION_GELU, 1.25,
                 MOE_DROP_POSITION, 1, 97, 8, 2});
  out.push_back(
      {"one_token", MOE_ROUTER_SOFTMAX, MOE_ACTIVATION_SWIGLU, 0.0, MOE_DROP_POSITION, 0, 1, 8, 2});
  out.push_back({"fine_grained", MOE_ROUTER_SOFTMAX, MOE_ACTIVATION_SWIGLU, 0.0, MOE_DROP_POSITION,
                 0, 300, 64, 8});
  out.push_back({"single_expert", MOE_ROUTER_SOFTMAX, MOE_ACTIVATION_RELU, 0.0, MOE_DROP_POSITION,
                 0, 33, 1, 1});
  return out;
}

moe_layer_config_t config_of(const Case& c) {
  moe_layer_config_t cfg = make_config(32, 48, c.E, c.k);
  cfg.router = c.router;
  cfg.activation = c.activation;
  cfg.capacity_factor = c.capacity_factor;
  cfg.drop_policy = c.policy;
  cfg.pad_to_capacity = c.pad;
  cfg.expert_bias = 1;
  cfg.load_balance_alpha = 0.01;
  cfg.router_z_loss_coef = 0.001;
  cfg.hash_mode = MOE_HASH_CONTENT;
  return cfg;
}

class OnednnMatchesReference : public ::testing::TestWithParam<Case> {};

TEST_P(OnednnMatchesReference, Float32) {
  const Case& c = GetParam();
  Problem<float> ref(on_backend(config_of(c), "cpu_ref"), c.T, 11);
  Problem<float> lib(on_backend(config_of(c), "onednn"), c.T, 11);
  for (int step = 0; step < 2; ++step) {  // the second step accumulates into the gradients
    const uint32_t flags = step ? MOE_BACKWARD_ACCUMULATE : 0;
    moe::Context cr = ref.forward(), cl = lib.forward();
    ref.backward(cr, flags);
    lib.backward(cl, flags);
    const moe::Context::RoutingDecision rr = cr.routing(), rl = cl.routing();
    ASSERT_EQ(rl.experts, rr.experts) << "routing decisions differ";
    ASSERT_EQ(rl.dropped, rr.dropped) << "drop decisions differ";
    expect_close(lib, ref, 1e-5);
    EXPECT_NEAR(cl.losses().aux_loss, cr.losses().aux_loss, 1e-6);
    EXPECT_NEAR(cl.losses().z_loss, cr.losses().z_loss, 1e-5 * std::max(1.0, cr.losses().z_loss));
  }
}

TEST_P(OnednnMatchesReference, RepeatedRunsAreBitIdentical) {
  const Case& c = GetParam();
  Problem<float> a(on_backend(config_of(c), "onednn"), c.T, 5);
  Problem<float> b(on_backend(config_of(c), "onednn"), c.T, 5);
  moe::Context ca = a.forward(), cb = b.forward();
  a.backward(ca);
  b.backward(cb);
  moe_test::expect_same_results(a, b);
}

// bfloat16 on onednn against bfloat16 on cpu_ref (double accumulation, rounded where a
// tensor is stored), on the same inputs. The learned router's weights are scaled up so
// that top-k margins dwarf the last-bit differences of bf16 logits: routing must match.
TEST_P(OnednnMatchesReference, Bfloat16WithinOnePercent) {
  const Case& c = GetParam();
  Problem<bfloat16> ref(on_backend(config_of(c), "cpu_ref"), c.T, 23);
  Problem<bfloat16> lib(on_backend(config_of(c), "onednn"), c.T, 23);
  for (auto* p : {&ref, &lib}) {
    for (auto& v : p->router) v = static_cast<float>(v) * 8.0f;
    p->bind();
  }
  moe::Context cr = ref.forward(), cl = lib.forward();
  ASSERT_EQ(cl.routing().experts, cr.routing().experts);
  ref.backward(cr);
  lib.backward(cl);
  expect_close(lib, ref, 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Cases, OnednnMatchesReference, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& param) {
                           return param.param.name;
                         });

TEST(Onednn, IsPickedByAutoForFloat32AndBfloat16) {
  for (moe_dtype_t dtype : {MOE_DTYPE_F32, MOE_DTYPE_BF16}) {
    moe_layer_config_t c = make_config(8, 8, 4, 2);
    c.backend = "auto";
    c.dtype = dtype;
    moe::Layer layer(c);
    EXPECT_STREQ(layer.config().backend, "onednn");
  }
}

TEST(Onednn, RefusesFloat64ByNameAndAutoFallsBackToReference) {
  moe_layer_config_t c = make_config(8, 8, 4, 2);
  c.dtype = MOE_DTYPE_F64;
  c.backend = "onednn";
  moe_layer_t layer = nullptr;
  EXPECT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(moe_last_error()).find("float64"), std::string::npos) << moe_last_error();
  c.backend = "auto";
  moe::Layer fallback(c);
  EXPECT_STREQ(fallback.config().backend, "cpu_ref");
}

}  // namespace
