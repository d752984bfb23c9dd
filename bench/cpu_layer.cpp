// Google Benchmark of the onednn backend on the standard shapes (tools/moe-bench/
// shapes.hpp): the layer's forward and forward+backward beside the dense oneDNN FFN of
// the same FLOPs, each reporting FLOP/s. moe-bench prints the same with stage shares;
// bench/cpu_report.py adds PyTorch eager.
#include <benchmark/benchmark.h>

#include "core/bfloat16.hpp"
#include "tools/moe-bench/dense_ffn.hpp"
#include "tools/moe-bench/layer_problem.hpp"

namespace {

using moe::bench::Shape;

Shape shape_at(int64_t index) {
  return moe::bench::standard_shapes().at(static_cast<size_t>(index));
}

void set_rate(benchmark::State& state, const Shape& s, double flops_per_iteration) {
  state.SetLabel(s.name);
  state.counters["FLOP/s"] =
      benchmark::Counter(flops_per_iteration * state.iterations(), benchmark::Counter::kIsRate);
}

template <typename S, moe_dtype_t kDtype>
void layer_forward(benchmark::State& state) {
  const Shape s = shape_at(state.range(0));
  moe::bench::LayerProblem<S> problem(s, kDtype, "onednn");
  for (auto _ : state) benchmark::DoNotOptimize(problem.forward());
  set_rate(state, s, s.forward_flops());
}

template <typename S, moe_dtype_t kDtype>
void layer_train(benchmark::State& state) {
  const Shape s = shape_at(state.range(0));
  moe::bench::LayerProblem<S> problem(s, kDtype, "onednn");
  for (auto _ : state) problem.backward(problem.forward());
  set_rate(state, s, s.forward_flops() + s.backward_flops());
}

template <typename S>
void dense_forward(benchmark::State& state) {
  const Shape s = shape_at(state.range(0));
  moe::bench::DenseFfn<S> dense(s);
  for (auto _ : state) dense.forward();
  set_rate(state, s, s.forward_flops());
}

template <typename S>
void dense_train(benchmark::State& state) {
  const Shape s = shape_at(state.range(0));
  moe::bench::DenseFfn<S> dense(s);
  for (auto _ : state) {
    dense.forward();
    dense.backward();
  }
  set_rate(state, s, s.forward_flops() + s.backward_flops());
}

// Shapes by index: 0 mixtral-small, 1 fine-grained, 2 decode.
#define MOE_SHAPES DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime()
BENCHMARK(layer_forward<float, MOE_DTYPE_F32>)->MOE_SHAPES;
BENCHMARK(dense_forward<float>)->MOE_SHAPES;
BENCHMARK(layer_train<float, MOE_DTYPE_F32>)->MOE_SHAPES;
BENCHMARK(dense_train<float>)->MOE_SHAPES;
BENCHMARK(layer_forward<moe::bfloat16, MOE_DTYPE_BF16>)->MOE_SHAPES;
BENCHMARK(dense_forward<moe::bfloat16>)->MOE_SHAPES;
BENCHMARK(layer_train<moe::bfloat16, MOE_DTYPE_BF16>)->MOE_SHAPES;
BENCHMARK(dense_train<moe::bfloat16>)->MOE_SHAPES;

}  // namespace

BENCHMARK_MAIN();
