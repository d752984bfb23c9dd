// The cost of routing telemetry. Whole forward calls with telemetry off, on every call
// and on every 10th call (cpu_ref), and, because a multi-second forward hides a
// sub-millisecond difference in its noise, the telemetry stage alone (statistics of
// one call plus the window and EMA update) on a real routing of the same shape, in the
// same run. Shapes: mixtral-small (T=4096) and decode (T=64), d=512, d_ff=1024, E=8, k=2.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "core/config.hpp"
#include "core/plan.hpp"
#include "core/router.hpp"
#include "core/telemetry/layer_telemetry.hpp"
#include "moe/moe.hpp"

namespace {

constexpr int64_t kD = 512, kDff = 1024, kE = 8, kK = 2;

struct Weights {
  std::vector<float> router, w1, w2;
  Weights() : router(kD * kE), w1(kE * kD * kDff), w2(kE * kDff * kD) {
    std::mt19937 rng(0);
    std::normal_distribution<float> n(0.f, 0.04f);
    for (auto* v : {&router, &w1, &w2})
      for (float& x : *v) x = n(rng);
  }
};

std::vector<float> inputs(int64_t T) {
  std::vector<float> x(T * kD);
  std::mt19937 rng(1);
  std::normal_distribution<float> n(0.f, 1.f);
  for (float& v : x) v = n(rng);
  return x;
}

moe_layer_config_t layer_config(int64_t interval) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = kD;
  c.d_ff = kDff;
  c.num_experts = kE;
  c.top_k = kK;
  c.backend = "cpu_ref";
  c.telemetry_interval = interval;
  c.load_balance_alpha = 0.01;
  return c;
}

// args: tokens, telemetry interval (0 = off)
void BM_Forward(benchmark::State& state) {
  const int64_t T = state.range(0);
  static const Weights w;
  moe::Layer layer(layer_config(state.range(1)));
  moe_weights_t mw = MOE_WEIGHTS_INIT;
  mw.router = moe::tensor(const_cast<float*>(w.router.data()), {kD, kE});
  mw.w1 = moe::tensor(const_cast<float*>(w.w1.data()), {kE, kD, kDff});
  mw.w2 = moe::tensor(const_cast<float*>(w.w2.data()), {kE, kDff, kD});
  layer.set_weights(mw);
  std::vector<float> x = inputs(T), y(T * kD);
  moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
  a.x = moe::tensor(x.data(), {T, kD});
  a.y = moe::tensor(y.data(), {T, kD});
  a.seq_len = 256;
  for (auto _ : state) layer.forward_only(a);
}

// args: tokens
void BM_TelemetryStage(benchmark::State& state) {
  const int64_t T = state.range(0);
  moe::LayerConfig c;
  c.d_model = kD;
  c.num_experts = kE;
  c.top_k = kK;
  c.renormalize = true;
  c.load_balance_alpha = 0.01;
  std::vector<float> logits(T * kE);
  std::mt19937 rng(2);
  std::normal_distribution<float> n(0.f, 1.f);
  for (float& v : logits) v = n(rng);
  std::vector<double> bias(kE, 0.0);
  const moe::RouterState router_state{&bias, nullptr, 0, true};
  const moe::Routing routing =
      moe::route<float>(c, router_state, nullptr, logits.data(), nullptr, T);
  const moe::Plan plan =
      moe::make_plan(c, T, routing.expert, routing.gate, routing.fill_priority, -1);
  moe::LayerTelemetry telemetry(kE, 1, 0.9);
  for (auto _ : state) {
    telemetry.record(true, moe::collect_step_stats(c, routing, plan, 256), c, 0);
    benchmark::ClobberMemory();
  }
}

}  // namespace

BENCHMARK(BM_Forward)
    ->ArgNames({"tokens", "telemetry_every"})
    ->Args({4096, 0})
    ->Args({4096, 1})
    ->Args({4096, 10})
    ->Args({64, 0})
    ->Args({64, 1})
    ->Args({64, 10})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);
BENCHMARK(BM_TelemetryStage)
    ->ArgNames({"tokens"})
    ->Arg(4096)
    ->Arg(64)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
