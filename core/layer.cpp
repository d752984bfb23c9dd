#include "core/layer.hpp"

#include <atomic>

namespace moe {
namespace {
std::atomic<uint64_t> next_serial{1};
}

Layer::Layer(const LayerConfig& cfg)
    : config(cfg),
      backend(select_backend(cfg.backend, cfg)),
      serial(next_serial.fetch_add(1)),
      selection_bias(static_cast<size_t>(cfg.num_experts), 0.0) {}

}  // namespace moe
