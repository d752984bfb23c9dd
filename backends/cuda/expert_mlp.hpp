// The experts' two-layer MLP over an expert-grouped row buffer, forward and backward:
// grouped products on cuBLAS around the bias and activation kernels. Both pipelines
// run it: over every expert's rows, or under expert parallelism over the rows this
// rank's experts received from the group.
#pragma once

#include <cuda_runtime_api.h>

#include "backends/cuda/event_timer.hpp"
#include "backends/cuda/layer_state.hpp"

namespace moe::cuda {

// Uploads the layout's offsets, finds each row's expert and allocates the activations.
void prepare_expert_rows(const LayerConfig& c, ExpertRows& rows, ExpertLayout layout,
                         int64_t experts, cudaStream_t stream);

// xp -> h_pre, h, yp with the bound (this rank's) expert weights.
void experts_forward(LayerState& state, cudaStream_t stream, const LayerConfig& c,
                     const BoundWeights& w, ExpertRows& rows, EventTimer& timer);

// dyp (zero on padding rows) -> the expert weight gradients that are given, and dxp
// when it is not null.
void experts_backward(LayerState& state, cudaStream_t stream, const LayerConfig& c,
                      const BoundWeights& w, const moe_weights_t& grads, bool accumulate,
                      const ExpertRows& rows, const void* dyp, void* dxp, EventTimer& timer);

}  // namespace moe::cuda
