// The cuda layer without host synchronisation: with static shapes (capacity mode and
// pad_to_capacity) forward and backward can be captured into a CUDA graph, whose replay
// must give the eager call's bits on any input; the counts the eager call leaves for
// later still reach losses, telemetry and state; and telemetry samples every interval-th
// call on the GPU as on the host.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "moe/moe.h"
#include "moe/moe.hpp"
#include "moe/moe_cuda.h"
#include "tests/cuda/device_mirror.hpp"

namespace {

using moe_test::Mirror;
using moe_test::randn;

constexpr int64_t kT = 96, kD = 32, kFF = 48, kE = 4, kK = 2;

moe_layer_config_t static_config(const char* backend) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = kD;
  c.d_ff = kFF;
  c.num_experts = kE;
  c.top_k = kK;
  c.backend = backend;
  c.capacity_factor = 1.0;  // drops at this T: the capacity matters
  c.pad_to_capacity = 1;
  c.router_z_loss_coef = 1e-3;
  return c;
}

// One layer with its device tensors; forward and backward on the layer's stream.
struct GraphLayer {
  std::mt19937_64 rng{7};
  Mirror x{MOE_DTYPE_F32, randn(kT*kD, 1, rng)}, y{MOE_DTYPE_F32, std::vector<float>(kT*kD)};
  Mirror router{MOE_DTYPE_F32, randn(kD*kE, 0.3, rng)},
      w1{MOE_DTYPE_F32, randn(kE*kD*kFF, 0.2, rng)};
  Mirror w2{MOE_DTYPE_F32, randn(kE* kFF* kD, 0.2, rng)};
  Mirror dy{MOE_DTYPE_F32, randn(kT*kD, 1, rng)}, dx{MOE_DTYPE_F32, std::vector<float>(kT*kD)};
  Mirror g_router{MOE_DTYPE_F32, std::vector<float>(kD*kE)},
      g_w1{MOE_DTYPE_F32, std::vector<float>(kE*kD*kFF)},
      g_w2{MOE_DTYPE_F32, std::vector<float>(kE*kFF*kD)};
  moe::Layer layer;
  cudaStream_t stream = nullptr;

  explicit GraphLayer(const moe_layer_config_t& config) : layer(config) {
    moe_weights_t w = MOE_WEIGHTS_INIT;
    w.router = router.tensor({kD, kE});
    w.w1 = w1.tensor({kE, kD, kFF});
    w.w2 = w2.tensor({kE, kFF, kD});
    layer.set_weights(w);
    EXPECT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    EXPECT_EQ(moe_layer_set_cuda_stream(layer.get(), stream), MOE_STATUS_SUCCESS);
  }
  ~GraphLayer() {
    cudaStreamSynchronize(stream);
    moe_layer_set_cuda_stream(layer.get(), nullptr);
    cudaStreamDestroy(stream);
  }

  moe_status_t forward(moe_ctx_t* ctx, int32_t train = 0) {
    moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
    a.x = x.tensor({kT, kD});
    a.y = y.tensor({kT, kD});
    a.train = train;
    return moe_layer_forward(layer.get(), &a, ctx);
  }
  moe_status_t backward(moe_ctx_t ctx) {
    moe_backward_args_t b = MOE_BACKWARD_ARGS_INIT;
    b.dy = dy.tensor({kT, kD});
    b.dx = dx.tensor({kT, kD});
    b.grads.router = g_router.tensor({kD, kE});
    b.grads.w1 = g_w1.tensor({kE, kD, kFF});
    b.grads.w2 = g_w2.tensor({kE, kFF, kD});
    b.aux_loss_grad = 1.0;
    b.z_loss_grad = 1.0;
    return moe_layer_backward(layer.get(), ctx, &b);
  }
  // One forward and backward, the context released: all of it in stream order.
  void step(int32_t train = 0) {
    moe_ctx_t ctx = nullptr;
    ASSERT_EQ(forward(&ctx, train), MOE_STATUS_SUCCESS) << moe_last_error();
    ASSERT_EQ(backward(ctx), MOE_STATUS_SUCCESS) << moe_last_error();
    ASSERT_EQ(moe_ctx_destroy(ctx), MOE_STATUS_SUCCESS);
  }
  std::vector<std::vector<float>> outputs() const {
    cudaStreamSynchronize(stream);
    return {y.download(), dx.download(), g_router.download(), g_w1.download(), g_w2.download()};
  }
  void poison_outputs() {
    for (const Mirror* m : {&y, &dx, &g_router, &g_w1, &g_w2})
      EXPECT_EQ(cudaMemsetAsync(m->device, 0xff, m->bytes(), stream), cudaSuccess);  // NaN
  }
};

TEST(CudaGraph, CapturedStepReplaysTheEagerStep) {
  SKIP_WITHOUT_GPU();
  GraphLayer g(static_config("cuda"));
  g.step();  // warm-up: cuBLAS and the memory pool
  g.step();
  const auto eager = g.outputs();
  int64_t step_before = -1, step_after = -1;
  ASSERT_EQ(moe_layer_get_step(g.layer.get(), &step_before), MOE_STATUS_SUCCESS);

  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(g.stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  g.step(1);  // a training call: eagerly it would advance the step
  ASSERT_EQ(cudaStreamEndCapture(g.stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(moe_layer_get_step(g.layer.get(), &step_after), MOE_STATUS_SUCCESS);
  EXPECT_EQ(step_after, step_before) << "a captured call changes no host state";

  const std::vector<float> eager_x = g.x.host;
  for (int replay = 0; replay < 3; ++replay) {
    SCOPED_TRACE("replay " + std::to_string(replay));
    if (replay == 2) {  // new inputs: the graph computes, it does not repeat
      g.x.host = randn(kT * kD, 1.5, g.rng);
      g.x.upload();
      g.step();
    }
    const auto want = replay == 2 ? g.outputs() : eager;
    g.poison_outputs();
    ASSERT_EQ(cudaGraphLaunch(exec, g.stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(g.stream), cudaSuccess);
    const auto got = g.outputs();
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "output " << i;
  }
  // An eager context still waiting for its counts across a replay keeps its own counts:
  // the replay writes none into the layer's read-back.
  g.x.host = eager_x;
  g.x.upload();
  moe_ctx_t kept = nullptr;
  ASSERT_EQ(g.forward(&kept), MOE_STATUS_SUCCESS);
  moe_losses_t before = MOE_LOSSES_INIT;
  g.x.host = randn(kT * kD, 3.0, g.rng);  // the replay routes other tokens
  g.x.upload();
  ASSERT_EQ(cudaGraphLaunch(exec, g.stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(g.stream), cudaSuccess);
  ASSERT_EQ(moe_ctx_losses(kept, &before), MOE_STATUS_SUCCESS);
  ASSERT_EQ(moe_ctx_destroy(kept), MOE_STATUS_SUCCESS);
  g.x.host = eager_x;
  g.x.upload();
  moe_ctx_t again = nullptr;
  ASSERT_EQ(g.forward(&again), MOE_STATUS_SUCCESS);
  moe_losses_t after = MOE_LOSSES_INIT;
  ASSERT_EQ(moe_ctx_losses(again, &after), MOE_STATUS_SUCCESS);
  ASSERT_EQ(moe_ctx_destroy(again), MOE_STATUS_SUCCESS);
  EXPECT_EQ(before.aux_loss, after.aux_loss);
  EXPECT_EQ(before.z_loss, after.z_loss);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  g.step();  // the layer is still usable eagerly
  EXPECT_EQ(g.outputs()[0], g.outputs()[0]);
}

TEST(CudaGraph, CaptureOfDynamicShapesIsRefusedCleanly) {
  SKIP_WITHOUT_GPU();
  moe_layer_config_t c = static_config("cuda");
  c.capacity_factor = 0;  // dropless: the layout follows the device's counts
  c.pad_to_capacity = 0;
  GraphLayer g(c);
  g.step();
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(g.stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  moe_ctx_t ctx = nullptr;
  EXPECT_EQ(g.forward(&ctx), MOE_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(moe_last_error()).find("static shapes"), std::string::npos)
      << moe_last_error();
  EXPECT_EQ(cudaStreamEndCapture(g.stream, &graph), cudaSuccess);
  if (graph) cudaGraphDestroy(graph);
  g.step();  // refused, nothing lost
}

// The counts an eager static-shape forward leaves on their way reach the losses, the
// step, the selection bias and the expert load as cpu_ref's do at once.
TEST(CudaGraph, DeferredCountsGiveTheHostBackendsBookkeeping) {
  SKIP_WITHOUT_GPU();
  moe_layer_config_t c = static_config("cuda");
  c.bias_update_rate = 1e-2;  // bias updates read the counts
  c.telemetry_interval = 1;
  GraphLayer g(c);
  moe_layer_config_t rc = static_config("cpu_ref");
  rc.bias_update_rate = 1e-2;
  rc.telemetry_interval = 1;
  moe::Layer ref(rc);
  std::vector<float> hr = g.router.host, h1 = g.w1.host, h2 = g.w2.host, hx = g.x.host, hy(kT * kD);
  moe_weights_t hw = MOE_WEIGHTS_INIT;
  hw.router = moe::tensor(hr.data(), {kD, kE});
  hw.w1 = moe::tensor(h1.data(), {kE, kD, kFF});
  hw.w2 = moe::tensor(h2.data(), {kE, kFF, kD});
  ref.set_weights(hw);
  for (int call = 0; call < 3; ++call) {
    SCOPED_TRACE("call " + std::to_string(call));
    moe_ctx_t ctx = nullptr;
    ASSERT_EQ(g.forward(&ctx, 1), MOE_STATUS_SUCCESS) << moe_last_error();
    moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
    a.x = moe::tensor(hx.data(), {kT, kD});
    a.y = moe::tensor(hy.data(), {kT, kD});
    a.train = 1;
    moe::Context rctx = ref.forward(a);
    moe_losses_t got = MOE_LOSSES_INIT, want = MOE_LOSSES_INIT;
    ASSERT_EQ(moe_ctx_losses(ctx, &got), MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_ctx_losses(rctx.get(), &want), MOE_STATUS_SUCCESS);
    EXPECT_NEAR(got.aux_loss, want.aux_loss, 1e-4 * std::abs(want.aux_loss));
    EXPECT_NEAR(got.z_loss, want.z_loss, 1e-4 * std::abs(want.z_loss));
    ASSERT_EQ(moe_ctx_destroy(ctx), MOE_STATUS_SUCCESS);
  }
  int64_t step = -1;
  ASSERT_EQ(moe_layer_get_step(g.layer.get(), &step), MOE_STATUS_SUCCESS);
  EXPECT_EQ(step, 3);
  std::vector<double> load(kE), ref_load(kE);
  ASSERT_EQ(moe_layer_expert_load(g.layer.get(), load.data(), kE, 0), MOE_STATUS_SUCCESS);
  ASSERT_EQ(moe_layer_expert_load(ref.get(), ref_load.data(), kE, 0), MOE_STATUS_SUCCESS);
  EXPECT_EQ(load, ref_load);
  double tokens = -1;
  int64_t count = 0;
  ASSERT_EQ(moe_layer_metric(g.layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, "tokens", &tokens, 1,
                             &count),
            MOE_STATUS_SUCCESS);
  EXPECT_EQ(tokens, 3.0 * kT);
}

// The hardening issue's finding, on the GPU: telemetry samples calls 0, n, 2n, ... with
// or without a communicator, and a rejected call shifts nothing (static shapes, whose
// bookkeeping is deferred, and dynamic ones).
TEST(CudaGraph, TelemetrySamplesEveryIntervalthCall) {
  SKIP_WITHOUT_GPU();
  for (bool on_comm : {false, true}) {
    for (bool padded : {false, true}) {
      for (int64_t interval : {1, 2, 3}) {
        SCOPED_TRACE(std::string(on_comm ? "local communicator" : "no communicator") +
                     (padded ? ", padded" : ", packed") + ", interval " + std::to_string(interval));
        moe_layer_config_t c = static_config("cuda");
        c.pad_to_capacity = padded;
        c.telemetry_interval = interval;
        GraphLayer g(c);
        moe_comm_t comm = nullptr;
        if (on_comm) {
          ASSERT_EQ(moe_comm_create_local(&comm), MOE_STATUS_SUCCESS);
          ASSERT_EQ(moe_layer_set_comm(g.layer.get(), comm, nullptr, 0), MOE_STATUS_SUCCESS);
          moe_weights_t w = MOE_WEIGHTS_INIT;
          w.router = g.router.tensor({kD, kE});
          w.w1 = g.w1.tensor({kE, kD, kFF});
          w.w2 = g.w2.tensor({kE, kFF, kD});
          ASSERT_EQ(moe_layer_set_weights(g.layer.get(), &w), MOE_STATUS_SUCCESS);
        }
        const int calls = 7;
        for (int call = 0; call < calls; ++call) {
          moe_forward_args_t bad = MOE_FORWARD_ARGS_INIT;
          bad.x = g.x.tensor({kT, 3});
          bad.y = g.y.tensor({kT, kD});
          moe_ctx_t ctx = nullptr;
          EXPECT_EQ(moe_layer_forward(g.layer.get(), &bad, &ctx), MOE_STATUS_SHAPE_MISMATCH);
          ASSERT_EQ(g.forward(&ctx, 1), MOE_STATUS_SUCCESS) << moe_last_error();
          ASSERT_EQ(moe_ctx_destroy(ctx), MOE_STATUS_SUCCESS);
        }
        double tokens = -1;
        int64_t count = 0;
        ASSERT_EQ(moe_layer_metric(g.layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, "tokens",
                                   &tokens, 1, &count),
                  MOE_STATUS_SUCCESS)
            << moe_last_error();
        const int64_t sampled = (calls + interval - 1) / interval;
        EXPECT_EQ(tokens, static_cast<double>(sampled * kT));
        if (on_comm) {
          ASSERT_EQ(moe_layer_set_comm(g.layer.get(), nullptr, nullptr, 0), MOE_STATUS_SUCCESS);
          EXPECT_EQ(moe_comm_destroy(comm), MOE_STATUS_SUCCESS);
        }
      }
    }
  }
}

}  // namespace
