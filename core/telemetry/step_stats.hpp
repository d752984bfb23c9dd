// Sufficient statistics of routing: what one forward call (or a window of them) saw,
// kept as sums so that a window is the sum of its steps and every metric of
// docs/metrics.md derives from it (metrics.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "core/portable.hpp"

namespace moe {

struct Routing;
struct Plan;
struct LayerConfig;

// The co-activation matrix is E x E counts per statistics record (a layer keeps several,
// and a window one more): it is kept up to this many experts, and left empty above, where
// the co-activation metrics are undefined (docs/limits.md). 256 experts: 512 KiB each.
constexpr int64_t kMaxCoactivationExperts = 256;
MOE_HOST_DEVICE inline bool keeps_coactivation(int64_t experts) {
  return experts <= kMaxCoactivationExperts;
}

struct StepStats {
  int64_t experts = 0;
  int64_t steps = 0;
  int64_t tokens = 0;          // T, summed
  int64_t valid_tokens = 0;    // tokens with finite logits
  int64_t nominal_copies = 0;  // T * k, summed
  int64_t nonfinite_rows = 0;
  int64_t tokens_fully_dropped = 0;
  int64_t capacity_sum = 0;
  std::vector<int64_t> demand, served;  // [E]
  std::vector<int64_t> coactivation;    // [E*E]: tokens that chose both i and j (i == j: d_i);
                                        // empty unless keeps_coactivation(E)
  std::vector<double> importance;       // [E]: sum over valid tokens of P[t,e]
  double entropy_sum = 0, top1_sum = 0, topk_mass_sum = 0, margin_sum = 0;
  double logit_max_abs = 0;
  double aux_weighted = 0, z_weighted = 0;  // loss * valid tokens, for token-weighted means
  int64_t seq_pairs = 0, seq_same_top1 = 0;
  double seq_overlap_sum = 0, seq_cosine_sum = 0;
  // [world] under expert parallelism: the expert copies each rank computed (its experts'
  // load, what vLLM's and SGLang's balancedness compare); empty without a communicator.
  // Not in to_values: dist::batch_step_stats gathers it beside the other fields. A window
  // sums it over the calls made with the same number of ranks and keeps the latest
  // world's sums when that changes; rank_steps counts the calls summed, so that a window
  // with calls of another world or of none has no rank metrics.
  std::vector<int64_t> rank_load;
  int64_t rank_steps = 0;  // steps whose rank_load is summed: the rank metrics need all

  // with_coactivation false: no co-activation matrix even for a small E (moe-stats, whose
  // counts logs hold no pairs).
  explicit StepStats(int64_t num_experts = 0, bool with_coactivation = true);
  void add(const StepStats& other);
  // Every field as doubles (exact for counts below 2^53), to send to other ranks.
  std::vector<double> to_values() const;
  static StepStats from_values(int64_t num_experts, const double* values);
};

// The router's first choice for one token: slot 0 under token choice (the highest
// selection key); under expert choice, the expert that took the token with the highest
// gate (there the gate is P[t,e]); -1 if none.
template <typename Gate>
MOE_HOST_DEVICE int32_t first_choice(const int32_t* experts, const Gate* gates, int64_t slots,
                                     bool expert_choice) {
  if (!expert_choice) return experts[0];
  int64_t best = -1;
  for (int64_t j = 0; j < slots; ++j)
    if (experts[j] >= 0 && (best < 0 || gates[j] > gates[best])) best = j;
  return best < 0 ? -1 : experts[best];
}

// The fields that follow from the counts and losses alone (steps, tokens, demand,
// served, capacity, weighted losses); the per-token sums are left at zero.
StepStats count_step_stats(const LayerConfig& config, const Routing& routing, const Plan& plan);

// The statistics of one forward call from its routing decision and plan (host data).
StepStats collect_step_stats(const LayerConfig& config, const Routing& routing, const Plan& plan,
                             int64_t seq_len);

}  // namespace moe
