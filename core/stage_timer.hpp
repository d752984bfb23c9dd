// Lap timing for the stage profile (moe_layer_stage_profile): each lap() returns the
// seconds since the previous lap (or construction).
#pragma once

#include <chrono>

namespace moe {

class StageTimer {
 public:
  double lap() {
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    return seconds;
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

}  // namespace moe
