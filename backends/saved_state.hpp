// What forward leaves for backward: the routing decision, the plan, and the typed
// buffers the backward stages read. The host pipeline fills SavedTensors<S>; a device
// pipeline derives its own (backends/cuda/layer_state.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/config.hpp"
#include "core/host_buffer.hpp"
#include "core/plan.hpp"
#include "core/router.hpp"
#include "core/telemetry/step_stats.hpp"
#include "dist/dispatch.hpp"

namespace moe {

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

  // A device pipeline may return from forward before the call's counts reach the host,
  // so that forward issues no host synchronisation (static shapes: capacity mode with
  // pad_to_capacity, docs/cuda.md#no-host-synchronisation). Then `counts_pending` is
  // set; settle_counts() waits for the counts and fills routing and plan, and the core
  // runs the call's bookkeeping (losses, telemetry, bias, step) through `settle` before
  // anything reads them. A forward issued while its stream was capturing a CUDA graph
  // (`captured`) never gets its counts: the core does no bookkeeping for it.
  virtual void settle_counts() {}
  bool counts_pending = false;
  bool captured = false;
  std::function<void()> settle;  // set by the core while the bookkeeping waits

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
  host_buffer<S> shared_h_pre, shared_h, shared_y;  // the shared experts' MLP, [T, width]
  std::vector<double> shared_gate;                  // [T] sigmoid(x . shared_gate), if gated
};

}  // namespace moe
