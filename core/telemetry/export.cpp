#include "core/telemetry/export.hpp"

#include <cmath>
#include <cstdio>

namespace moe {
namespace {

std::string number(double v, bool json) {
  if (std::isnan(v)) return json ? "null" : "NaN";
  if (std::isinf(v)) return json ? "null" : (v > 0 ? "+Inf" : "-Inf");
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.17g", v);
  return buffer;
}

// Names are ours (letters, digits, underscores); layer names are escaped.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

std::string jsonl(const MetricSet& m, const ExportLabels& l) {
  std::string out = "{\"step\":" + std::to_string(l.step) + ",\"layer\":" + quoted(l.layer) +
                    ",\"split\":\"" + split_name(l.split) + "\",\"scope\":\"" +
                    scope_name(l.scope) + "\"";
  for (size_t i = 0; i < catalogue().size(); ++i) {
    const auto& values = m.values[i];
    out += ",\"" + std::string(catalogue()[i].name) + "\":";
    if (catalogue()[i].shape == MOE_METRIC_SCALAR) {
      out += number(values[0], true);
      continue;
    }
    out += "[";
    for (size_t j = 0; j < values.size(); ++j) out += (j ? "," : "") + number(values[j], true);
    out += "]";
  }
  return out + "}\n";
}

std::string csv(const MetricSet& m, const ExportLabels& l, int64_t E) {
  std::string header = "step,layer,split,scope", row;
  row = std::to_string(l.step) + "," + l.layer + "," + split_name(l.split) + "," +
        scope_name(l.scope);
  for (size_t i = 0; i < catalogue().size(); ++i) {
    const std::string name = catalogue()[i].name;
    const auto& values = m.values[i];
    for (size_t j = 0; j < values.size(); ++j) {
      std::string column = name;
      if (catalogue()[i].shape == MOE_METRIC_PER_EXPERT) column += "_e" + std::to_string(j);
      if (catalogue()[i].shape == MOE_METRIC_MATRIX)
        column += "_" + std::to_string(static_cast<int64_t>(j) / E) + "_" +
                  std::to_string(static_cast<int64_t>(j) % E);
      header += "," + column;
      row += "," + number(values[j], false);
    }
  }
  return header + "\n" + row + "\n";
}

std::string prometheus(const MetricSet& m, const ExportLabels& l, int64_t E) {
  std::string labels = "layer=" + quoted(l.layer) + ",split=\"" + split_name(l.split) +
                       "\",scope=\"" + scope_name(l.scope) + "\"";
  std::string out;
  for (size_t i = 0; i < catalogue().size(); ++i) {
    const std::string name = std::string("moe_") + catalogue()[i].name;
    // Prometheus reserves the _total suffix for counters; dropped_total keeps its
    // contract name and is a counter (monotonic in the window scope, which is the one
    // to scrape).
    const bool counter = name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0;
    out += "# HELP " + name + " " + catalogue()[i].help + "\n# TYPE " + name +
           (counter ? " counter\n" : " gauge\n");
    const auto& values = m.values[i];
    for (size_t j = 0; j < values.size(); ++j) {
      std::string extra;
      if (catalogue()[i].shape == MOE_METRIC_PER_EXPERT)
        extra = ",expert=\"" + std::to_string(j) + "\"";
      if (catalogue()[i].shape == MOE_METRIC_MATRIX)
        extra = ",expert=\"" + std::to_string(static_cast<int64_t>(j) / E) + "\",other=\"" +
                std::to_string(static_cast<int64_t>(j) % E) + "\"";
      out += name + "{" + labels + extra + "} " + number(values[j], false) + "\n";
    }
  }
  return out;
}

}  // namespace

const char* split_name(moe_split_t split) {
  return split == MOE_SPLIT_EVAL ? "eval" : "train";
}

const char* scope_name(moe_scope_t scope) {
  return scope == MOE_SCOPE_WINDOW ? "window" : scope == MOE_SCOPE_EMA ? "ema" : "last";
}

std::string export_metrics(moe_export_format_t format, const MetricSet& metrics,
                           const ExportLabels& labels, int64_t experts) {
  switch (format) {
    case MOE_EXPORT_JSONL: return jsonl(metrics, labels);
    case MOE_EXPORT_CSV: return csv(metrics, labels, experts);
    case MOE_EXPORT_PROMETHEUS: return prometheus(metrics, labels, experts);
  }
  return "";
}

}  // namespace moe
