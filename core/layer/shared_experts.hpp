// Shared experts (DeepSeek-V2/V3, Qwen2-MoE): one MLP every token goes through, added
// to the routed output, optionally times a per-token sigmoid gate (Qwen2-MoE). It runs
// on the layer's backend as a one-expert stage over the whole batch, so each backend's
// expert GEMMs serve it too.
#pragma once

#include "backends/saved_state.hpp"
#include "core/layer/layer.hpp"

namespace moe {

// y += gate * MLP(x) on the call's tokens (tokens routed nowhere, non-finite or masked,
// keep y = 0); saves what backward needs. Nothing without shared experts.
template <typename S>
void shared_experts_forward(const Layer& layer, SavedTensors<S>& saved, S* y);

// The shared experts' weight gradients (those asked for), and their share of dx.
template <typename S>
void shared_experts_backward(const Layer& layer, const SavedTensors<S>& saved,
                             const moe_backward_args_t& args);

}  // namespace moe
