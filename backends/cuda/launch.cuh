// Launch geometry shared by the cuda backend's kernel files.
#pragma once

#include <cstdint>

namespace moe::cuda {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace moe::cuda
