// Expert placement: which ranks hold each expert. Contiguous blocks by default (expert
// e on rank floor(e * world / E), so block sizes differ by at most one), the caller's
// explicit expert-to-rank map, or a slot table in the shape of DeepSeek's EPLB
// (physical_to_logical): `num_slots` slots split evenly over the ranks, each slot
// holding one expert or none, so that an expert may live on several ranks (replicas).
#pragma once

#include <cstdint>
#include <vector>

namespace moe::dist {

struct Placement {
  int world = 1;
  int rank = 0;
  // [E] the lowest rank holding each expert: it decides the probability drop policy for
  // the expert, and is the expert's only holder unless the placement has replicas.
  std::vector<int32_t> owner;
  std::vector<std::vector<int32_t>> holders;  // [E] ranks holding each expert, ascending
  std::vector<std::vector<int64_t>>
      holder_index;                    // [E] the expert's index in each holder's weights
  std::vector<int32_t> local_experts;  // this rank's experts, ascending: its weights' order
  std::vector<int32_t> owned_experts;  // the experts this rank is the owner of, ascending
  std::vector<int32_t> send_order;     // [E] experts by (owner, id): the exchange's order
  // The slot table the placement came from ([] for an owner map; -1: an empty slot).
  std::vector<int32_t> slot_expert;

  bool replicated() const;
  std::vector<int32_t> experts_of_rank(int r) const;
};

// `owner` may be null (contiguous blocks); else [num_experts] ranks in [0, world).
Placement make_placement(int64_t num_experts, int world, int rank, const int32_t* owner);

// `slot_expert` [num_slots]: the expert of each slot, or -1; slot i lives on rank
// i / (num_slots / world). Every expert needs a slot, and no rank may hold an expert
// twice. Throws Error(INVALID_ARGUMENT) naming the slot otherwise.
Placement make_slot_placement(int64_t num_experts, int world, int rank, const int32_t* slot_expert,
                              int64_t num_slots);

}  // namespace moe::dist
