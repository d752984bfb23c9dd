// moe-bench: times the MoE layer forward, backward and both on the standard shapes,
// beside a dense oneDNN FFN of the same FLOPs measured in the same run, with the share
// of each pipeline stage (moe_layer_stage_profile). Prints a table; --json writes the
// figures for bench/cpu_report.py, which adds PyTorch eager in the same run.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "core/bfloat16.hpp"
#include "moe/moe.hpp"
#include "tools/common/backend_option.hpp"
#include "tools/common/cli.hpp"
#include "tools/moe-bench/dense_ffn.hpp"
#include "tools/moe-bench/expert_parallel.hpp"
#include "tools/moe-bench/gemm_ceiling.hpp"
#include "tools/moe-bench/layer_problem.hpp"
#include "tools/moe-bench/shapes.hpp"
#include "tools/moe-bench/timing.hpp"

namespace {

using moe::bench::Options;
using moe::bench::Shape;
using moe::bench::time_pairs;
using moe::bench::Timings;

template <typename S>
nlohmann::json run_shape(const Options& o, const Shape& s, moe_dtype_t dtype) {
  moe::bench::LayerProblem<S> problem(s, dtype, o.backend);
  moe::Layer& layer = problem.layer;
  const int64_t T = s.tokens, d = s.d_model, E = s.experts;
  const Timings moe_t = time_pairs(
      o, [&] { return problem.forward(); }, [&](moe::Context& ctx) { problem.backward(ctx); },
      [&] { layer.stage_profile(true); });
  const moe_stage_profile_t p = layer.stage_profile();

  nlohmann::json j = {{"shape", s.name},
                      {"T", T},
                      {"d", d},
                      {"d_ff", s.d_ff},
                      {"E", E},
                      {"k", s.top_k},
                      {"activation", s.activation == MOE_ACTIVATION_SWIGLU ? "swiglu" : "gelu"},
                      {"backend", layer.config().backend},
                      {"dtype", o.dtype},
                      {"threads", omp_get_max_threads()},
                      {"iters", o.iters},
                      {"forward_ms", moe_t.forward_ms},
                      {"backward_ms", moe_t.backward_ms},
                      {"train_ms", moe_t.train_ms}};
  const double fwd_flops = s.forward_flops(), bwd_flops = s.backward_flops();
  j["forward_gflops"] = fwd_flops / moe_t.forward_ms / 1e6;
  j["backward_gflops"] = bwd_flops / moe_t.backward_ms / 1e6;
  j["train_gflops"] = (fwd_flops + bwd_flops) / moe_t.train_ms / 1e6;

  const double n = static_cast<double>(p.forward_calls);
  auto share = [&](double seconds, double total) { return total > 0 ? seconds / total : 0.0; };
  j["forward_stages"] = {{"router", share(p.router, p.forward_total)},
                         {"plan", share(p.plan, p.forward_total)},
                         {"permute", share(p.permute, p.forward_total)},
                         {"experts", share(p.experts, p.forward_total)},
                         {"combine", share(p.combine, p.forward_total)},
                         {"telemetry", share(p.telemetry, p.forward_total)},
                         {"other", share(p.forward_other, p.forward_total)}};
  j["backward_stages"] = {{"combine", share(p.combine_backward, p.backward_total)},
                          {"experts", share(p.experts_backward, p.backward_total)},
                          {"permute", share(p.permute_backward, p.backward_total)},
                          {"router", share(p.router_backward, p.backward_total)},
                          {"other", share(p.backward_other, p.backward_total)}};
  const double train_total = p.forward_total + p.backward_total;
  j["non_expert_share_train"] = share(train_total - p.experts - p.experts_backward, train_total);
  j["profiled_forward_ms"] = n > 0 ? 1e3 * p.forward_total / n : 0.0;

  if (o.dense) {
    moe::bench::DenseFfn<S> dense(s);
    const Timings dense_t = time_pairs(
        o,
        [&] {
          dense.forward();
          return 0;
        },
        [&](int) { dense.backward(); }, [] {});
    j["dense_forward_ms"] = dense_t.forward_ms;
    j["dense_backward_ms"] = dense_t.backward_ms;
    j["dense_train_ms"] = dense_t.train_ms;
    // Throughput relative to the dense FFN of the same FLOPs (1.0 = as fast).
    j["forward_vs_dense"] = dense_t.forward_ms / moe_t.forward_ms;
    j["backward_vs_dense"] = dense_t.backward_ms / moe_t.backward_ms;
    j["train_vs_dense"] = dense_t.train_ms / moe_t.train_ms;
  }
  return j;
}

// The human-readable row (stdout, or stderr when --json takes stdout).
void print_row(FILE* out, const nlohmann::json& j) {
  std::fprintf(
      out,
      "%-14s %-6s %-5s fwd %8.2f ms %7.1f GFLOP/s | bwd %8.2f ms %7.1f GFLOP/s | both %8.2f ms",
      j["shape"].get<std::string>().c_str(), j["backend"].get<std::string>().c_str(),
      j["dtype"].get<std::string>().c_str(), j["forward_ms"].get<double>(),
      j["forward_gflops"].get<double>(), j["backward_ms"].get<double>(),
      j["backward_gflops"].get<double>(), j["train_ms"].get<double>());
  if (j.contains("forward_vs_dense"))
    std::fprintf(out, " | vs dense: fwd %.2fx both %.2fx", j["forward_vs_dense"].get<double>(),
                 j["train_vs_dense"].get<double>());
  std::fprintf(out, " | non-expert %.1f%%\n", 100.0 * j["non_expert_share_train"].get<double>());
  std::fprintf(out, "    forward stages:");
  for (auto& [stage, v] : j["forward_stages"].items())
    std::fprintf(out, " %s %.1f%%", stage.c_str(), 100.0 * v.get<double>());
  std::fprintf(out, "\n    backward stages:");
  for (auto& [stage, v] : j["backward_stages"].items())
    std::fprintf(out, " %s %.1f%%", stage.c_str(), 100.0 * v.get<double>());
  std::fprintf(out, "\n");
  std::fflush(out);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"moe-bench: MoE layer throughput against a dense FFN of the same FLOPs",
               "moe-bench"};
  moe::tools::add_version_flag(app, "moe-bench");
  CLI::Option* shape = app.add_option("--shape", o.shapes, "shapes to run")
                           ->capture_default_str()
                           ->check(CLI::IsMember({"mixtral-small", "fine-grained", "decode"}));
  app.add_option("--backend", o.backend, "backend: auto or one of moe_backend_name()")
      ->capture_default_str()
      ->check(moe::tools::backend_validator());
  app.add_option("--dtype", o.dtype, "f32 or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--iters", o.iters, "timed iterations (median reported)")
      ->capture_default_str()
      ->check(moe::tools::integer_in(1, 1000000));
  app.add_option("--warmup", o.warmup, "untimed iterations first")
      ->capture_default_str()
      ->check(moe::tools::integer_in(0, 1000000));
  app.add_flag("!--no-dense", o.dense, "skip the dense FFN baseline");
  app.add_flag("--json", o.json, "print the results as JSON on stdout (the table goes to stderr)");
  app.add_flag("--ep", o.expert_parallel,
               "expert parallelism under mpirun: each rank its own tokens of the shape and "
               "E/ranks experts; the exchange beside a bare MPI_Alltoallv");
  app.add_flag("--ep-dedup", o.ep_dedup,
               "with --ep: each token travels once to each rank (moe_ep_options_t.dedup)");
  app.add_option("--ep-chunks", o.ep_chunks,
                 "with --ep-dedup: pipeline the forward's exchanges with the expert products "
                 "in this many chunks (moe_ep_options_t.chunks)")
      ->check(moe::tools::integer_in(1, 64));
  app.add_option("--ep-redundant", o.ep_redundant,
                 "with --ep: after the warm-up, place the experts from their observed load "
                 "with this many redundant slots (moe_placement_from_load; rounded up to fill "
                 "every rank's slots), then time")
      ->check(moe::tools::integer_in(0, 4096));
  app.add_option("--ep-skew", o.ep_skew,
                 "with --ep: make expert 0 hot (adds this / sqrt(d) to its router column)")
      ->check(CLI::Range(0.0, 100.0));
  int64_t gemm_n = 0;
  app.add_option("--gemm-ceiling", gemm_n,
                 "instead of the layer: time one float32 N x N x N product through the same "
                 "oneDNN matmul (the machine's GEMM ceiling; 4096 is the usual N)")
      ->check(moe::tools::integer_in(1, 16384))
      ->excludes(shape);
  if (auto exit_code = moe::tools::parse_command_line(app, argc, argv)) return *exit_code;
  if (gemm_n > 0) {
    try {
      const nlohmann::json j = moe::bench::gemm_ceiling(o, gemm_n);
      if (o.json) {
        std::cout << j.dump(2) << "\n";
      } else {
        std::printf("float32 GEMM %lld^3 on %d threads: %.1f ms, %.1f GFLOP/s (%s)\n",
                    (long long)gemm_n, j["threads"].get<int>(), j["ms"].get<double>(),
                    j["gflops"].get<double>(), j["gemm"].get<std::string>().c_str());
      }
    } catch (const std::exception& e) {
      std::cerr << "moe-bench: " << e.what() << "\n";
      return moe::tools::kExitFailure;
    }
    return moe::tools::finish("moe-bench", moe::tools::kExitSuccess);
  }
  if (o.expert_parallel) {
#ifdef MOE_BENCH_WITH_MPI
    return moe::bench::run_expert_parallel(o);
#else
    std::cerr << "moe-bench: built without MPI (libopenmpi-dev), so no --ep\n";
    return moe::tools::kExitFailure;
#endif
  }

  FILE* table = o.json ? stderr : stdout;
  nlohmann::json results = nlohmann::json::array();
  try {
    for (const Shape& s : moe::bench::standard_shapes()) {
      if (std::find(o.shapes.begin(), o.shapes.end(), s.name) == o.shapes.end()) continue;
      nlohmann::json j = o.dtype == "bf16" ? run_shape<moe::bfloat16>(o, s, MOE_DTYPE_BF16)
                                           : run_shape<float>(o, s, MOE_DTYPE_F32);
      print_row(table, j);
      results.push_back(j);
    }
  } catch (const std::exception& e) {
    std::cerr << "moe-bench: " << e.what() << "\n";
    return moe::tools::kExitFailure;
  }
  if (o.json) std::cout << results.dump(2) << "\n";
  return moe::tools::finish("moe-bench", moe::tools::kExitSuccess);
}
