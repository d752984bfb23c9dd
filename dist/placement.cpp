#include "dist/placement.hpp"

#include <algorithm>
#include <numeric>
#include <string>

#include "core/error.hpp"

namespace moe::dist {
namespace {

// Everything that follows from `holders`.
void complete(Placement& p) {
  const int64_t E = static_cast<int64_t>(p.holders.size());
  p.owner.resize(E);
  p.local_experts.clear();
  p.owned_experts.clear();
  for (int64_t e = 0; e < E; ++e) {
    p.owner[e] = p.holders[e].front();
    if (p.owner[e] == p.rank) p.owned_experts.push_back(static_cast<int32_t>(e));
  }
  p.local_experts = p.experts_of_rank(p.rank);
  std::vector<int64_t> held(p.world, 0);
  p.holder_index.assign(E, {});
  for (int64_t e = 0; e < E; ++e)
    for (int32_t r : p.holders[e]) p.holder_index[e].push_back(held[r]++);
  p.send_order.resize(E);
  std::iota(p.send_order.begin(), p.send_order.end(), 0);
  std::stable_sort(p.send_order.begin(), p.send_order.end(),
                   [&](int32_t a, int32_t b) { return p.owner[a] < p.owner[b]; });
}

}  // namespace

bool Placement::replicated() const {
  return std::any_of(holders.begin(), holders.end(), [](const auto& h) { return h.size() > 1; });
}

std::vector<int32_t> Placement::experts_of_rank(int r) const {
  std::vector<int32_t> experts;
  for (size_t e = 0; e < holders.size(); ++e)
    if (std::binary_search(holders[e].begin(), holders[e].end(), r))
      experts.push_back(static_cast<int32_t>(e));
  return experts;
}

Placement make_placement(int64_t num_experts, int world, int rank, const int32_t* owner) {
  Placement p;
  p.world = world;
  p.rank = rank;
  p.holders.resize(num_experts);
  for (int64_t e = 0; e < num_experts; ++e) {
    if (owner) {
      require(owner[e] >= 0 && owner[e] < world, MOE_STATUS_INVALID_ARGUMENT,
              "expert_owner[" + std::to_string(e) + "] = " + std::to_string(owner[e]) +
                  " is not a rank in [0, " + std::to_string(world) + ")");
      p.holders[e] = {owner[e]};
    } else {
      p.holders[e] = {static_cast<int32_t>(e * world / num_experts)};
    }
  }
  complete(p);
  return p;
}

Placement make_slot_placement(int64_t num_experts, int world, int rank, const int32_t* slot_expert,
                              int64_t num_slots) {
  require(slot_expert != nullptr, MOE_STATUS_NULL_POINTER, "slot_expert is NULL");
  require(num_slots > 0 && num_slots % world == 0, MOE_STATUS_INVALID_ARGUMENT,
          "num_slots = " + std::to_string(num_slots) +
              " must be a positive multiple of the world size " + std::to_string(world) +
              " (each rank holds num_slots / world slots)");
  require(num_slots <= int64_t{1} << 24, MOE_STATUS_INVALID_ARGUMENT,
          "num_slots = " + std::to_string(num_slots) + " is more than 2^24");
  Placement p;
  p.world = world;
  p.rank = rank;
  p.holders.resize(num_experts);
  const int64_t per_rank = num_slots / world;
  for (int64_t i = 0; i < num_slots; ++i) {
    const int32_t e = slot_expert[i];
    const int32_t r = static_cast<int32_t>(i / per_rank);
    if (e == -1) continue;
    require(e >= 0 && e < num_experts, MOE_STATUS_INVALID_ARGUMENT,
            "slot_expert[" + std::to_string(i) + "] = " + std::to_string(e) +
                " is neither an expert in [0, " + std::to_string(num_experts) +
                ") nor -1 (an empty slot)");
    require(p.holders[e].empty() || p.holders[e].back() != r, MOE_STATUS_INVALID_ARGUMENT,
            "slot_expert[" + std::to_string(i) + "]: rank " + std::to_string(r) +
                " already holds expert " + std::to_string(e) +
                " in another slot (a rank holds each expert at most once)");
    p.holders[e].push_back(r);
  }
  for (int64_t e = 0; e < num_experts; ++e)
    require(!p.holders[e].empty(), MOE_STATUS_INVALID_ARGUMENT,
            "expert " + std::to_string(e) + " has no slot: every expert needs at least one");
  p.slot_expert.assign(slot_expert, slot_expert + num_slots);
  complete(p);
  return p;
}

}  // namespace moe::dist
