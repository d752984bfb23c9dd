// Renders the metrics of one layer, or of a model's layers together, as JSONL, CSV or
// the Prometheus text exposition format. Every output is well formed whatever the
// layer names hold: names are made valid UTF-8 (each invalid byte becomes U+FFFD), then
// escaped for the format (JSON string escapes, CSV quoting, Prometheus label escapes).
#pragma once

#include <string>
#include <vector>

#include "core/telemetry/metrics.hpp"

namespace moe {

struct ExportLabels {
  std::string layer;
  moe_split_t split;
  moe_scope_t scope;
  int64_t step;
};

// One layer's part of an export.
struct LayerExport {
  const MetricSet* metrics;
  ExportLabels labels;
  int64_t experts;
};

const char* split_name(moe_split_t split);
const char* scope_name(moe_scope_t scope);

// JSONL: a line per layer. CSV: the header line and a row per layer (CSV_HEADER: the
// header alone, CSV_ROW: the rows alone, for appending to a file that has its header).
// Prometheus: each metric's HELP and TYPE once, then its samples of every layer, told
// apart by the layer label. Throws INVALID_ARGUMENT for CSV of layers whose expert
// counts differ (one header cannot name both column sets) and for two layers of one
// name (their series would collide).
std::string export_metrics(moe_export_format_t format, const std::vector<LayerExport>& layers);

// `text` with every byte that is not part of a valid UTF-8 sequence replaced by U+FFFD.
std::string valid_utf8(const std::string& text);

}  // namespace moe
