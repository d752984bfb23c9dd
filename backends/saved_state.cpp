#include "backends/saved_state.hpp"

#include <algorithm>

namespace moe {

StepStats SavedState::step_stats(const LayerConfig& config, int64_t seq_len) const {
  return collect_step_stats(config, routing, plan, seq_len);
}

void SavedState::copy_routing(int32_t* experts, float* gates, uint8_t* dropped) const {
  const size_t n = routing.expert.size();
  if (experts) std::copy(routing.expert.begin(), routing.expert.end(), experts);
  for (size_t i = 0; gates && i < n; ++i) gates[i] = static_cast<float>(routing.gate[i]);
  if (dropped) std::copy(plan.dropped.begin(), plan.dropped.end(), dropped);
}

}  // namespace moe
