// Finite-difference gradient checks in double precision: every learned router x every
// activation x dropless and capacity modes, with top-k margins well above the step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

#include "problem.hpp"

namespace {

using moe_test::Problem;

constexpr double kStep = 1e-6;
constexpr double kMinMargin = 1e-3;  // >> kStep * |dz/dtheta|

// Smallest gap, over tokens (or experts, for expert choice), between the last selected
// and the first unselected score: routing is stable under perturbations far below it.
double selection_margin(Problem<double>& p) {
  const int64_t T = p.T, d = p.d, E = p.E, k = p.config.top_k;
  std::vector<double> z(T * E, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = 0; i < d; ++i) z[t * E + e] += p.x[t * d + i] * p.router[i * E + e];
  double margin = 1e30;
  std::vector<double> v;
  if (p.config.router == MOE_ROUTER_EXPERT_CHOICE) {
    std::vector<double> prob(T * E);
    for (int64_t t = 0; t < T; ++t) {
      const double m = *std::max_element(&z[t * E], &z[t * E] + E);
      double s = 0;
      for (int64_t e = 0; e < E; ++e) s += (prob[t * E + e] = std::exp(z[t * E + e] - m));
      for (int64_t e = 0; e < E; ++e) prob[t * E + e] /= s;
    }
    const int64_t C =
        std::min<int64_t>(T, static_cast<int64_t>(std::ceil(1.0 * static_cast<double>(T * k) / E)));
    for (int64_t e = 0; e < E; ++e) {
      v.clear();
      for (int64_t t = 0; t < T; ++t) v.push_back(prob[t * E + e]);
      std::sort(v.rbegin(), v.rend());
      if (C < T) margin = std::min(margin, v[C - 1] - v[C]);
    }
    return margin;
  }
  for (int64_t t = 0; t < T; ++t) {
    v.assign(&z[t * E], &z[t * E] + E);
    std::sort(v.rbegin(), v.rend());
    if (k < E) margin = std::min(margin, v[k - 1] - v[k]);
  }
  return margin;
}

using Case = std::tuple<moe_router_t, moe_activation_t, bool /*capacity*/>;

class GradientCheck : public ::testing::TestWithParam<Case> {};

TEST_P(GradientCheck, MatchesCentralDifferences) {
  const auto [router, activation, capacity] = GetParam();
  moe_layer_config_t cfg = moe_test::make_config(6, 5, 4, 2);
  cfg.router = router;
  cfg.activation = activation;
  cfg.expert_bias = 1;
  cfg.capacity_factor = capacity ? 1.0 : 0.0;
  cfg.load_balance_alpha = 0.1;
  cfg.router_z_loss_coef = 0.01;
  cfg.router_temp_init = cfg.router_temp_final = 1.3;

  // Choose a seed whose routing has comfortable margins.
  uint64_t seed = 1;
  for (;; ++seed) {
    Problem<double> probe(cfg, 10, seed);
    if (selection_margin(probe) > kMinMargin) break;
    ASSERT_LT(seed, 200u) << "no seed with margin > " << kMinMargin;
  }
  Problem<double> p(cfg, 10, seed);
  moe::Context ctx = p.forward(false);
  const auto routing = ctx.routing();
  if (capacity && router != MOE_ROUTER_EXPERT_CHOICE) {
    const auto stats = ctx.stats(p.E);
    // Capacity mode must really drop something here, or it tests nothing new.
    EXPECT_GT(stats.summary.dropped_total, 0);
  }
  p.backward(ctx);

  auto check = [&](std::vector<double>& param, const std::vector<double>& grad,
                   const std::string& name, bool rebind) {
    double worst = 0.0, scale = 0.0;
    for (size_t i = 0; i < param.size(); ++i) {
      const double saved = param[i];
      param[i] = saved + kStep;
      if (rebind) p.bind();
      const double up = p.loss();
      ASSERT_EQ(p.forward(false).routing().experts, routing.experts) << name << " moved routing";
      param[i] = saved - kStep;
      if (rebind) p.bind();
      const double down = p.loss();
      param[i] = saved;
      if (rebind) p.bind();
      const double numeric = (up - down) / (2 * kStep);
      worst = std::max(worst, std::abs(numeric - grad[i]));
      scale = std::max(scale, std::abs(numeric));
    }
    EXPECT_LE(worst, 1e-6 * std::max(scale, 1.0))
        << name << ": max abs error " << worst << " at gradient scale " << scale;
  };
  check(p.x, p.dx, "dx", false);
  check(p.router, p.g_router, "d router", true);
  check(p.w1, p.g_w1, "d w1", true);
  check(p.b1, p.g_b1, "d b1", true);
  check(p.w2, p.g_w2, "d w2", true);
  check(p.b2, p.g_b2, "d b2", true);
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  static const char* routers[] = {"softmax", "sigmoid", "hash", "expert_choice"};
  static const char* acts[] = {"relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu"};
  return std::string(routers[std::get<0>(info.param)]) + "_" + acts[std::get<1>(info.param)] +
         (std::get<2>(info.param) ? "_capacity" : "_dropless");
}

INSTANTIATE_TEST_SUITE_P(
    AllLearnedRouters, GradientCheck,
    ::testing::Combine(
        ::testing::Values(MOE_ROUTER_SOFTMAX, MOE_ROUTER_SIGMOID, MOE_ROUTER_EXPERT_CHOICE),
        ::testing::Values(MOE_ACTIVATION_RELU, MOE_ACTIVATION_GELU, MOE_ACTIVATION_GELU_TANH,
                          MOE_ACTIVATION_SILU, MOE_ACTIVATION_SWIGLU, MOE_ACTIVATION_GEGLU),
        ::testing::Bool()),
    case_name);

}  // namespace
