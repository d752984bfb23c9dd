// A layer's exchange options, expert load and slot-table placements
// (docs/distributed.md, "One copy per rank" and "Placement from load").
#include <algorithm>
#include <string>
#include <vector>

#include "core/abi/entry.hpp"
#include "core/layer/placement_change.hpp"
#include "core/sized_struct.hpp"
#include "dist/balanced_placement.hpp"

using namespace moe::abi;  // guarded, the handle lookups, the shared checks (entry.hpp)

extern "C" {

moe_status_t moe_layer_set_ep_options(moe_layer_t layer, const moe_ep_options_t* options) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    const moe_ep_options_t defaults = MOE_EP_OPTIONS_INIT;
    moe::dist::set_ep_options(l, moe::read_sized(options, defaults, "options"));
  });
}

moe_status_t moe_layer_get_ep_options(const_moe_layer_t layer, moe_ep_options_t* options) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    moe_ep_options_t out = MOE_EP_OPTIONS_INIT;
    if (l.ep) {
      out.dedup = l.ep->dedup ? 1 : 0;
      out.chunks = static_cast<int32_t>(l.ep->chunks);
    }
    moe::write_sized(options, out, "options");
  });
}

moe_status_t moe_layer_expert_load(moe_layer_t layer, double* load, int64_t count, int32_t reset) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    const int64_t E = l.config.num_experts;
    moe::require(load != nullptr || reset, MOE_STATUS_NULL_POINTER,
                 "load is NULL (it may be NULL only to reset the window)");
    if (load) {
      moe::require(count >= E, MOE_STATUS_SHAPE_MISMATCH,
                   "count is " + std::to_string(count) + ", the layer has " + std::to_string(E) +
                       " experts");
      std::copy(l.expert_load.begin(), l.expert_load.end(), load);
    }
    if (reset) std::fill(l.expert_load.begin(), l.expert_load.end(), 0.0);
  });
}

moe_status_t moe_placement_from_load(const double* load, int64_t num_experts, int32_t world,
                                     int64_t num_slots, int32_t num_nodes, int32_t* slot_expert,
                                     double* imbalance_before, double* imbalance_after) {
  return guarded(__func__, [&] {
    require_pointer(load, "load");
    require_pointer(slot_expert, "slot_expert");
    moe::require(num_experts >= 1 && num_experts <= int64_t{1} << 20, MOE_STATUS_INVALID_ARGUMENT,
                 "num_experts = " + std::to_string(num_experts) + " must be in [1, 2^20]");
    moe::require(world >= 1 && num_slots >= 1 && num_slots <= int64_t{1} << 24,
                 MOE_STATUS_INVALID_ARGUMENT,
                 "world must be >= 1 and num_slots in [1, 2^24], got world " +
                     std::to_string(world) + ", num_slots " + std::to_string(num_slots));
    const moe::dist::BalancedPlacement p = moe::dist::balanced_placement(
        std::vector<double>(load, load + num_experts), world, num_slots, num_nodes);
    std::copy(p.slot_expert.begin(), p.slot_expert.end(), slot_expert);
    if (imbalance_before) *imbalance_before = p.imbalance_before;
    if (imbalance_after) *imbalance_after = p.imbalance_after;
  });
}

moe_status_t moe_layer_move_expert_tensor(moe_layer_t layer, const int32_t* slot_expert,
                                          int64_t num_slots, const void* src, void* dst,
                                          int64_t bytes_per_expert) {
  return guarded(__func__, [&] {
    moe::dist::move_expert_tensor(layer_of(layer), slot_expert, num_slots, src, dst,
                                  bytes_per_expert);
  });
}

moe_status_t moe_layer_set_placement(moe_layer_t layer, const int32_t* slot_expert,
                                     int64_t num_slots) {
  return guarded(__func__,
                 [&] { moe::dist::set_placement(layer_of(layer), slot_expert, num_slots); });
}

}  // extern "C"
