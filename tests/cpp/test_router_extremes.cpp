// The learned routers at extreme scores: logits far below -745 (sigmoid is 0 in double,
// and sums of sigmoids are 0), far above 37 (sigmoid is exactly 1), and finite logits
// that overflow once divided by the temperature. Each must route, and give finite
// outputs and gradients, or count the row as non-finite; none may give NaN.
//
// The reference is an identity, not this code: for scores u far below 0, log sigmoid(u)
// = u - log1p(e^u) equals u to the last bit, so the sigmoid router's P = s / sum(s) and its
// renormalized gates are the softmax router's, and its keys sigmoid(u) all tie at 0 and
// fall back to u, the softmax router's keys. With renormalisation the two routers' whole
// forward and backward then agree.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tests/cpp/problem.hpp"

namespace {

using moe_test::Problem;

// Logits of every token: offset + (a small random part), through a feature that is 1 in
// every row and a router row of `offset`.
template <typename S>
void shift_logits(Problem<S>& p, double offset) {
  for (int64_t t = 0; t < p.T; ++t) p.x[t * p.d] = S(1);
  for (int64_t e = 0; e < p.E; ++e) p.router[e] = S(offset);
  p.bind();
}

template <typename S>
bool all_finite(const std::vector<S>& v) {
  for (S value : v)
    if (!std::isfinite(static_cast<double>(value))) return false;
  return true;
}

template <typename S>
void expect_close(const std::vector<S>& a, const std::vector<S>& b, double tolerance,
                  const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(static_cast<double>(a[i]), static_cast<double>(b[i]), tolerance)
        << what << "[" << i << "]";
}

template <typename S>
struct Pair {
  Problem<S> sigmoid_router, softmax_router;
  Pair(moe_layer_config_t c, double offset)
      : sigmoid_router(with_router(c, MOE_ROUTER_SIGMOID), 16, 7),
        softmax_router(with_router(c, MOE_ROUTER_SOFTMAX), 16, 7) {
    shift_logits(sigmoid_router, offset);
    shift_logits(softmax_router, offset);
  }
  static moe_layer_config_t with_router(moe_layer_config_t c, moe_router_t router) {
    c.router = router;
    return c;
  }
};

moe_layer_config_t extreme_config() {
  moe_layer_config_t c = moe_test::make_config(6, 8, 5, 2);
  c.renormalize = 1;
  c.load_balance_alpha = 0.01;
  c.router_z_loss_coef = 1e-7;  // lse^2 is ~1e6 here
  return c;
}

template <typename S>
void run_far_below_zero(double tolerance) {
  for (double offset : {-800.0, -5000.0}) {
    SCOPED_TRACE(offset);
    Pair<S> pair(extreme_config(), offset);
    Problem<S>& sig = pair.sigmoid_router;
    Problem<S>& soft = pair.softmax_router;
    moe::Context a = sig.forward();
    sig.backward(a);
    moe::Context b = soft.forward();
    soft.backward(b);

    EXPECT_EQ(a.stats(sig.E).summary.nonfinite_rows, 0);
    EXPECT_TRUE(all_finite(sig.y) && all_finite(sig.dx) && all_finite(sig.g_router));
    EXPECT_TRUE(std::isfinite(a.losses().aux_loss));
    EXPECT_EQ(a.routing().experts, b.routing().experts);
    EXPECT_NEAR(a.losses().aux_loss, b.losses().aux_loss, tolerance);
    expect_close(sig.y, soft.y, tolerance, "y");
    expect_close(sig.dx, soft.dx, tolerance, "dx");
    expect_close(sig.g_router, soft.g_router, tolerance, "router gradient");
    expect_close(sig.g_w1, soft.g_w1, tolerance, "w1 gradient");
  }
}

TEST(RouterExtremes, SigmoidFarBelowZeroIsTheSoftmaxRouterF64) {
  run_far_below_zero<double>(1e-12);
}

TEST(RouterExtremes, SigmoidFarBelowZeroIsTheSoftmaxRouterF32) {
  run_far_below_zero<float>(2e-5);
}

// Far above 37 every sigmoid(u) is exactly 1: the keys tie, and the choice must still
// follow the scores (the softmax router's choice), not the lowest expert ids.
TEST(RouterExtremes, SaturatedSigmoidKeysStillFollowTheScores) {
  Pair<double> pair(extreme_config(), 200.0);
  moe::Context a = pair.sigmoid_router.forward(false);
  moe::Context b = pair.softmax_router.forward(false);
  const auto chosen = a.routing();
  EXPECT_EQ(chosen.experts, b.routing().experts);
  for (float gate : chosen.gates) EXPECT_FLOAT_EQ(gate, 0.5f);  // s = 1 for both, renormalized
  EXPECT_TRUE(all_finite(pair.sigmoid_router.y));
}

// Softmax renormalized over experts whose P underflowed to 0 (the selection bias or the
// noise chose them) was 0/0 as well.
TEST(RouterExtremes, RenormalizedGatesOfExpertsWithNoProbabilityAreFinite) {
  moe_layer_config_t c = extreme_config();
  c.router = MOE_ROUTER_SOFTMAX;
  c.router_noise_type = MOE_NOISE_GAUSSIAN;
  c.router_noise_std_init = 1e5;  // the noise, not the scores, picks the experts
  Problem<double> p(c, 16, 3);
  for (int64_t e = 0; e < p.E; ++e) p.router[e] = e == 0 ? 0.0 : -2000.0 * static_cast<double>(e);
  for (int64_t t = 0; t < p.T; ++t) p.x[t * p.d] = 1.0;
  p.bind();
  moe::Context ctx = p.forward();
  p.backward(ctx);
  EXPECT_TRUE(all_finite(p.y) && all_finite(p.dx) && all_finite(p.g_router));
  for (float gate : ctx.routing().gates) EXPECT_TRUE(std::isfinite(gate));
}

// Finite float64 logits that overflow once divided by the temperature have no scores:
// the rows are counted as non-finite and routed nowhere, not turned into NaN.
TEST(RouterExtremes, ScoresThatOverflowAreNonFiniteRows) {
  for (moe_router_t router : {MOE_ROUTER_SOFTMAX, MOE_ROUTER_SIGMOID, MOE_ROUTER_EXPERT_CHOICE}) {
    SCOPED_TRACE(router);
    moe_layer_config_t c = extreme_config();
    c.router = router;
    c.router_temp_init = c.router_temp_final = 1e-6;
    c.router_z_loss_coef = 0.0;
    Problem<double> p(c, 4, 5);
    for (int64_t t = 0; t < p.T; ++t) p.x[t * p.d] = t < 2 ? 1e305 : 0.0;  // 1e305 / 1e-6 overflows
    for (int64_t e = 0; e < p.E; ++e) p.router[e] = 1.0;
    p.bind();
    moe::Context ctx = p.forward();
    p.backward(ctx);
    EXPECT_EQ(ctx.stats(p.E).summary.nonfinite_rows, 2);
    EXPECT_TRUE(all_finite(p.y) && all_finite(p.dx) && all_finite(p.g_router));
    for (int64_t i = 0; i < 2 * p.d; ++i) EXPECT_EQ(p.y[i], 0.0);
  }
}

// Float64 logits past about 1e154 overflow the z-loss's square (lse^2): such a row has no
// score either, instead of an Inf z-loss and an Inf dx.
TEST(RouterExtremes, LogitsWhoseZLossOverflowsAreNonFiniteRows) {
  moe_layer_config_t c = extreme_config();
  c.router_z_loss_coef = 1e-3;
  Problem<double> p(c, 4, 5);
  for (int64_t t = 0; t < p.T; ++t) p.x[t * p.d] = t == 0 ? 1e200 : 0.0;
  for (int64_t e = 0; e < p.E; ++e) p.router[e] = 1.0;
  p.bind();
  moe::Context ctx = p.forward();
  p.backward(ctx);
  EXPECT_EQ(ctx.stats(p.E).summary.nonfinite_rows, 1);
  EXPECT_TRUE(std::isfinite(ctx.losses().z_loss));
  EXPECT_TRUE(all_finite(p.y) && all_finite(p.dx) && all_finite(p.g_router));
}

}  // namespace
