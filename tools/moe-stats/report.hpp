// moe-stats' report: the load-balance metrics of docs/metrics.md (and the drop metrics
// when a log has served counts) per layer, per step and summed, with verdicts.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/telemetry/step_stats.hpp"
#include "tools/moe-stats/counts_log.hpp"

namespace moe::stats {

struct LayerReport {
  std::string layer, split;
  std::vector<std::pair<int64_t, std::map<std::string, double>>> steps;
  std::map<std::string, double> summed;
  std::vector<double> summed_counts;
  std::map<std::string, nlohmann::json> verdicts;
};

// Builds the report one record at a time (moe-stats streams its logs through it):
// records are grouped by (split, layer) in order of appearance, and only each layer's
// sums and per-step figures are kept. add throws std::runtime_error when a layer's
// expert count changes or counts overflow.
class ReportBuilder {
 public:
  void add(const CountsRecord& record);
  std::vector<LayerReport> finish();

 private:
  struct Layer {
    StepStats sum;
    bool served_seen = false;
  };
  std::vector<LayerReport> layers_;
  std::map<std::string, size_t> index_;
  std::vector<Layer> sums_;
};

// The report of a whole set of records at once.
std::vector<LayerReport> build_report(const std::vector<CountsRecord>& records);

// The metric names a report prints, in order.
const std::vector<std::string>& report_metric_names(bool with_served);

nlohmann::json report_json(const std::vector<LayerReport>& report);
// JSON text; bytes of layer names that are not UTF-8 become U+FFFD instead of failing.
std::string json_text(const nlohmann::json& value);
std::string report_text(const std::vector<LayerReport>& report, bool per_step);
nlohmann::json compare_json(const std::vector<LayerReport>& a, const std::vector<LayerReport>& b);
std::string compare_text(const nlohmann::json& comparison, const std::string& name_a,
                         const std::string& name_b);

}  // namespace moe::stats
