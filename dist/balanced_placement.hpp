// A placement from observed expert load, as DeepSeek's EPLB computes one
// (github.com/deepseek-ai/EPLB, eplb.py): replicate the experts of largest load per
// replica into the redundant slots, then pack the replicas, heaviest first, onto the
// least-loaded rank with a free slot. The hierarchical policy first packs whole experts
// onto nodes (balanced), then replicates and packs within each node. Unlike EPLB, a rank
// never holds two replicas of one expert (its weights hold each expert once).
#pragma once

#include <cstdint>
#include <vector>

namespace moe::dist {

struct BalancedPlacement {
  std::vector<int32_t> slot_expert;  // [num_slots], slot i on rank i / (num_slots / world)
  double imbalance_before = 0.0;     // max/mean rank load, contiguous blocks (1 for no load)
  double imbalance_after = 0.0;      // the same for slot_expert
};

// Throws Error(INVALID_ARGUMENT) for loads that are negative or not finite, num_slots
// not a multiple of world or below num_experts, num_nodes not dividing world and
// num_experts, or more replicas asked than ranks can hold apart.
BalancedPlacement balanced_placement(const std::vector<double>& load, int world, int64_t num_slots,
                                     int num_nodes);

// The ranks' load max/mean for a slot table (each expert's load split evenly over its
// slots); 1 when there is no load.
double rank_imbalance(const std::vector<double>& load, const std::vector<int32_t>& slot_expert,
                      int world);

}  // namespace moe::dist
