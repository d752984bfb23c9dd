// The benchmark shapes of the CPU backend (issue 4's contract) and their FLOP counts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/moe.h"

namespace moe::bench {

struct Shape {
  std::string name;
  int64_t tokens, d_model, d_ff, experts, top_k;
  moe_activation_t activation;

  bool gated() const {
    return activation == MOE_ACTIVATION_SWIGLU || activation == MOE_ACTIVATION_GEGLU;
  }
  int64_t ff_width() const { return gated() ? 2 * d_ff : d_ff; }
  // Useful FLOPs of one forward: the expert products of every kept copy plus the
  // router's logits. Backward does twice the products (input and weight gradients).
  double forward_flops() const {
    return 2.0 * tokens * top_k * (d_model * ff_width() + d_ff * d_model) +
           2.0 * tokens * d_model * experts;
  }
  double backward_flops() const { return 2.0 * forward_flops(); }
};

inline std::vector<Shape> standard_shapes() {
  return {{"mixtral-small", 4096, 512, 1024, 8, 2, MOE_ACTIVATION_GELU},
          {"fine-grained", 4096, 512, 256, 64, 8, MOE_ACTIVATION_SWIGLU},
          {"decode", 64, 512, 1024, 8, 2, MOE_ACTIVATION_GELU}};
}

}  // namespace moe::bench
