// A layer: its resolved config, its backend, the caller's bound weights, and the
// little state that training changes (step counter, selection bias, hash table).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backends/backend.hpp"
#include "backends/saved_state.hpp"
#include "core/config.hpp"
#include "core/hash_router.hpp"
#include "core/host_buffer.hpp"
#include "core/layer/global_aux_counts.hpp"
#include "core/plan.hpp"
#include "core/router.hpp"
#include "core/telemetry/layer_telemetry.hpp"
#include "dist/dispatch.hpp"
#include "dist/expert_parallel.hpp"

namespace moe {

class Layer {
 public:
  explicit Layer(const LayerConfig& config);

  const LayerConfig config;
  Backend& backend;
  const uint64_t serial;  // tells saved states of different layers apart
  BoundWeights weights;
  std::vector<double> selection_bias;  // [E]
  int64_t step = 0;
  HashTable hash_table;
  uint64_t hash_table_generation = 0;  // bumped by every build, so device copies know to refresh
  void* stream = nullptr;              // the caller's device stream (cudaStream_t), if any
  std::unique_ptr<BackendState> backend_state;
  LayerTelemetry telemetry;
  std::string name;
  moe_verdict_thresholds_t thresholds;
  moe_stage_profile_t profile = MOE_STAGE_PROFILE_INIT;
  std::unique_ptr<dist::ExpertParallel> ep;  // set while a communicator is attached
  GlobalAuxCounts global_aux;                // aux_loss_scope global
  // [E] each expert's pre-drop batch demand, summed over the training forwards since
  // the last reset (moe_layer_expert_load): the load a placement balances.
  std::vector<double> expert_load;
  // A forward whose counts had not reached the host when it returned: its bookkeeping
  // runs (settle_pending_forward) before the layer or that context is next used.
  struct PendingForward {
    SavedState* saved = nullptr;
    bool train = false;
    bool recompute = false;
    int64_t seq_len = 0;
  } pending_forward;
  // The thread inside a C call on this layer, if any (layer_entry.hpp).
  std::atomic<std::thread::id> entered_by{};

  // What a device pipeline sees of this layer for one call.
  DeviceLayer device_view();

  // Experts whose weights this rank holds: all, or its share under expert parallelism.
  int64_t experts_held() const { return ep ? ep->local_expert_count() : config.num_experts; }
};

}  // namespace moe

// The opaque ABI handles.
struct moe_layer {
  explicit moe_layer(const moe::LayerConfig& config) : impl(config) {}
  moe::Layer impl;
};

struct moe_ctx {
  std::unique_ptr<moe::SavedState> state;
};
