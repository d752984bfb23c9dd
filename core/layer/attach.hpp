// Attaching a communicator to a layer (moe_layer_set_comm) and the collectives a
// caller runs on an attached layer's behalf.
#pragma once

#include <cstdint>

#include "core/layer/layer.hpp"
#include "dist/communicator.hpp"

namespace moe::dist {

// Collective unless comm is null (detach). Checks that every rank's layer is
// configured alike and that the expert map is the same everywhere.
void attach(Layer& layer, Communicator* comm, const int32_t* expert_owner, int64_t count);

// Sums a [d_model, E] host tensor of the layer's dtype over the group, in rank order.
void reduce_router_grad(Layer& layer, const moe_tensor_t& grad);

}  // namespace moe::dist
