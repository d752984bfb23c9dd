// Capacity: served <= C, dropped = sum max(0, d - C) exactly, drop policies, padding,
// and a huge capacity factor giving the same bits as dropless.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "problem.hpp"

namespace {

using moe_test::make_config;
using moe_test::Problem;

moe_layer_config_t capacity_config(double factor, moe_drop_policy_t policy) {
  moe_layer_config_t c = make_config(8, 12, 6, 2);
  c.capacity_factor = factor;
  c.drop_policy = policy;
  return c;
}

class CapacityPolicy : public ::testing::TestWithParam<moe_drop_policy_t> {};

TEST_P(CapacityPolicy, ServedNeverExceedsCapacityAndDropsAreExact) {
  for (double factor : {0.5, 0.75, 1.0, 1.25}) {
    Problem<float> p(capacity_config(factor, GetParam()), 97, 7);
    moe::Context ctx = p.forward();
    const auto s = ctx.stats(p.E);
    const int64_t C = static_cast<int64_t>(std::ceil(factor * 97 * 2 / 6.0));
    EXPECT_EQ(s.summary.capacity, C);
    int64_t expected_dropped = 0, demand_total = 0;
    for (int64_t e = 0; e < p.E; ++e) {
      EXPECT_LE(s.served[e], C);
      EXPECT_EQ(s.served[e], std::min(s.demand[e], C));
      expected_dropped += std::max<int64_t>(0, s.demand[e] - C);
      demand_total += s.demand[e];
    }
    EXPECT_EQ(demand_total, 97 * 2);
    EXPECT_EQ(s.summary.dropped_total, expected_dropped);
    // The per-slot dropped flags agree with the counts.
    const auto r = ctx.routing();
    EXPECT_EQ(std::count(r.dropped.begin(), r.dropped.end(), 1), expected_dropped);
    if (factor <= 0.75) {
      EXPECT_GT(expected_dropped, 0) << "factor " << factor << " drops nothing";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, CapacityPolicy,
                         ::testing::Values(MOE_DROP_POSITION, MOE_DROP_PROBABILITY));

TEST(Capacity, PositionPolicyKeepsEarliestTokens) {
  Problem<float> p(capacity_config(0.5, MOE_DROP_POSITION), 60, 3);
  const auto r = p.forward().routing();
  // For each expert, every kept copy comes from an earlier token than every dropped one.
  for (int64_t e = 0; e < p.E; ++e) {
    int64_t last_kept = -1, first_dropped = 1 << 30;
    for (int64_t t = 0; t < p.T; ++t)
      for (int64_t j = 0; j < 2; ++j)
        if (r.experts[t * 2 + j] == e) {
          if (r.dropped[t * 2 + j]) {
            first_dropped = std::min<int64_t>(first_dropped, t);
          } else {
            last_kept = std::max<int64_t>(last_kept, t);
          }
        }
    EXPECT_LT(last_kept, first_dropped) << "expert " << e;
  }
}

TEST(Capacity, ProbabilityPolicyKeepsHighestGates) {
  Problem<float> p(capacity_config(0.5, MOE_DROP_PROBABILITY), 60, 3);
  const auto r = p.forward().routing();
  for (int64_t e = 0; e < p.E; ++e) {
    float min_kept = 2.f, max_dropped = -1.f;
    for (size_t c = 0; c < r.experts.size(); ++c)
      if (r.experts[c] == e) {
        if (r.dropped[c]) {
          max_dropped = std::max(max_dropped, r.gates[c]);
        } else {
          min_kept = std::min(min_kept, r.gates[c]);
        }
      }
    if (max_dropped >= 0) {
      EXPECT_GE(min_kept, max_dropped) << "expert " << e;
    }
  }
}

TEST(Capacity, DroppedCopiesContributeNothing) {
  // With every copy dropped (C = 0 cannot be configured; use a token whose experts are
  // full), y of a fully dropped token is exactly zero.
  Problem<float> p(capacity_config(0.1, MOE_DROP_POSITION), 50, 11);
  moe::Context ctx = p.forward();
  const auto r = ctx.routing();
  int fully_dropped = 0;
  for (int64_t t = 0; t < p.T; ++t) {
    if (!(r.dropped[t * 2] && r.dropped[t * 2 + 1])) continue;
    ++fully_dropped;
    for (int64_t i = 0; i < p.d; ++i) EXPECT_EQ(p.y[t * p.d + i], 0.f);
  }
  EXPECT_GT(fully_dropped, 0);
}

TEST(Capacity, HugeCapacityFactorGivesTheSameBitsAsDropless) {
  Problem<float> dropless(capacity_config(0.0, MOE_DROP_POSITION), 77, 5);
  Problem<float> huge(capacity_config(1e6, MOE_DROP_POSITION), 77, 5);
  moe::Context a = dropless.forward(), b = huge.forward();
  dropless.backward(a);
  huge.backward(b);
  moe_test::expect_same_results(dropless, huge);
  EXPECT_EQ(b.stats(6).summary.dropped_total, 0);
}

TEST(Capacity, PaddingToCapacityChangesNoResult) {
  moe_layer_config_t c = capacity_config(1.25, MOE_DROP_POSITION);
  c.expert_bias = 1;  // padded rows see b1, b2: they must still contribute nothing
  Problem<float> plain(c, 64, 9);
  c.pad_to_capacity = 1;
  Problem<float> padded(c, 64, 9);
  moe::Context a = plain.forward(), b = padded.forward();
  plain.backward(a);
  padded.backward(b);
  moe_test::expect_same_results(plain, padded);
}

TEST(Capacity, DroplessCapacityIsMaxDemand) {
  Problem<float> p(capacity_config(0.0, MOE_DROP_POSITION), 40, 2);
  const auto s = p.forward().stats(p.E);
  EXPECT_EQ(s.summary.capacity, *std::max_element(s.demand.begin(), s.demand.end()));
  EXPECT_EQ(s.summary.dropped_total, 0);
}

// C is the ceiling of the factor as written in decimal: 1.1 * 25 * 2 / 5 is 11, though
// in doubles it is 11.000000000000002 (once rounded up to 12). Expected values are worked
// by hand; a factor past every copy of the batch gives C = T*k, not an overflowing C.
TEST(Capacity, RoundsTheDecimalFactorExactly) {
  struct Case {
    double factor;
    int64_t tokens, top_k, experts, capacity;
  } cases[] = {{1.1, 25, 2, 5, 11}, {1.1, 26, 2, 5, 12},  {0.3, 10, 1, 3, 1},  {0.7, 30, 2, 6, 7},
               {1.2, 50, 1, 6, 10}, {1.25, 97, 2, 6, 41}, {1e6, 40, 2, 4, 80}, {2.0, 1, 1, 8, 1}};
  for (const Case& k : cases) {
    SCOPED_TRACE(testing::Message()
                 << k.factor << " * " << k.tokens << " * " << k.top_k << " / " << k.experts);
    moe_layer_config_t c = make_config(4, 4, k.experts, k.top_k);
    c.capacity_factor = k.factor;
    Problem<float> p(c, k.tokens, 1);
    EXPECT_EQ(p.forward().stats(p.E).summary.capacity, k.capacity);
  }
}

}  // namespace
