// moe-bench's options and its timing loop: medians of timed (forward, backward) pairs
// after untimed warmup ones.
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace moe::bench {

struct Options {
  std::vector<std::string> shapes = {"mixtral-small", "fine-grained", "decode"};
  std::string backend = "onednn";
  std::string dtype = "f32";
  int iters = 10;
  int warmup = 2;
  bool dense = true;
  bool expert_parallel = false;
  bool ep_dedup = false;  // each token once per rank (moe_ep_options_t.dedup)
  int ep_chunks = 1;      // its forward pipelined in this many chunks
  int ep_redundant = -1;  // >= 0: a placement from load with this many redundant slots
  double ep_skew = 0.0;   // a hot expert 0 (LayerProblem)
  bool json = false;      // results as JSON on stdout
};

using Clock = std::chrono::steady_clock;

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

inline double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Timings {
  double forward_ms, backward_ms, train_ms;
};

// Runs warmup + iters (forward, backward) pairs; the medians of the timed ones.
// `before_each` runs untimed before every pair (a barrier, under mpirun).
template <typename Forward, typename Backward>
Timings time_pairs(
    const Options& o, Forward&& forward, Backward&& backward,
    const std::function<void()>& after_warmup, const std::function<void()>& before_each = [] {}) {
  std::vector<double> fwd, bwd, both;
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    if (i == o.warmup) after_warmup();
    before_each();
    const auto t0 = Clock::now();
    auto saved = forward();
    const double f = ms_since(t0);
    const auto t1 = Clock::now();
    backward(saved);
    const double b = ms_since(t1);
    if (i < o.warmup) continue;
    fwd.push_back(f);
    bwd.push_back(b);
    both.push_back(f + b);
  }
  return {median(fwd), median(bwd), median(both)};
}

}  // namespace moe::bench
