// The NCCL communicator (moe_nccl.h) on one GPU: a single-rank NCCL communicator moves
// device bytes to itself through the all-to-all (uneven sizes, zero sizes), sums host
// doubles, and passes a barrier; bad arguments are refused; a host layer refuses it by
// name; and a cuda layer's expert-parallel pipeline through it matches the layer
// without a communicator.
// Skipped (not passed) where no GPU is present: CI builds it against the toolkit's NCCL.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "moe/moe.h"
#include "moe/moe_nccl.h"
#include "tests/cuda/device_mirror.hpp"

namespace {

class NcclComm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!moe_test::have_gpu()) GTEST_SKIP() << "no CUDA device";
    int device = 0;
    ASSERT_EQ(ncclCommInitAll(&nccl_, 1, &device), ncclSuccess);
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
    ASSERT_EQ(moe_comm_create_nccl(nccl_, stream_, 30.0, &comm_), MOE_STATUS_SUCCESS)
        << moe_last_error();
  }
  void TearDown() override {
    if (comm_) {
      EXPECT_EQ(moe_comm_destroy(comm_), MOE_STATUS_SUCCESS);
    }
    if (stream_) cudaStreamDestroy(stream_);
    if (nccl_) ncclCommDestroy(nccl_);
  }
  ncclComm_t nccl_ = nullptr;
  cudaStream_t stream_ = nullptr;
  moe_comm_t comm_ = nullptr;
};

TEST_F(NcclComm, OneRankMovesDeviceBytesToItself) {
  int32_t rank = -1, world = -1;
  ASSERT_EQ(moe_comm_rank(comm_, &rank, &world), MOE_STATUS_SUCCESS);
  EXPECT_EQ(rank, 0);
  EXPECT_EQ(world, 1);
  for (int64_t bytes : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{1} << 20}) {
    std::vector<unsigned char> host(static_cast<size_t>(bytes)), back(host.size(), 0);
    for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<unsigned char>(i * 7 + 3);
    void *send = nullptr, *recv = nullptr;
    ASSERT_EQ(cudaMalloc(&send, bytes + 1), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&recv, bytes + 1), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(send, host.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    const int64_t counts[1] = {bytes};
    ASSERT_EQ(moe_comm_all_to_all(comm_, send, counts, recv, counts), MOE_STATUS_SUCCESS)
        << moe_last_error();
    ASSERT_EQ(cudaMemcpy(back.data(), recv, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(back, host) << bytes << " bytes";
    cudaFree(send);
    cudaFree(recv);
  }
}

TEST_F(NcclComm, SumsHostDoublesAndPassesABarrier) {
  std::vector<double> values = {1.5, -2.0, 3.25, 0.0, 1e300};
  const std::vector<double> expected = values;  // one rank: the sum is itself
  ASSERT_EQ(moe_comm_all_reduce_sum(comm_, values.data(), 5), MOE_STATUS_SUCCESS)
      << moe_last_error();
  EXPECT_EQ(values, expected);
  EXPECT_EQ(moe_comm_all_reduce_sum(comm_, nullptr, 0), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_comm_barrier(comm_), MOE_STATUS_SUCCESS) << moe_last_error();
}

TEST_F(NcclComm, RefusesBadArgumentsAndStaysUsable) {
  const int64_t negative[1] = {-1};
  EXPECT_EQ(moe_comm_all_to_all(comm_, nullptr, negative, nullptr, negative),
            MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_comm_all_reduce_sum(comm_, nullptr, 3), MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(moe_comm_barrier(comm_), MOE_STATUS_SUCCESS) << moe_last_error();
}

// A host layer cannot stage through device memory: refused by name.
TEST_F(NcclComm, AHostLayerRefusesIt) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = 8;
  c.d_ff = 8;
  c.num_experts = 2;
  c.backend = "cpu_ref";
  moe_layer_t layer = nullptr;
  ASSERT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_SUCCESS) << moe_last_error();
  EXPECT_EQ(moe_layer_set_comm(layer, comm_, nullptr, 0), MOE_STATUS_UNSUPPORTED);
  EXPECT_NE(std::strstr(moe_last_error(), "device memory"), nullptr) << moe_last_error();
  moe_layer_destroy(layer);
}

// The cuda layer's expert-parallel pipeline through NCCL (one rank: every row goes to
// itself through ncclSend/ncclRecv) gives the layer without a communicator's results:
// outputs, dx, every gradient (the router's after moe_layer_reduce_router_grad), losses,
// routing and drops, over three training steps with capacity drops.
TEST_F(NcclComm, ACudaLayerThroughItMatchesTheLayerWithout) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  const int64_t T = 96, d = 32, dff = 48, E = 6;
  c.d_model = d;
  c.d_ff = dff;
  c.num_experts = E;
  c.top_k = 2;
  c.capacity_factor = 1.0;
  c.expert_bias = 1;
  c.load_balance_alpha = 0.01;
  c.router_z_loss_coef = 0.001;
  c.bias_update_rate = 0.01;
  c.activation = MOE_ACTIVATION_SWIGLU;
  c.backend = "cuda";
  const int64_t F = 2 * dff;
  auto values = [](size_t n, uint64_t seed) {
    std::vector<float> v(n);
    uint64_t s = seed;
    for (float& e : v) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      e = static_cast<float>(static_cast<int64_t>(s >> 40) % 2001 - 1000) / 4000.0f;
    }
    return v;
  };
  moe_test::Mirror x(MOE_DTYPE_F32, values(T * d, 1)), dy(MOE_DTYPE_F32, values(T * d, 2)),
      router(MOE_DTYPE_F32, values(d * E, 3)), w1(MOE_DTYPE_F32, values(E * d * F, 4)),
      b1(MOE_DTYPE_F32, values(E * F, 5)), w2(MOE_DTYPE_F32, values(E * dff * d, 6)),
      b2(MOE_DTYPE_F32, values(E * d, 7));
  struct Outcome {
    std::vector<std::vector<float>> tensors;  // y, dx per step, then the gradients
    std::vector<moe_losses_t> losses;
    std::vector<std::vector<int32_t>> experts;
    std::vector<std::vector<uint8_t>> dropped;
  };
  auto run = [&](moe_comm_t comm) {
    Outcome out;
    moe_layer_t layer = nullptr;
    EXPECT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_SUCCESS) << moe_last_error();
    if (comm) {
      EXPECT_EQ(moe_layer_set_comm(layer, comm, nullptr, 0), MOE_STATUS_SUCCESS)
          << moe_last_error();
    }
    moe_weights_t w = MOE_WEIGHTS_INIT;
    w.router = router.tensor({d, E});
    w.w1 = w1.tensor({E, d, F});
    w.b1 = b1.tensor({E, F});
    w.w2 = w2.tensor({E, dff, d});
    w.b2 = b2.tensor({E, d});
    EXPECT_EQ(moe_layer_set_weights(layer, &w), MOE_STATUS_SUCCESS) << moe_last_error();
    moe_test::Mirror y(MOE_DTYPE_F32, std::vector<float>(T * d)),
        dx(MOE_DTYPE_F32, std::vector<float>(T * d)), g_router(MOE_DTYPE_F32, router.host),
        g_w1(MOE_DTYPE_F32, w1.host), g_b1(MOE_DTYPE_F32, b1.host), g_w2(MOE_DTYPE_F32, w2.host),
        g_b2(MOE_DTYPE_F32, b2.host);
    moe_weights_t g = MOE_WEIGHTS_INIT;
    g.router = g_router.tensor({d, E});
    g.w1 = g_w1.tensor({E, d, F});
    g.b1 = g_b1.tensor({E, F});
    g.w2 = g_w2.tensor({E, dff, d});
    g.b2 = g_b2.tensor({E, d});
    for (int step = 0; step < 3; ++step) {
      moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
      fa.x = x.tensor({T, d});
      fa.y = y.tensor({T, d});
      fa.train = 1;
      moe_ctx_t ctx = nullptr;
      EXPECT_EQ(moe_layer_forward(layer, &fa, &ctx), MOE_STATUS_SUCCESS) << moe_last_error();
      moe_backward_args_t ba = MOE_BACKWARD_ARGS_INIT;
      ba.dy = dy.tensor({T, d});
      ba.dx = dx.tensor({T, d});
      ba.grads = g;
      ba.flags = step > 0 ? MOE_BACKWARD_ACCUMULATE : 0u;
      EXPECT_EQ(moe_layer_backward(layer, ctx, &ba), MOE_STATUS_SUCCESS) << moe_last_error();
      out.tensors.push_back(y.download());
      out.tensors.push_back(dx.download());
      moe_losses_t losses = MOE_LOSSES_INIT;
      EXPECT_EQ(moe_ctx_losses(ctx, &losses), MOE_STATUS_SUCCESS);
      out.losses.push_back(losses);
      std::vector<int32_t> experts(T * 2);
      std::vector<uint8_t> dropped(T * 2);
      EXPECT_EQ(moe_ctx_routing(ctx, experts.data(), nullptr, dropped.data()), MOE_STATUS_SUCCESS);
      out.experts.push_back(experts);
      out.dropped.push_back(dropped);
      moe_ctx_destroy(ctx);
    }
    if (comm) {
      EXPECT_EQ(moe_layer_reduce_router_grad(layer, g.router), MOE_STATUS_SUCCESS)
          << moe_last_error();
    }
    for (const moe_test::Mirror* m : {&g_router, &g_w1, &g_b1, &g_w2, &g_b2})
      out.tensors.push_back(m->download());
    if (comm) {
      moe_comm_traffic_t traffic = MOE_COMM_TRAFFIC_INIT;
      EXPECT_EQ(moe_layer_comm_traffic(layer, &traffic, nullptr, 0, 0), MOE_STATUS_SUCCESS);
      EXPECT_GT(traffic.bytes_sent, 0);
      EXPECT_EQ(traffic.bytes_sent, traffic.bytes_received);
    }
    moe_layer_destroy(layer);
    return out;
  };
  const Outcome plain = run(nullptr), through = run(comm_);
  ASSERT_EQ(plain.tensors.size(), through.tensors.size());
  for (size_t i = 0; i < plain.tensors.size(); ++i) {
    const std::vector<float>&a = through.tensors[i], &b = plain.tensors[i];
    ASSERT_EQ(a.size(), b.size());
    for (size_t j = 0; j < a.size(); ++j)
      ASSERT_NEAR(a[j], b[j], 1e-5 * (1 + std::abs(b[j]))) << "tensor " << i << "[" << j << "]";
  }
  for (size_t step = 0; step < plain.losses.size(); ++step) {
    EXPECT_EQ(through.experts[step], plain.experts[step]);
    EXPECT_EQ(through.dropped[step], plain.dropped[step]);
    EXPECT_NEAR(through.losses[step].aux_loss, plain.losses[step].aux_loss, 1e-9);
    EXPECT_NEAR(through.losses[step].z_loss, plain.losses[step].z_loss, 1e-9);
  }
}

}  // namespace
