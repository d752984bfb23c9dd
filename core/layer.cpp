#include "core/layer.hpp"

#include <algorithm>
#include <atomic>

#include "core/telemetry/verdicts.hpp"

namespace moe {
namespace {
std::atomic<uint64_t> next_serial{1};
}

Layer::Layer(const LayerConfig& cfg)
    : config(cfg),
      backend(select_backend(cfg.backend, cfg)),
      serial(next_serial.fetch_add(1)),
      selection_bias(static_cast<size_t>(cfg.num_experts), 0.0),
      backend_state(backend.create_state(cfg)),
      telemetry(cfg.num_experts, cfg.telemetry_interval, cfg.telemetry_ema_decay),
      name("layer" + std::to_string(serial)),
      thresholds(default_thresholds()) {}

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
