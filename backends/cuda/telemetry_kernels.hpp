// The routing statistics of one forward call (core/telemetry/step_stats.hpp) summed on
// the device, so that telemetry reads back a few hundred bytes with the step's counts
// instead of copying the probabilities and the routing decision to the host.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/portable.hpp"
#include "core/telemetry/step_stats.hpp"

namespace moe::cuda {

// Where each statistic lands in the result (int64 words; the first kDoubles words hold
// doubles).
struct StatsLayout {
  int64_t experts;
  static constexpr int kDoubles = 7;
  enum Double { kEntropy, kTop1, kTopkMass, kMargin, kLogitMaxAbs, kSeqOverlap, kSeqCosine };
  MOE_HOST_DEVICE int64_t tokens_fully_dropped() const { return kDoubles; }
  MOE_HOST_DEVICE int64_t seq_pairs() const { return kDoubles + 1; }
  MOE_HOST_DEVICE int64_t seq_same_top1() const { return kDoubles + 2; }
  MOE_HOST_DEVICE int64_t coactivation() const { return kDoubles + 3; }  // E * E, or none
  MOE_HOST_DEVICE int64_t coactivation_words() const {
    return keeps_coactivation(experts) ? experts * experts : 0;
  }
  MOE_HOST_DEVICE int64_t words() const { return kDoubles + 3 + coactivation_words(); }
};

struct StatsInputs {
  int64_t tokens = 0, experts = 0, slots = 0, top_k = 0;
  int64_t seq_len = 0;  // 0: no sequence metrics
  bool expert_choice = false;
  const float* prob = nullptr;    // [T, E]
  const float* logits = nullptr;  // [T, E], or null (hash router)
  const uint8_t* nonfinite = nullptr;
  const int32_t* experts_of = nullptr;  // [T, slots]
  const float* gates = nullptr;         // [T, slots]
  const uint8_t* dropped = nullptr;     // [T, slots]
};

// Fills `out` (StatsLayout::words() int64 words). Fixed grid and tree reductions:
// the same bits run after run.
void step_stats(const StatsInputs& in, int64_t* out, cudaStream_t stream);

}  // namespace moe::cuda
