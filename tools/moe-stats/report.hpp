// moe-stats' report: the load-balance metrics of docs/metrics.md (the drop metrics when
// a log has served counts, the rank metrics when it says or is told how experts lie on
// ranks) per layer, per step window and summed, with verdicts.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/telemetry/step_stats.hpp"
#include "tools/moe-stats/counts_record.hpp"

namespace moe::stats {

// A report keeps each layer's counts in at most this many windows of steps (fewer for
// layers of many experts: about 32 MiB of counts a layer): one step a window while a
// log is short, and windows of 2, 4, ... steps as it grows, so that memory is bounded
// whatever the log's length (docs/limits.md).
constexpr size_t kMaxWindows = 256;

struct StepWindow {
  int64_t first_step = 0, last_step = 0, records = 0;
  std::vector<int64_t> counts, served, rank_load;  // summed over the window
  std::map<std::string, double> metrics;
};

struct LayerReport {
  std::string layer, split;
  int64_t records = 0;
  std::vector<StepWindow> steps;  // a step each, or windows of steps past kMaxWindows
  std::map<std::string, double> summed;
  std::vector<int64_t> summed_counts, summed_rank_load;
  std::map<std::string, nlohmann::json> verdicts;
};

// Builds the report one record at a time (moe-stats streams its logs through it):
// records are grouped by (split, layer) in order of appearance. add throws
// std::runtime_error when a layer's expert count changes or counts overflow, and
// changes nothing then.
class ReportBuilder {
 public:
  // ranks > 0: records that do not say what each rank carried are split over that many
  // ranks in contiguous blocks of experts (docs/telemetry.md#moe-stats).
  explicit ReportBuilder(int ranks = 0) : ranks_(ranks) {}
  void add(const CountsRecord& record);
  std::vector<LayerReport> finish();

 private:
  struct Layer {
    LayerReport report;
    StepStats sum;
    bool served_seen = false;
    int64_t window_width = 1;  // steps a window holds
    size_t max_windows = kMaxWindows;
  };
  int ranks_;
  std::vector<Layer> layers_;
  std::map<std::string, size_t> index_;
};

// Each rank's load for a record: what the log said, else contiguous blocks over `ranks`
// (--ep-ranks, 0: none). Throws std::runtime_error when they disagree or E does not split.
std::vector<int64_t> rank_load_of(const CountsRecord& record, int ranks);

// The metric names a report prints, in order.
const std::vector<std::string>& report_metric_names(bool with_served, bool with_ranks);

nlohmann::json report_json(const std::vector<LayerReport>& report);
// JSON text; bytes of layer names that are not UTF-8 become U+FFFD instead of failing.
std::string json_text(const nlohmann::json& value);
std::string report_text(const std::vector<LayerReport>& report, bool per_step);
nlohmann::json compare_json(const std::vector<LayerReport>& a, const std::vector<LayerReport>& b);
std::string compare_text(const nlohmann::json& comparison, const std::string& name_a,
                         const std::string& name_b);

}  // namespace moe::stats
