// The cuda backend's expert-parallel pipeline on one GPU: 2, 3 and 4 ranks as threads
// (tests/cuda/thread_group.hpp) over a host-memory transport (rows staged through host
// memory, as with MPI) and a device-memory one (rows moved on the device, as with NCCL).
// Every rank's outputs, dx, expert gradients, losses, selection bias and telemetry
// match the single-process cuda layer on the whole batch (float32 1e-5, bfloat16 2e-2),
// its routing and drops exactly; the router gradient after moe_layer_reduce_router_grad
// on device memory. Also: a rank that never calls makes the others fail within the
// timeout and leaves their layers usable; 200 steps run without a hang. Skipped (not
// passed) where no GPU is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "moe/moe.hpp"
#include "tests/cpp/ep_scenarios.hpp"
#include "tests/cuda/device_mirror.hpp"
#include "tests/cuda/thread_group.hpp"

namespace {

using moe_test::Mirror;
using moe_test::ThreadGroup;

using Scenario = moe_test::EpScenario;

int64_t ff_width(const moe_layer_config_t& c) {
  const bool gated = c.activation == MOE_ACTIVATION_SWIGLU || c.activation == MOE_ACTIVATION_GEGLU;
  return gated ? 2 * c.d_ff : c.d_ff;
}

// The whole batch and every expert's weights, as host floats.
struct Problem {
  std::vector<float> x, dy, router, w1, b1, w2, b2;
  std::vector<int64_t> ids;
  Problem(const moe_layer_config_t& c, int64_t T, uint64_t seed) {
    const int64_t d = c.d_model, E = c.num_experts, F = ff_width(c);
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    auto fill = [&](std::vector<float>& v, int64_t n, double scale) {
      v.resize(n);
      for (float& e : v) e = static_cast<float>(scale * normal(rng));
    };
    fill(x, T * d, 1.0);
    fill(dy, T * d, 1.0);
    fill(router, d * E, 1.0 / std::sqrt(static_cast<double>(d)));
    fill(w1, E * d * F, 1.0 / std::sqrt(static_cast<double>(d)));
    fill(w2, E * c.d_ff * d, 1.0 / std::sqrt(static_cast<double>(c.d_ff)));
    if (c.expert_bias) {
      fill(b1, E * F, 0.1);
      fill(b2, E * d, 0.1);
    }
    for (int64_t t = 0; t < T; ++t) ids.push_back(t * 7 + 3);
  }
};

// The given experts' blocks of a full [E, block] array.
std::vector<float> experts_of(const std::vector<float>& full, const std::vector<int32_t>& experts,
                              int64_t block) {
  std::vector<float> out;
  for (int32_t e : experts)
    if (!full.empty()) out.insert(out.end(), &full[e * block], &full[e * block] + block);
  return out;
}

struct Result {
  std::vector<std::vector<float>> y, dx;  // per step
  std::vector<moe_losses_t> losses;
  std::vector<moe::Context::RoutingDecision> routing;
  std::vector<int32_t> experts;  // the experts this layer holds
  std::vector<float> g_router, g_w1, g_b1, g_w2, g_b2;
  std::vector<double> bias, scalars, coactivation;
  std::vector<moe_peer_traffic_t> peers;
  std::string error;  // what an exception said
};

// Runs `sc` on tokens [offset, offset + T) of `p`: the whole batch without a
// communicator, this rank's share with one.
Result run(const Scenario& sc, moe_dtype_t dtype, const Problem& p, int64_t offset, int64_t T,
           moe_comm_t comm) {
  Result out;
  try {
    moe_layer_config_t c = sc.config;
    c.backend = "cuda";
    c.dtype = dtype;
    const int64_t d = c.d_model, E = c.num_experts, F = ff_width(c), dff = c.d_ff;
    const bool learned = c.router != MOE_ROUTER_HASH;
    moe::Layer layer(c);
    if (comm) {
      layer.set_comm(comm, sc.owner);
      out.experts = layer.local_experts();
    } else {
      for (int32_t e = 0; e < E; ++e) out.experts.push_back(e);
    }
    const int64_t H = static_cast<int64_t>(out.experts.size());
    auto rows = [&](const std::vector<float>& v) {
      return std::vector<float>(v.begin() + offset * d, v.begin() + (offset + T) * d);
    };
    Mirror x(dtype, rows(p.x)), dy(dtype, rows(p.dy)), router(dtype, p.router),
        w1(dtype, experts_of(p.w1, out.experts, d * F)),
        b1(dtype, experts_of(p.b1, out.experts, F)),
        w2(dtype, experts_of(p.w2, out.experts, dff * d)),
        b2(dtype, experts_of(p.b2, out.experts, d));
    Mirror y(dtype, std::vector<float>(T * d)), dx(dtype, std::vector<float>(T * d));
    Mirror g_router(dtype, std::vector<float>(p.router.size())),
        g_w1(dtype, std::vector<float>(w1.host.size())),
        g_b1(dtype, std::vector<float>(b1.host.size())),
        g_w2(dtype, std::vector<float>(w2.host.size())),
        g_b2(dtype, std::vector<float>(b2.host.size()));
    auto weights = [&](const Mirror& r, const Mirror& a1, const Mirror& c1, const Mirror& a2,
                       const Mirror& c2) {
      moe_weights_t w = MOE_WEIGHTS_INIT;
      if (learned) w.router = r.tensor({d, E});
      w.w1 = a1.tensor({H, d, F});
      w.w2 = a2.tensor({H, dff, d});
      if (c.expert_bias) {
        w.b1 = c1.tensor({H, F});
        w.b2 = c2.tensor({H, d});
      }
      return w;
    };
    layer.set_weights(weights(router, w1, b1, w2, b2));
    std::vector<int64_t> ids(p.ids.begin() + offset, p.ids.begin() + offset + T);
    for (int step = 0; step < sc.steps; ++step) {
      moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
      fa.x = x.tensor({T, d});
      fa.y = y.tensor({T, d});
      fa.train = sc.train ? 1 : 0;
      fa.seq_len = sc.seq_len;
      fa.token_ids = ids.data();
      moe::Context ctx = layer.forward(fa);
      moe_backward_args_t ba = MOE_BACKWARD_ARGS_INIT;
      ba.dy = dy.tensor({T, d});
      ba.dx = dx.tensor({T, d});
      ba.grads = weights(g_router, g_w1, g_b1, g_w2, g_b2);
      ba.flags = step > 0 && sc.accumulate ? MOE_BACKWARD_ACCUMULATE : 0u;
      layer.backward(ctx, ba);
      out.y.push_back(y.download());
      out.dx.push_back(dx.download());
      out.losses.push_back(ctx.losses());
      out.routing.push_back(ctx.routing());
    }
    if (comm && learned) layer.reduce_router_grad(g_router.tensor({d, E}));
    out.g_router = g_router.download();
    out.g_w1 = g_w1.download();
    out.g_b1 = g_b1.download();
    out.g_w2 = g_w2.download();
    out.g_b2 = g_b2.download();
    out.bias.resize(E);
    moe::check(moe_layer_get_selection_bias(layer.get(), out.bias.data(), E));
    int32_t metrics = 0;
    moe::check(moe_metric_count(&metrics));
    out.scalars.assign(metrics, 0.0);
    out.coactivation.assign(E * E, 0.0);
    moe_telemetry_snapshot_t snap = MOE_TELEMETRY_SNAPSHOT_INIT;
    snap.split = sc.train ? MOE_SPLIT_TRAIN : MOE_SPLIT_EVAL;
    snap.scope = MOE_SCOPE_WINDOW;
    snap.scalars = out.scalars.data();
    snap.coactivation = out.coactivation.data();
    moe::check(moe_layer_telemetry(layer.get(), &snap));
    out.scalars.resize(snap.num_scalars);
    if (comm) {
      out.peers = layer.traffic().peers;
      layer.set_comm(nullptr);
    }
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  return out;
}

void expect_close(const std::vector<float>& got, const float* want, size_t n, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), n) << what;
  int reported = 0;
  for (size_t i = 0; i < n && reported < 3; ++i) {
    if (std::abs(got[i] - want[i]) <= tol * (1.0 + std::abs(want[i]))) continue;
    ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs single-process " << want[i];
    ++reported;
  }
}

// Runs the scenario on `world` thread ranks and compares each with the single process.
void check_scenario(const Scenario& sc, moe_dtype_t dtype, moe_device_t transport, uint64_t seed) {
  SCOPED_TRACE(sc.name + (dtype == MOE_DTYPE_BF16 ? " bf16" : " f32") +
               (transport == MOE_DEVICE_CPU ? " host transport" : " device transport"));
  const int world = static_cast<int>(sc.split.size());
  const moe_layer_config_t& c = sc.config;
  const int64_t d = c.d_model, E = c.num_experts, F = ff_width(c), dff = c.d_ff;
  int64_t T = 0;
  for (int64_t n : sc.split) T += n;
  const Problem problem(c, T, seed);
  const Result ref = run(sc, dtype, problem, 0, T, nullptr);
  ASSERT_EQ(ref.error, "");

  ThreadGroup group(world, transport);
  std::vector<moe_comm_t> comms(world, nullptr);
  for (int r = 0; r < world; ++r)
    ASSERT_EQ(group.create(r, 60.0, &comms[r]), MOE_STATUS_SUCCESS) << moe_last_error();
  std::vector<Result> ranks(world);
  std::vector<int64_t> offsets(world, 0);
  for (int r = 1; r < world; ++r) offsets[r] = offsets[r - 1] + sc.split[r - 1];
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back(
        [&, r] { ranks[r] = run(sc, dtype, problem, offsets[r], sc.split[r], comms[r]); });
  for (std::thread& t : threads) t.join();
  for (moe_comm_t comm : comms) EXPECT_EQ(moe_comm_destroy(comm), MOE_STATUS_SUCCESS);

  const bool bf16 = dtype == MOE_DTYPE_BF16;
  const double tol = bf16 ? 2e-2 : 1e-5;
  std::vector<int64_t> sent_to(world, 0);
  for (int r = 0; r < world; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    const Result& got = ranks[r];
    ASSERT_EQ(got.error, "");
    const int64_t at = offsets[r], mine = sc.split[r], k = c.top_k;
    for (int step = 0; step < sc.steps; ++step) {
      expect_close(got.y[step], &ref.y[step][at * d], mine * d, tol, "y");
      expect_close(got.dx[step], &ref.dx[step][at * d], mine * d, tol, "dx");
      const auto& a = got.routing[step];
      const auto& b = ref.routing[step];
      EXPECT_TRUE(std::equal(a.experts.begin(), a.experts.end(), b.experts.begin() + at * k))
          << "experts differ at step " << step;
      EXPECT_TRUE(std::equal(a.dropped.begin(), a.dropped.end(), b.dropped.begin() + at * k))
          << "drops differ at step " << step;
      EXPECT_NEAR(got.losses[step].aux_loss, ref.losses[step].aux_loss,
                  1e-5 * (1 + std::abs(ref.losses[step].aux_loss)));
      EXPECT_NEAR(got.losses[step].z_loss, ref.losses[step].z_loss,
                  1e-5 * (1 + std::abs(ref.losses[step].z_loss)));
      for (size_t i = 0; i < a.experts.size(); ++i)
        if (a.experts[i] >= 0 && !a.dropped[i])
          ++sent_to[sc.owner.empty() ? a.experts[i] * world / E : sc.owner[a.experts[i]]];
    }
    expect_close(got.g_w1, experts_of(ref.g_w1, got.experts, d * F).data(), got.g_w1.size(), tol,
                 "grad w1");
    expect_close(got.g_w2, experts_of(ref.g_w2, got.experts, dff * d).data(), got.g_w2.size(), tol,
                 "grad w2");
    expect_close(got.g_b1, experts_of(ref.g_b1, got.experts, F).data(), got.g_b1.size(), tol,
                 "grad b1");
    expect_close(got.g_b2, experts_of(ref.g_b2, got.experts, d).data(), got.g_b2.size(), tol,
                 "grad b2");
    if (c.router != MOE_ROUTER_HASH) {
      // A sum over ranks, rounded once: relative to the gradient's scale.
      double scale = 0;
      for (float v : ref.g_router) scale = std::max(scale, static_cast<double>(std::abs(v)));
      for (size_t i = 0; i < ref.g_router.size(); ++i)
        ASSERT_LE(std::abs(got.g_router[i] - ref.g_router[i]), (bf16 ? 3e-2 : 1e-5) * scale)
            << "router grad[" << i << "]";
      EXPECT_EQ(got.g_router, ranks[0].g_router) << "every rank holds the same reduced gradient";
    }
    EXPECT_EQ(got.bias, ref.bias) << "selection bias";
    ASSERT_EQ(got.scalars.size(), ref.scalars.size());
    for (size_t i = 0; i < ref.scalars.size(); ++i) {
      if (std::isnan(ref.scalars[i]) && std::isnan(got.scalars[i])) continue;
      EXPECT_NEAR(got.scalars[i], ref.scalars[i], 1e-4 * (1 + std::abs(ref.scalars[i])))
          << "metric " << i;
    }
    EXPECT_EQ(got.coactivation, ref.coactivation);
  }
  // Traffic: every rank's count of the copies it sent to each peer, summed.
  std::vector<int64_t> counted(world, 0);
  for (int r = 0; r < world; ++r)
    for (int q = 0; q < world; ++q) counted[q] += ranks[r].peers[q].tokens_sent;
  EXPECT_EQ(counted, sent_to);
}

using Case = std::tuple<int, moe_device_t>;

class CudaExpertParallel : public ::testing::TestWithParam<Case> {};

TEST_P(CudaExpertParallel, MatchesTheSingleProcessLayer) {
  SKIP_WITHOUT_GPU();
  const auto [world, transport] = GetParam();
  uint64_t seed = 1;
  for (const Scenario& s : moe_test::ep_scenarios(world)) {
    check_scenario(s, MOE_DTYPE_F32, transport, seed);
    check_scenario(s, MOE_DTYPE_BF16, transport, seed);
    ++seed;
  }
}

TEST_P(CudaExpertParallel, TwoHundredStepsWithoutAHang) {
  SKIP_WITHOUT_GPU();
  const auto [world, transport] = GetParam();
  Scenario s = moe_test::ep_scenario("200_steps", world, 8, 2, 24);
  s.config.d_model = 8;
  s.config.d_ff = 8;
  s.config.capacity_factor = 1.0;
  s.config.bias_update_rate = 0.001;
  s.steps = 200;
  // Each step's gradients on their own: summed over 200 steps, float32 rounding of
  // the (equally correct) per-rank and single-process sums drifts past 1e-5.
  s.accumulate = false;
  check_scenario(s, MOE_DTYPE_F32, transport, 99);
}

// A rank that attaches and then never calls forward: the others' forward fails with
// MOE_STATUS_COMM_ERROR within the timeout instead of hanging, and their layers run
// again once detached.
TEST_P(CudaExpertParallel, ARankThatNeverCallsFailsTheOthersWithinTheTimeout) {
  SKIP_WITHOUT_GPU();
  const auto [world, transport] = GetParam();
  ThreadGroup group(world, transport);
  const double timeout = 2.0;
  Scenario sc = moe_test::ep_scenario("early_exit", world, 4, 1, 8 * world);
  const Problem problem(sc.config, 8, 5);
  std::vector<moe_status_t> status(world, MOE_STATUS_SUCCESS);
  std::vector<double> seconds(world, 0.0);
  std::vector<std::string> after(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      moe_comm_t comm = nullptr;
      if (group.create(r, timeout, &comm) != MOE_STATUS_SUCCESS) return;
      {
        moe_layer_config_t c = sc.config;
        c.backend = "cuda";
        moe::Layer layer(c);
        layer.set_comm(comm);
        const int64_t H = static_cast<int64_t>(layer.local_experts().size()), d = 16;
        Mirror router(MOE_DTYPE_F32, problem.router),
            w1(MOE_DTYPE_F32, std::vector<float>(H * d * 24, 0.01f)),
            w2(MOE_DTYPE_F32, std::vector<float>(H * 24 * d, 0.01f)), x(MOE_DTYPE_F32, problem.x),
            y(MOE_DTYPE_F32, problem.x);
        moe_weights_t w = MOE_WEIGHTS_INIT;
        w.router = router.tensor({d, 4});
        w.w1 = w1.tensor({H, d, 24});
        w.w2 = w2.tensor({H, 24, d});
        layer.set_weights(w);
        if (r + 1 < world) {  // the last rank leaves without calling
          moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
          fa.x = x.tensor({8, d});
          fa.y = y.tensor({8, d});
          moe_ctx_t ctx = nullptr;
          const auto start = std::chrono::steady_clock::now();
          status[r] = moe_layer_forward(layer.get(), &fa, &ctx);
          seconds[r] =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          layer.set_comm(nullptr);
          // Without the communicator the layer holds every expert again.
          Mirror all_w1(MOE_DTYPE_F32, std::vector<float>(4 * d * 24, 0.01f)),
              all_w2(MOE_DTYPE_F32, std::vector<float>(4 * 24 * d, 0.01f));
          w.w1 = all_w1.tensor({4, d, 24});
          w.w2 = all_w2.tensor({4, 24, d});
          layer.set_weights(w);
          const moe_status_t again = moe_layer_forward(layer.get(), &fa, &ctx);
          after[r] = again == MOE_STATUS_SUCCESS ? "" : moe_last_error();
          moe_ctx_destroy(ctx);
        }
      }
      moe_comm_destroy(comm);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r + 1 < world; ++r) {
    EXPECT_EQ(status[r], MOE_STATUS_COMM_ERROR) << "rank " << r;
    EXPECT_LT(seconds[r], 4 * timeout) << "rank " << r;
    EXPECT_EQ(after[r], "") << "rank " << r << " after detaching";
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return std::to_string(std::get<0>(info.param)) + "_ranks_" +
         (std::get<1>(info.param) == MOE_DEVICE_CPU ? "host_transport" : "device_transport");
}

INSTANTIATE_TEST_SUITE_P(Threads, CudaExpertParallel,
                         ::testing::Combine(::testing::Values(2, 3, 4),
                                            ::testing::Values(MOE_DEVICE_CPU, MOE_DEVICE_CUDA)),
                         case_name);

}  // namespace
