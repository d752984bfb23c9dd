// Expert parallelism on the cuda backend. Routing stays on the device; the routing
// decision and its counts come to the host, where dist::make_dispatch decides the
// capacity, the drops and the losses over the group exactly as for a host layer. Token
// rows travel through the layer's communicator: in device memory with NCCL, staged
// through host memory with MPI. Each exchange waits for the rows it sends, so a step
// synchronises a few times more than the single-process pipeline's once.
#pragma once

#include "backends/cuda/event_timer.hpp"
#include "backends/cuda/layer_state.hpp"
#include "dist/check_in.hpp"

namespace moe::cuda {

// After routing (`s` holds the decision and the device summary): the group's dispatch,
// rows out to the experts' owners, this rank's experts, rows back, combine into y.
// Reads the step's statistics back when telemetry is due.
void forward_expert_parallel(const DeviceLayer& layer, LayerState& state, SavedOnDevice& s,
                             const moe_forward_args_t& args, const dist::ForwardCheckIn& group,
                             EventTimer& timer);

// The mirror image: dy's rows to the experts' owners, the expert gradients, dx's rows
// back into dx (when given). Fills dgate [T, k] (float32). Collective even where this
// rank has no tokens or no experts.
void backward_expert_parallel(const DeviceLayer& layer, LayerState& state, const SavedOnDevice& s,
                              const moe_backward_args_t& args, float* dgate, EventTimer& timer);

}  // namespace moe::cuda
