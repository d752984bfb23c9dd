// Stage "plan": from the routing decision to per-expert demand, capacity, drop
// decisions and the permutation that groups token copies by expert. Integer-only.
#pragma once

#include <cstdint>
#include <vector>

#include "core/config.hpp"

namespace moe {

struct Plan {
  int64_t tokens = 0;
  int64_t slots = 0;
  int64_t capacity = 0;               // C as docs/metrics.md defines it (dropless: max demand)
  int64_t rows = 0;                   // rows of the expert-contiguous buffer
  std::vector<int64_t> demand;        // [E] d_e
  std::vector<int64_t> served;        // [E] s_e
  std::vector<int32_t> order;         // [E] experts in buffer order (ascending, unless
                                      // expert parallelism groups them by owner)
  std::vector<int64_t> offset;        // [E+1] first buffer row of order[i]
  std::vector<uint8_t> dropped;       // [T*slots] 1: chosen but over capacity
  std::vector<int64_t> row;           // [T*slots] buffer row of a kept copy, else -1
  std::vector<int64_t> token_of_row;  // [rows] source token, -1 for padding

  // Rows of the i-th expert in buffer order (of expert i when the order is ascending).
  int64_t rows_of(int64_t i) const { return offset[i + 1] - offset[i]; }
  int64_t dropped_total() const;
};

// `expert` and `gate_rank` are [T*slots]; gate_rank orders copies for the
// probability drop policy (higher first); fill_priority is what the capacity order
// reads (Routing::fill_priority). `fixed_capacity` >= 0 imposes C (expert choice);
// otherwise C follows the config.
Plan make_plan(const LayerConfig& config, int64_t tokens, const std::vector<int32_t>& expert,
               const std::vector<double>& gate_rank, const std::vector<double>& fill_priority,
               int64_t fixed_capacity);

// A plan whose drops were decided elsewhere (expert parallelism decides them over the
// whole group). Rows are grouped by expert in `order`, each expert's copies in token
// order, and never padded.
Plan plan_from_drops(const LayerConfig& config, int64_t tokens, const std::vector<int32_t>& expert,
                     std::vector<uint8_t> dropped, int64_t capacity,
                     const std::vector<int32_t>& order);

// The position policy: copies claim their expert's capacity in the config's
// capacity_order (token; slot-major, as GShard, Switch and DeepSpeed; slot-major by
// falling top-1 probability, as V-MoE's batch-prioritized routing; by falling random
// draw, as DeepSpeed's random token selection), each expert keeping the first `capacity`
// it meets, where `ahead[e]` copies of expert e come before these (on lower ranks).
// `priority` is Routing::fill_priority. [copies]
std::vector<uint8_t> ordered_position_drops(const LayerConfig& config,
                                            const std::vector<int32_t>& expert, int64_t slots,
                                            const std::vector<double>& priority, int64_t capacity,
                                            std::vector<int64_t> ahead);

// The probability policy for one expert's copies in batch order: the `capacity`
// highest gates are kept, ties to the earlier copy. Marks the rest in `dropped`.
void drop_lowest_gates(const std::vector<double>& gates, int64_t capacity, uint8_t* dropped);

// Copies chosen per expert, before drops (d_e): [num_experts].
std::vector<int64_t> demand_of(const std::vector<int32_t>& expert, int64_t num_experts);

// The config's C for a batch of `tokens` with pre-drop `demand` [E]: the capacity
// factor's, or when dropless the largest demand.
int64_t configured_capacity(const LayerConfig& config, int64_t tokens,
                            const std::vector<int64_t>& demand);

// C = ceil(capacity_factor * T*k/E) for the factor as the caller wrote it in decimal (a
// product within a few ulps of an integer is that integer), at most T*k.
int64_t capacity_for(double capacity_factor, int64_t tokens, int64_t top_k, int64_t num_experts);

}  // namespace moe
