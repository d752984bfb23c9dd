// The verdicts of docs/metrics.md (verdicts): balance from the counts, specialisation from
// the router's per-token probabilities, capacity pressure from the drops.
#pragma once

#include "core/config.hpp"
#include "core/telemetry/metrics.hpp"

namespace moe {

moe_verdict_thresholds_t default_thresholds();

moe_verdicts_t judge(const MetricSet& metrics, const LayerConfig& config,
                     const moe_verdict_thresholds_t& thresholds, int64_t train_steps);

}  // namespace moe
