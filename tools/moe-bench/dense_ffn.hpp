// The dense baseline: one FFN over all T tokens whose hidden width is k * d_ff, so it
// does the same FLOPs as the MoE layer's experts, through the same oneDNN matmul and
// activation code as the onednn backend. The ratio MoE / dense then isolates what
// routing, permutation and per-expert products cost.
#pragma once

#include <vector>

#include "tools/moe-bench/shapes.hpp"

namespace moe::bench {

template <typename S>
class DenseFfn {
 public:
  explicit DenseFfn(const Shape& shape);
  void forward();
  void backward();

 private:
  Shape shape_;
  int64_t hidden_;  // k * d_ff
  std::vector<S> x_, w1_, w2_, h_pre_, h_, y_, dy_, dh_, dh_pre_, dx_, dw1_, dw2_;
};

}  // namespace moe::bench
