// Loops spread over OpenMP threads only when they hold enough work: starting a team
// costs microseconds, and small calls (decode steps, tests, finite differences) run
// faster on one thread than on a team that mostly waits.
#pragma once

#include <cstdint>

namespace moe {

// Elements of work (rows x width) below which a loop stays on the calling thread.
constexpr int64_t kParallelMinWork = int64_t{1} << 15;

inline bool worth_threads(int64_t work) {
  return work >= kParallelMinWork;
}

}  // namespace moe
