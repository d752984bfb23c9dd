#include "tools/moe-bench/gemm_ceiling.hpp"

#include <omp.h>

#include <random>
#include <vector>

#include "backends/onednn/matmul.hpp"

namespace moe::bench {

nlohmann::json gemm_ceiling(const Options& o, int64_t n) {
  std::vector<float> a(static_cast<size_t>(n * n)), b(a.size()), c(a.size());
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  for (float& v : a) v = uniform(rng);
  for (float& v : b) v = uniform(rng);
  std::vector<double> times;
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    const auto start = Clock::now();
    onednn::matmul<float>(false, false, n, n, n, a.data(), b.data(), c.data(), false);
    if (i >= o.warmup) times.push_back(ms_since(start));
  }
  const double ms = median(times);
  return {{"gemm", "onednn sgemm (dnnl matmul, float32)"},
          {"n", n},
          {"ms", ms},
          {"gflops", 2.0 * double(n) * double(n) * double(n) / ms / 1e6},
          {"threads", omp_get_max_threads()}};
}

}  // namespace moe::bench
