// moe-bench --gemm-ceiling: the machine's float32 GEMM rate at n x n x n through the same
// oneDNN matmul the layer runs, the ceiling against which the layer's useful FLOP/s are
// judged (bench/cpu_report.py takes the best of this and OpenBLAS).
#pragma once

#include <nlohmann/json.hpp>

#include "tools/moe-bench/timing.hpp"

namespace moe::bench {

// Median of o.iters products after o.warmup: {"gemm", "n", "ms", "gflops", "threads"}.
nlohmann::json gemm_ceiling(const Options& o, int64_t n);

}  // namespace moe::bench
