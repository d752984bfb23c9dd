// moe_placement_from_load against cases worked by hand from DeepSeek's EPLB procedure
// (replicate the largest load per replica, then pack heaviest first onto the least
// loaded rank with room), and moe_layer_expert_load without a communicator.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "moe/moe.hpp"

namespace {

struct Result {
  moe_status_t status;
  std::vector<int32_t> table;
  double before = 0, after = 0;
};

Result place(const std::vector<double>& load, int32_t world, int64_t slots, int32_t nodes = 1) {
  Result r;
  r.table.assign(static_cast<size_t>(slots), -7);
  r.status = moe_placement_from_load(load.data(), static_cast<int64_t>(load.size()), world, slots,
                                     nodes, r.table.data(), &r.before, &r.after);
  return r;
}

TEST(PlacementFromLoad, ReplicatesTheHotExpertAndPacksBalanced) {
  // load 8,4,2,2 on 2 ranks, 6 slots: e0 gets a second replica (8 > 4), then e0 and e1
  // tie at 4 per replica; e0 may not have a third (2 ranks), so e1 gets it. Replicas
  // heaviest first: e0 4 -> r0, e0 4 -> r1, e1 2 -> r0 (tie), e1 2 -> r1, e2 2 -> r0,
  // e3 2 -> r1: loads 8 and 8. Blocks before: {e0,e1} 12, {e2,e3} 4, max/mean 1.5.
  const Result r = place({8, 4, 2, 2}, 2, 6);
  ASSERT_EQ(r.status, MOE_STATUS_SUCCESS) << moe_last_error();
  EXPECT_EQ(r.table, (std::vector<int32_t>{0, 1, 2, 0, 1, 3}));
  EXPECT_DOUBLE_EQ(r.before, 1.5);
  EXPECT_DOUBLE_EQ(r.after, 1.0);
}

TEST(PlacementFromLoad, WithoutRedundantSlotsOnlyPacks) {
  // 4 experts on 2 ranks, 2 slots each: 6 -> r0, 5 -> r1, 3 -> r1 (5 < 6), 1 -> r0.
  const Result r = place({6, 1, 5, 3}, 2, 4);
  ASSERT_EQ(r.status, MOE_STATUS_SUCCESS) << moe_last_error();
  EXPECT_EQ(r.table, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_DOUBLE_EQ(r.before, 8.0 / 7.5);  // blocks {6,1} 7 and {5,3} 8
  EXPECT_DOUBLE_EQ(r.after, 8.0 / 7.5);   // packed {6,1} 7 and {5,3} 8: the same here
}

TEST(PlacementFromLoad, HierarchicalKeepsExpertsInsideTheirNode) {
  // 2 nodes of 2 ranks, 8 experts, 12 slots: whole experts go to nodes first (balanced:
  // 4 each), then each node replicates its own into its 6 slots. No expert spans nodes.
  const std::vector<double> load = {20, 1, 1, 1, 1, 1, 1, 10};
  const Result r = place(load, 4, 12, 2);
  ASSERT_EQ(r.status, MOE_STATUS_SUCCESS) << moe_last_error();
  std::vector<int> node_of(8, -1);
  for (int64_t i = 0; i < 12; ++i) {
    const int32_t e = r.table[i];
    ASSERT_GE(e, 0);
    const int node = static_cast<int>(i / 6);
    EXPECT_TRUE(node_of[e] == -1 || node_of[e] == node) << "expert " << e << " spans nodes";
    node_of[e] = node;
  }
  EXPECT_NE(node_of[0], node_of[7]);  // the two heaviest go to different nodes
  EXPECT_LT(r.after, r.before);
}

TEST(PlacementFromLoad, EqualLoadStaysBalanced) {
  const Result r = place(std::vector<double>(16, 3.0), 4, 16);
  ASSERT_EQ(r.status, MOE_STATUS_SUCCESS);
  EXPECT_DOUBLE_EQ(r.before, 1.0);
  EXPECT_DOUBLE_EQ(r.after, 1.0);
  const Result none = place(std::vector<double>(4, 0.0), 2, 4);  // no load at all
  ASSERT_EQ(none.status, MOE_STATUS_SUCCESS);
  EXPECT_DOUBLE_EQ(none.after, 1.0);
}

TEST(PlacementFromLoad, HugeLoadsDoNotOverflowTheImbalance) {
  const Result r = place({1e308, 1e308, 1.0, 1.0}, 2, 4);
  ASSERT_EQ(r.status, MOE_STATUS_SUCCESS) << moe_last_error();
  EXPECT_DOUBLE_EQ(r.before, 2.0);  // both huge experts on rank 0
  EXPECT_DOUBLE_EQ(r.after, 1.0);   // one on each rank
}

TEST(PlacementFromLoad, RefusesBadInputAndWritesNothing) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const auto& [load, world, slots, nodes] :
       std::vector<std::tuple<std::vector<double>, int32_t, int64_t, int32_t>>{
           {{1, -1}, 2, 2, 1},       // negative load
           {{1, nan}, 2, 2, 1},      // not finite
           {{1, 1, 1}, 2, 2, 1},     // fewer slots than experts
           {{1, 1, 1}, 2, 5, 1},     // slots not a multiple of the world
           {{1, 1, 1, 1}, 4, 4, 3},  // nodes not dividing the world
           {{1, 1, 1, 1}, 0, 4, 1},  // no ranks
           {{1, 1}, 2, 6, 1},        // a third replica of an expert on 2 ranks
       }) {
    const Result r = place(load, world, slots, nodes);
    EXPECT_EQ(r.status, MOE_STATUS_INVALID_ARGUMENT) << "world " << world << " slots " << slots;
    EXPECT_NE(std::string(moe_last_error()), "");
    for (int32_t v : r.table) EXPECT_EQ(v, -7);
  }
  int32_t table[2];
  EXPECT_EQ(moe_placement_from_load(nullptr, 2, 1, 2, 1, table, nullptr, nullptr),
            MOE_STATUS_NULL_POINTER);
  const double load[2] = {1, 2};
  EXPECT_EQ(moe_placement_from_load(load, 2, 1, 2, 1, nullptr, nullptr, nullptr),
            MOE_STATUS_NULL_POINTER);
}

TEST(ExpertLoad, CountsTrainingDemandOnlyAndResets) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = 8;
  c.d_ff = 8;
  c.num_experts = 4;
  c.top_k = 2;
  c.capacity_factor = 0.5;  // drops: the load is the demand before them
  c.backend = "cpu_ref";
  moe::Layer layer(c);
  std::vector<float> router(8 * 4, 0.1f), w1(4 * 8 * 8, 0.01f), w2(4 * 8 * 8, 0.01f);
  for (int i = 0; i < 8; ++i) router[i * 4 + 2] = 1.0f;  // expert 2 first for positive x
  moe_weights_t w = MOE_WEIGHTS_INIT;
  w.router = moe::tensor(router.data(), MOE_DTYPE_F32, {8, 4});
  w.w1 = moe::tensor(w1.data(), MOE_DTYPE_F32, {4, 8, 8});
  w.w2 = moe::tensor(w2.data(), MOE_DTYPE_F32, {4, 8, 8});
  layer.set_weights(w);
  std::vector<float> x(10 * 8, 1.0f), y(10 * 8);
  moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
  fa.x = moe::tensor(x.data(), MOE_DTYPE_F32, {10, 8});
  fa.y = moe::tensor(y.data(), MOE_DTYPE_F32, {10, 8});
  fa.train = 1;
  layer.forward(fa);
  layer.forward(fa);
  fa.train = 0;
  layer.forward(fa);  // evaluation adds nothing
  const std::vector<double> load = layer.expert_load();
  EXPECT_DOUBLE_EQ(load[2], 20.0);  // every token picks expert 2, twice over
  double total = 0;
  for (double l : load) total += l;
  EXPECT_DOUBLE_EQ(total, 40.0);
  EXPECT_EQ(layer.expert_load(true), load);
  EXPECT_EQ(layer.expert_load(), std::vector<double>(4, 0.0));
  double small[3];
  EXPECT_EQ(moe_layer_expert_load(layer.get(), small, 3, 0), MOE_STATUS_SHAPE_MISMATCH);
  // Options and placements need a communicator.
  moe_ep_options_t o = MOE_EP_OPTIONS_INIT;
  EXPECT_EQ(moe_layer_set_ep_options(layer.get(), &o), MOE_STATUS_INVALID_STATE);
  const int32_t table[4] = {0, 1, 2, 3};
  EXPECT_EQ(moe_layer_set_placement(layer.get(), table, 4), MOE_STATUS_INVALID_STATE);
  EXPECT_EQ(moe_layer_get_ep_options(layer.get(), &o), MOE_STATUS_SUCCESS);
  EXPECT_EQ(o.dedup, 0);
}

}  // namespace
