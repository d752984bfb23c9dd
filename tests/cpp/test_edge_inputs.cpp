// Edge inputs: T = 0, E = 1, k = E, all tokens to one expert, rows of NaN or Inf
// (counted, routed nowhere, never an out-of-range index).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "problem.hpp"

namespace {

using moe_test::make_config;
using moe_test::Problem;

const moe_router_t kAllRouters[] = {MOE_ROUTER_SOFTMAX, MOE_ROUTER_SIGMOID, MOE_ROUTER_HASH,
                                    MOE_ROUTER_EXPERT_CHOICE};

bool all_finite(const std::vector<float>& v) {
  for (float f : v)
    if (!std::isfinite(f)) return false;
  return true;
}

TEST(EdgeInputs, NoTokens) {
  for (moe_router_t router : kAllRouters) {
    moe_layer_config_t c = make_config(8, 8, 4, 2);
    c.router = router;
    c.load_balance_alpha = 0.1;
    c.router_z_loss_coef = 0.1;
    c.capacity_factor = 1.0;
    Problem<float> p(c, 0, 1);
    moe::Context ctx = p.forward();
    const auto s = ctx.stats(4);
    EXPECT_EQ(s.summary.tokens, 0);
    EXPECT_EQ(s.summary.dropped_total, 0);
    EXPECT_EQ(ctx.losses().aux_loss, 0.0);
    EXPECT_EQ(ctx.losses().z_loss, 0.0);
    p.backward(ctx);
    for (float g : p.g_w1) EXPECT_EQ(g, 0.f);
    if (router != MOE_ROUTER_HASH) {
      for (float g : p.g_router) EXPECT_EQ(g, 0.f);
    }
  }
}

TEST(EdgeInputs, OneExpertTakesEveryToken) {
  Problem<float> p(make_config(8, 8, 1, 1), 13, 1);
  moe::Context ctx = p.forward();
  const auto r = ctx.routing();
  for (int64_t t = 0; t < p.T; ++t) {
    EXPECT_EQ(r.experts[t], 0);
    EXPECT_EQ(r.gates[t], 1.0f);
  }
  EXPECT_DOUBLE_EQ(ctx.losses().aux_loss, 1.0);
}

TEST(EdgeInputs, TopKEqualsExpertCount) {
  for (moe_router_t router : {MOE_ROUTER_SOFTMAX, MOE_ROUTER_SIGMOID, MOE_ROUTER_HASH}) {
    moe_layer_config_t c = make_config(8, 8, 5, 5);
    c.router = router;
    Problem<float> p(c, 11, 1);
    const auto r = p.forward().routing();
    for (int64_t t = 0; t < p.T; ++t) {
      std::vector<int32_t> chosen(r.experts.begin() + t * 5, r.experts.begin() + t * 5 + 5);
      std::sort(chosen.begin(), chosen.end());
      EXPECT_EQ(chosen, (std::vector<int32_t>{0, 1, 2, 3, 4})) << "token " << t;
      float sum = 0.f;
      for (int j = 0; j < 5; ++j) sum += r.gates[t * 5 + j];
      EXPECT_NEAR(sum, 1.0f, 1e-6f);
    }
  }
}

TEST(EdgeInputs, AllTokensToOneExpert) {
  for (double factor : {0.0, 1.0}) {
    moe_layer_config_t c = make_config(4, 8, 4, 1);
    c.capacity_factor = factor;
    Problem<float> p(c, 40, 1);
    for (auto& v : p.x) v = std::abs(v) + 0.1f;
    std::fill(p.router.begin(), p.router.end(), 0.f);
    for (int64_t i = 0; i < p.d; ++i) p.router[i * p.E + 3] = 5.f;
    p.bind();
    moe::Context ctx = p.forward();
    const auto s = ctx.stats(4);
    EXPECT_EQ(s.demand, (std::vector<int64_t>{0, 0, 0, 40}));
    EXPECT_EQ(s.summary.dropped_total, factor > 0 ? 30 : 0);  // C = ceil(40/4) = 10
    EXPECT_NEAR(ctx.losses().aux_loss, 4.0, 1e-2);            // E * 1 * P_3, P_3 close to 1
    p.backward(ctx);
    EXPECT_TRUE(all_finite(p.g_router) && all_finite(p.g_w1) && all_finite(p.dx));
  }
}

class NonFiniteRows : public ::testing::TestWithParam<moe_router_t> {};

TEST_P(NonFiniteRows, AreCountedAndRoutedNowhere) {
  moe_layer_config_t c = make_config(6, 8, 4, 2);
  c.router = GetParam();
  c.load_balance_alpha = 0.1;
  c.router_z_loss_coef = 0.01;
  Problem<float> p(c, 12, 3);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  p.x[2 * p.d + 1] = nan;
  p.x[5 * p.d + 0] = inf;
  p.x[7 * p.d + 3] = -inf;
  // A finite row whose logits overflow is non-finite too (learned routers).
  const bool learned = GetParam() != MOE_ROUTER_HASH;
  if (learned) {
    for (int64_t i = 0; i < p.d; ++i) {
      p.x[9 * p.d + i] = std::numeric_limits<float>::max();
      p.router[i * p.E + 0] = 1.f;  // z[9,0] = d * FLT_MAX overflows to +inf
    }
    p.bind();
  }
  const std::vector<int64_t> bad =
      learned ? std::vector<int64_t>{2, 5, 7, 9} : std::vector<int64_t>{2, 5, 7};
  moe::Context ctx = p.forward();
  const auto s = ctx.stats(4);
  EXPECT_EQ(s.summary.nonfinite_rows, static_cast<int64_t>(bad.size()));
  const auto r = ctx.routing();
  for (int64_t t = 0; t < p.T; ++t) {
    const bool is_bad = std::find(bad.begin(), bad.end(), t) != bad.end();
    for (int64_t j = 0; j < r.slots; ++j) {
      const int32_t e = r.experts[t * r.slots + j];
      EXPECT_TRUE(e >= -1 && e < 4) << "out-of-range expert id " << e;
      if (is_bad) {
        EXPECT_EQ(e, -1) << "token " << t << " should be routed nowhere";
      }
    }
    if (is_bad) {
      for (int64_t i = 0; i < p.d; ++i) EXPECT_EQ(p.y[t * p.d + i], 0.f);
    }
  }
  EXPECT_TRUE(all_finite(p.y));
  EXPECT_TRUE(std::isfinite(ctx.losses().aux_loss));
  EXPECT_TRUE(std::isfinite(ctx.losses().z_loss));
  p.backward(ctx);
  EXPECT_TRUE(all_finite(p.g_w1) && all_finite(p.g_w2) && all_finite(p.dx));
  if (learned) {
    EXPECT_TRUE(all_finite(p.g_router));
  }
}

TEST_P(NonFiniteRows, AllRowsBadGivesZerosNotNaN) {
  moe_layer_config_t c = make_config(4, 4, 3, 1);
  c.router = GetParam();
  c.load_balance_alpha = 1.0;
  c.router_z_loss_coef = 1.0;
  Problem<float> p(c, 5, 3);
  std::fill(p.x.begin(), p.x.end(), std::numeric_limits<float>::quiet_NaN());
  moe::Context ctx = p.forward();
  EXPECT_EQ(ctx.stats(3).summary.nonfinite_rows, 5);
  for (float v : p.y) EXPECT_EQ(v, 0.f);
  p.backward(ctx);
  EXPECT_TRUE(all_finite(p.g_w1) && all_finite(p.dx));
  if (GetParam() != MOE_ROUTER_HASH) {
    EXPECT_TRUE(all_finite(p.g_router));
  }
}

INSTANTIATE_TEST_SUITE_P(Routers, NonFiniteRows, ::testing::ValuesIn(kAllRouters));

}  // namespace
