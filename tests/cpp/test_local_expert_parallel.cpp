// The expert-parallel path on one rank (moe_comm_create_local): counts gathered,
// drops decided, rows exchanged and regrouped, results returned, all through the
// exchange code, and every output, gradient, loss, routing decision and telemetry
// figure bit-identical to the layer without a communicator. (tests/mpi compares 2
// and 4 ranks against one process.) Also: attach/detach rules and traffic counters.
#include <gtest/gtest.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "tests/cpp/problem.hpp"

namespace {

using moe_test::make_config;
using moe_test::Problem;

struct LocalComm {
  LocalComm() { EXPECT_EQ(moe_comm_create_local(&comm), MOE_STATUS_SUCCESS); }
  // Declared before the layers that hold it: it may only go once they are gone.
  ~LocalComm() { EXPECT_EQ(moe_comm_destroy(comm), MOE_STATUS_SUCCESS) << moe_last_error(); }
  moe_comm_t comm = nullptr;
};

class LocalExpertParallel
    : public ::testing::TestWithParam<std::tuple<moe_router_t, double, moe_drop_policy_t>> {};

TEST_P(LocalExpertParallel, MatchesTheLayerWithoutACommunicator) {
  const auto [router, capacity_factor, policy] = GetParam();
  moe_layer_config_t c = make_config(12, 16, 6, 2);
  c.router = router;
  c.capacity_factor = capacity_factor;
  c.drop_policy = policy;
  c.expert_bias = 1;
  c.load_balance_alpha = 0.01;
  c.router_z_loss_coef = 0.001;
  c.bias_update_rate = 0.01;
  c.router_noise_type = MOE_NOISE_GUMBEL;
  c.router_noise_std_init = 0.3;
  LocalComm local;
  Problem<float> plain(c, 37, 5), attached(c, 37, 5);
  attached.layer.set_comm(local.comm);
  EXPECT_EQ(attached.layer.local_experts(), (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
  attached.bind();  // attaching unbinds the weights
  for (int step = 0; step < 3; ++step) {
    moe::Context a = plain.forward(), b = attached.forward();
    const uint32_t flags = step > 0 ? MOE_BACKWARD_ACCUMULATE : 0u;
    plain.backward(a, flags);
    attached.backward(b, flags);
    moe_test::expect_same_results(plain, attached);
    const auto ra = a.routing(), rb = b.routing();
    EXPECT_EQ(ra.experts, rb.experts);
    EXPECT_EQ(ra.dropped, rb.dropped);
    EXPECT_EQ(a.losses().aux_loss, b.losses().aux_loss);
    EXPECT_EQ(a.losses().z_loss, b.losses().z_loss);
  }
  for (const char* metric : {"drop_rate", "load_cv", "gini", "router_entropy_mean", "aux_loss"}) {
    double va = 0, vb = 0;
    int64_t n = 0;
    ASSERT_EQ(
        moe_layer_metric(plain.layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, metric, &va, 1, &n),
        MOE_STATUS_SUCCESS)
        << metric << ": " << moe_last_error();
    ASSERT_EQ(moe_layer_metric(attached.layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, metric, &vb,
                               1, &n),
              MOE_STATUS_SUCCESS);
    EXPECT_EQ(std::memcmp(&va, &vb, sizeof va), 0) << metric << ": " << va << " vs " << vb;
  }
  // The router gradient of one rank is already the sum; the hash router has none.
  const std::vector<float> before = attached.g_router;
  const moe_tensor_t g = moe::tensor(attached.g_router.data(), MOE_DTYPE_F32, {12, 6});
  if (router == MOE_ROUTER_HASH) {
    EXPECT_EQ(moe_layer_reduce_router_grad(attached.layer.get(), g), MOE_STATUS_INVALID_ARGUMENT);
  } else {
    attached.layer.reduce_router_grad(g);
    EXPECT_EQ(attached.g_router, before);
  }

  // Three forwards and backwards: every kept copy travelled to rank 0 and back.
  const moe::Layer::Traffic t = attached.layer.traffic();
  ASSERT_EQ(t.peers.size(), 1u);
  EXPECT_EQ(t.totals.rank, 0);
  EXPECT_EQ(t.totals.world, 1);
  EXPECT_GT(t.peers[0].tokens_sent, 0);
  EXPECT_EQ(t.peers[0].tokens_sent, t.peers[0].tokens_received);
  EXPECT_GE(t.peers[0].bytes_sent,
            4 * t.peers[0].tokens_sent * 12 * 4);  // rows there and back, twice
  EXPECT_EQ(attached.layer.traffic(true).totals.exchanges, t.totals.exchanges);
  EXPECT_EQ(attached.layer.traffic().totals.exchanges, 0);
  const moe::Layer::Traffic none = plain.layer.traffic();
  EXPECT_EQ(none.totals.rank, -1);
  EXPECT_TRUE(none.peers.empty());
}

INSTANTIATE_TEST_SUITE_P(
    RoutersAndCapacity, LocalExpertParallel,
    ::testing::Values(std::make_tuple(MOE_ROUTER_SOFTMAX, 0.0, MOE_DROP_POSITION),
                      std::make_tuple(MOE_ROUTER_SOFTMAX, 0.8, MOE_DROP_POSITION),
                      std::make_tuple(MOE_ROUTER_SIGMOID, 0.8, MOE_DROP_PROBABILITY),
                      std::make_tuple(MOE_ROUTER_HASH, 1.0, MOE_DROP_PROBABILITY)));

TEST(LocalExpertParallelRules, AttachingAndDetaching) {
  moe_layer_config_t c = make_config(8, 8, 4, 1);
  LocalComm local;
  Problem<float> p(c, 5, 1);
  p.layer.set_comm(local.comm);
  // Weights were unbound by the attachment: forward refuses until they are bound again.
  moe_ctx_t ctx = nullptr;
  const moe_forward_args_t args = p.forward_args();
  EXPECT_EQ(moe_layer_forward(p.layer.get(), &args, &ctx), MOE_STATUS_INVALID_STATE);
  EXPECT_EQ(moe_comm_destroy(local.comm), MOE_STATUS_INVALID_STATE);
  EXPECT_NE(std::strstr(moe_last_error(), "detach"), nullptr);
  const int32_t owner_out_of_range[4] = {0, 0, 1, 0};
  EXPECT_EQ(moe_layer_set_comm(p.layer.get(), local.comm, owner_out_of_range, 4),
            MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_layer_set_comm(p.layer.get(), nullptr, owner_out_of_range, 4),
            MOE_STATUS_INVALID_ARGUMENT);
  p.layer.set_comm(nullptr);  // detach: the communicator may go now
  p.bind();
  moe::Context again = p.forward();
  EXPECT_EQ(p.layer.stage_profile().exchange, 0.0);
}

}  // namespace
