// The layer's forward and backward passes: router -> plan -> permute -> (exchange) ->
// experts -> (exchange) -> combine, and the same in reverse. Inputs are validated
// here, before any state changes, so a rejected call leaves the layer as it was.
#pragma once

#include <memory>

#include "core/error.hpp"
#include "core/layer/layer.hpp"

namespace moe {

void bind_weights(Layer& layer, const moe_weights_t& weights);

std::unique_ptr<SavedState> forward(Layer& layer, const moe_forward_args_t& args);

void backward(Layer& layer, const SavedState& saved, const moe_backward_args_t& args);
// Runs the bookkeeping of a forward that returned before its counts reached the host
// (SavedState::counts_pending): waits for them, then losses, telemetry, selection bias,
// expert load and step, as forward would have. Nothing to do when none is pending.
void settle_pending_forward(Layer& layer);

// A call refused before its arguments could be read (a NULL args struct, an invalid
// ctx): under expert parallelism the rank still checks in, so that the group's call
// fails on every rank instead of leaving the others to the timeout. Throws.
[[noreturn]] void refuse_forward(Layer& layer, const Error& error);
[[noreturn]] void refuse_backward(Layer& layer, const Error& error);

}  // namespace moe
