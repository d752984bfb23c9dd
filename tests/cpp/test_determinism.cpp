// Determinism: the same inputs give the same bits, run after run and layer after
// layer, noise included (it derives from the seed alone).
#include <gtest/gtest.h>

#include "problem.hpp"

namespace {

using moe_test::make_config;
using moe_test::Problem;

moe_layer_config_t noisy_config(moe_router_t router) {
  moe_layer_config_t c = make_config(16, 24, 8, 2);
  c.router = router;
  c.activation = MOE_ACTIVATION_SWIGLU;
  c.router_noise_type = MOE_NOISE_GUMBEL;
  c.router_noise_std_init = 0.5;
  c.load_balance_alpha = 0.01;
  c.router_z_loss_coef = 0.001;
  c.capacity_factor = 1.0;
  c.seed = 1234;
  return c;
}

class Determinism : public ::testing::TestWithParam<moe_router_t> {};

TEST_P(Determinism, RepeatedRunsAreBitIdentical) {
  Problem<float> a(noisy_config(GetParam()), 129, 3);
  Problem<float> b(noisy_config(GetParam()), 129, 3);
  for (int step = 0; step < 3; ++step) {
    moe::Context ca = a.forward(), cb = b.forward();
    a.backward(ca);
    b.backward(cb);
    SCOPED_TRACE("step " + std::to_string(step));
    moe_test::expect_same_results(a, b);
    ASSERT_EQ(ca.routing().experts, cb.routing().experts);
    if (HasFailure()) return;
  }
}

TEST_P(Determinism, SameLayerTwiceInEvalIsBitIdentical) {
  Problem<float> p(noisy_config(GetParam()), 65, 4);
  p.forward(false);
  const std::vector<float> first = p.y;
  p.forward(false);
  EXPECT_EQ(first, p.y);
}

INSTANTIATE_TEST_SUITE_P(Routers, Determinism,
                         ::testing::Values(MOE_ROUTER_SOFTMAX, MOE_ROUTER_SIGMOID,
                                           MOE_ROUTER_EXPERT_CHOICE, MOE_ROUTER_HASH));

}  // namespace
