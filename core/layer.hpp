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
#include "core/config.hpp"
#include "core/hash_router.hpp"
#include "core/host_buffer.hpp"
#include "core/plan.hpp"
#include "core/router.hpp"
#include "core/telemetry/layer_telemetry.hpp"
#include "dist/dispatch.hpp"
#include "dist/expert_parallel.hpp"

namespace moe {

struct BoundWeights {
  bool bound = false;
  moe_tensor_t router{}, w1{}, b1{}, w2{}, b2{};
};

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
  // The thread inside a C call on this layer, if any (layer_entry.hpp).
  std::atomic<std::thread::id> entered_by{};

  // Experts whose weights this rank holds: all, or its share under expert parallelism.
  int64_t experts_held() const { return ep ? ep->local_expert_count() : config.num_experts; }
};

// What forward leaves for backward. Typed buffers live in SavedTensors<S>.
struct SavedState {
  virtual ~SavedState() = default;
  // The routing decision into caller host buffers of T*slots (each may be null).
  virtual void copy_routing(int32_t* experts, float* gates, uint8_t* dropped) const;
  // The routing statistics of this call, for telemetry.
  virtual StepStats step_stats(const LayerConfig& config, int64_t seq_len) const;
  uint64_t layer_serial = 0;
  moe_dtype_t dtype = MOE_DTYPE_F32;
  bool expert_choice = false;  // slots are experts, not ranked choices
  Routing routing;
  Plan plan;  // this rank's tokens; under expert parallelism, rows in send order
  std::unique_ptr<dist::Dispatch> dispatch;  // expert parallelism only
  moe_losses_t losses = MOE_LOSSES_INIT;

  // The batch's pre-drop demand per expert (the group's under expert parallelism).
  const std::vector<int64_t>& batch_demand() const {
    return dispatch ? dispatch->batch_demand : plan.demand;
  }
};

template <typename S>
struct SavedTensors final : SavedState {
  host_buffer<S> x;                 // [T,d], rows that were routed nowhere are zeroed
  host_buffer<S> xp, h_pre, h, yp;  // the experts' rows (this rank's experts')
  host_buffer<S> returned;          // expert parallelism: yp of this rank's copies, send order
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
