// The metric catalogue of docs/metrics.md and its derivation from StepStats. Every name
// that crosses the ABI, the binding or an export comes from catalogue().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/config.hpp"
#include "core/telemetry/step_stats.hpp"
#include "moe/moe.h"

namespace moe {

struct MetricInfo {
  const char* name;
  moe_metric_shape_t shape;
  const char* help;
};

// Scalars first, then per-expert vectors, then the co-activation matrix.
const std::vector<MetricInfo>& catalogue();
int metric_index(const std::string& name);  // -1 if unknown

// values[i] holds metric i of the catalogue: 1, E or E*E numbers. NaN where a metric is
// undefined (no tokens, no pairs, no sequences).
struct MetricSet {
  std::vector<std::vector<double>> values;
  // Under expert parallelism: each rank's load L_r (docs/metrics.md, expert-parallel
  // ranks), beside the catalogue (its length is the group's, not E); empty where the
  // rank metrics are undefined. The JSONL export writes it as "rank_load".
  std::vector<int64_t> rank_load;
  double scalar(const char* name) const;
};

MetricSet compute_metrics(const StepStats& stats, const LayerConfig& config);

}  // namespace moe
