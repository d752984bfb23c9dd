// Training-only behaviour: noise, temperature anneal and selection-bias updates act
// in training calls only; gradients accumulate on request; micro-batches in flight.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "problem.hpp"

namespace {

using moe_test::make_config;
using moe_test::Problem;

TEST(Training, NoiseChangesTrainingRoutingOnlyAndFollowsTheSeed) {
  moe_layer_config_t c = make_config(8, 8, 8, 2);
  c.router_noise_type = MOE_NOISE_GAUSSIAN;
  c.router_noise_std_init = 2.0;
  c.seed = 1;
  Problem<float> p(c, 200, 1);
  const auto eval1 = p.forward(false).routing().experts;
  const auto train = p.forward(true).routing().experts;
  const auto eval2 = p.forward(false).routing().experts;
  EXPECT_EQ(eval1, eval2) << "an eval call must not depend on noise";
  EXPECT_NE(eval1, train) << "std 2 noise should move some selections";

  c.seed = 2;
  Problem<float> q(c, 200, 1);
  EXPECT_NE(q.forward(true).routing().experts, train) << "another seed, other noise";
}

TEST(Training, NoiseStdDecaysToZero) {
  moe_layer_config_t c = make_config(8, 8, 8, 2);
  c.router_noise_type = MOE_NOISE_GUMBEL;
  c.router_noise_std_init = 3.0;
  c.router_noise_decay_iters = 2;
  Problem<float> p(c, 100, 1);
  const auto clean = p.forward(false).routing().experts;
  p.forward(true);  // step 0: noisy
  p.forward(true);  // step 1: half std
  EXPECT_EQ(p.forward(true).routing().experts, clean) << "step 2: std has decayed to 0";
}

TEST(Training, TemperatureAnnealsWithTrainingStepsOnly) {
  moe_layer_config_t c = make_config(8, 8, 4, 1);
  c.router_temp_init = 4.0;
  c.router_temp_final = 1.0;
  c.router_temp_anneal_iters = 3;
  c.renormalize = 0;
  Problem<float> p(c, 20, 1);
  const float g0 = p.forward(false).routing().gates[0];
  EXPECT_EQ(p.layer.step(), 0);
  p.forward(true);
  p.forward(true);
  p.forward(true);
  EXPECT_EQ(p.layer.step(), 3);
  const float g3 = p.forward(false).routing().gates[0];
  EXPECT_EQ(p.layer.step(), 3) << "eval calls do not advance the step";
  EXPECT_GT(g3, g0) << "a lower temperature sharpens the top-1 probability";
}

TEST(Training, SelectionBiasMovesTowardEqualLoad) {
  moe_layer_config_t c = make_config(8, 8, 4, 1);
  c.router = MOE_ROUTER_SIGMOID;
  c.bias_update_rate = 0.01;
  Problem<float> p(c, 400, 2);
  const auto stats = p.forward(true).stats(4);
  std::vector<double> bias(4);
  ASSERT_EQ(moe_layer_get_selection_bias(p.layer.get(), bias.data(), 4), MOE_STATUS_SUCCESS);
  const double mean = 100.0;
  for (int e = 0; e < 4; ++e) {
    const double d = static_cast<double>(stats.demand[e]);
    const double expected = d < mean ? 0.01 : d > mean ? -0.01 : 0.0;
    EXPECT_DOUBLE_EQ(bias[e], expected) << "expert " << e << " demand " << d;
  }
  p.forward(false);
  std::vector<double> after(4);
  moe_layer_get_selection_bias(p.layer.get(), after.data(), 4);
  EXPECT_EQ(bias, after) << "eval calls leave the bias alone";
}

TEST(Training, SelectionBiasSteersSelectionButNotGates) {
  moe_layer_config_t c = make_config(8, 8, 4, 1);
  c.renormalize = 0;
  Problem<float> p(c, 30, 5);
  std::vector<double> bias = {0, 0, 100.0, 0};
  ASSERT_EQ(moe_layer_set_selection_bias(p.layer.get(), bias.data(), 4), MOE_STATUS_SUCCESS);
  moe::Context ctx = p.forward(false);
  const auto r = ctx.routing();
  for (int64_t t = 0; t < p.T; ++t) {
    EXPECT_EQ(r.experts[t], 2);
    EXPECT_LT(r.gates[t], 1.0f) << "the gate is the unbiased probability";
  }
}

TEST(Training, AccumulateAddsIntoGradientBuffers) {
  Problem<double> p(make_config(6, 8, 4, 2), 21, 3);
  moe::Context ctx = p.forward();
  p.backward(ctx);
  const auto w1 = p.g_w1, router = p.g_router, dx = p.dx;
  p.backward(ctx, MOE_BACKWARD_ACCUMULATE);
  for (size_t i = 0; i < w1.size(); ++i) EXPECT_DOUBLE_EQ(p.g_w1[i], 2 * w1[i]);
  for (size_t i = 0; i < router.size(); ++i) EXPECT_DOUBLE_EQ(p.g_router[i], 2 * router[i]);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_DOUBLE_EQ(p.dx[i], 2 * dx[i]);
  p.backward(ctx);  // overwrite again
  EXPECT_EQ(p.g_w1, w1);
}

TEST(Training, SeveralMicroBatchesInFlight) {
  Problem<double> p(make_config(6, 8, 4, 2), 15, 3);
  const auto x0 = p.x;
  moe::Context first = p.forward();
  const auto y0 = p.y;
  for (auto& v : p.x) v = -v;  // a second micro-batch in the same buffers
  moe::Context second = p.forward();
  p.backward(second);
  const auto w1_second = p.g_w1;
  p.backward(first);  // the first context still holds its own saved state
  p.x = x0;
  moe::Context again = p.forward();
  EXPECT_EQ(p.y, y0);
  const auto w1_first = p.g_w1;
  p.backward(again);
  EXPECT_EQ(p.g_w1, w1_first);
  EXPECT_NE(w1_first, w1_second);
}

}  // namespace
