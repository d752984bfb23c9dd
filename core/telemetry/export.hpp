// Renders a MetricSet as JSONL, CSV or the Prometheus text exposition format.
#pragma once

#include <string>

#include "core/telemetry/metrics.hpp"

namespace moe {

struct ExportLabels {
  std::string layer;
  moe_split_t split;
  moe_scope_t scope;
  int64_t step;
};

const char* split_name(moe_split_t split);
const char* scope_name(moe_scope_t scope);

std::string export_metrics(moe_export_format_t format, const MetricSet& metrics,
                           const ExportLabels& labels, int64_t experts);

}  // namespace moe
