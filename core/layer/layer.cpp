#include "core/layer/layer.hpp"

#include <atomic>

#include "core/layer/backend_registry.hpp"
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
      thresholds(default_thresholds()),
      global_aux(cfg.num_experts),
      expert_load(static_cast<size_t>(cfg.num_experts), 0.0) {}

DeviceLayer Layer::device_view() {
  return DeviceLayer{
      config,         weights,    *backend_state,        stream,          serial,  step,
      selection_bias, hash_table, hash_table_generation, telemetry.due(), ep.get()};
}

}  // namespace moe
