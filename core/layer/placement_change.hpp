// Changing how an attached layer's experts are placed and exchanged, between steps:
// the exchange options (moe_layer_set_ep_options), moving per-expert tensors to a new
// slot-table placement (moe_layer_move_expert_tensor) and installing it
// (moe_layer_set_placement). Each is collective, and every rank accepts or refuses
// together.
#pragma once

#include <cstdint>

#include "core/layer/layer.hpp"

namespace moe::dist {

void set_ep_options(Layer& layer, const moe_ep_options_t& options);

void move_expert_tensor(Layer& layer, const int32_t* slot_expert, int64_t num_slots,
                        const void* src, void* dst, int64_t bytes_per_expert);

void set_placement(Layer& layer, const int32_t* slot_expert, int64_t num_slots);

}  // namespace moe::dist
