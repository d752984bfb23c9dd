#include "tools/moe-stats/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "core/config.hpp"
#include "core/telemetry/metrics.hpp"
#include "core/telemetry/verdicts.hpp"
#include "tools/common/verdict_json.hpp"
#include "tools/moe-stats/count_text.hpp"
#include "tools/moe-stats/rank_assembly.hpp"

namespace moe::stats {
namespace {

const std::vector<std::string> kCountMetrics = {
    "frac_dem_max",   "load_entropy",   "load_entropy_norm", "kl_to_uniform",
    "load_std_pct",   "load_cv",        "load_variance",     "std_tokens_per_expert",
    "max_load_pct",   "max_frac",       "min_max_ratio",     "max_over_mean",
    "maxvio",         "gini",           "jain_fairness",     "diversity",
    "dead_experts",   "active_experts", "fraction_active",   "balancedness",
    "imbalance_ratio"};
const std::vector<std::string> kServedMetrics = {
    "frac_srv_max",         "dropped_total",      "drop_rate",
    "load_cv_served",       "max_frac_served",    "gini_served",
    "min_max_ratio_served", "dead_experts_served"};
const std::vector<std::string> kRankMetrics = {"rank_balancedness", "rank_imbalance_ratio",
                                               "overload_factor"};

// A window's rank loads: summed, or none once its records disagree on the ranks.
void add_rank_load(std::vector<int64_t>& sum, const std::vector<int64_t>& load) {
  if (sum.size() != load.size()) {
    sum.clear();
    return;
  }
  for (size_t q = 0; q < load.size(); ++q) sum[q] += load[q];
}

// A log of counts knows neither T nor k: the statistics treat each count as one copy
// (k = 1, T = the copies), which is exactly what the count metrics need.
StepStats stats_of(const std::vector<int64_t>& counts, const std::vector<int64_t>& served,
                   const std::vector<int64_t>& rank_load) {
  const int64_t E = static_cast<int64_t>(counts.size());
  StepStats s(E, /*with_coactivation=*/false);
  s.steps = 1;
  int64_t total = 0;
  for (int64_t c : counts) total = checked_add(total, c);
  s.tokens = s.valid_tokens = s.nominal_copies = total;
  s.demand = counts;
  s.served = served.empty() ? counts : served;
  s.rank_load = rank_load;
  s.rank_steps = rank_load.empty() ? 0 : 1;
  return s;
}

LayerConfig config_of(int64_t experts) {
  LayerConfig c;
  c.num_experts = experts;
  c.top_k = 1;
  c.router = MOE_ROUTER_HASH;  // no probabilities: no specialisation verdict
  return c;
}

std::map<std::string, double> pick(const MetricSet& m, bool with_served, bool with_ranks) {
  std::map<std::string, double> out;
  for (const std::string& name : report_metric_names(with_served, with_ranks))
    out[name] = m.scalar(name.c_str());
  return out;
}

nlohmann::json number(double v) {
  return tools::finite_or_null(v);
}

std::string format(double v) {
  if (std::isnan(v)) return "nan";
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

std::string key_of(const std::string& layer, const std::string& split) {
  return split.empty() ? layer : layer + "/" + split;
}

}  // namespace

const std::vector<std::string>& report_metric_names(bool with_served, bool with_ranks) {
  static const std::vector<std::vector<std::string>> lists = [] {
    std::vector<std::vector<std::string>> out;
    for (int served = 0; served < 2; ++served)
      for (int ranks = 0; ranks < 2; ++ranks) {
        std::vector<std::string> v = kCountMetrics;
        if (served) v.insert(v.end(), kServedMetrics.begin(), kServedMetrics.end());
        if (ranks) v.insert(v.end(), kRankMetrics.begin(), kRankMetrics.end());
        out.push_back(v);
      }
    return out;
  }();
  return lists[(with_served ? 2 : 0) + (with_ranks ? 1 : 0)];
}

std::vector<int64_t> rank_load_of(const CountsRecord& r, int ranks) {
  const std::string key = key_of(r.layer, r.split);
  if (ranks > 0 && !r.rank_load.empty() && r.rank_load.size() != static_cast<size_t>(ranks))
    throw std::runtime_error("layer " + key + ": the log names " +
                             std::to_string(r.rank_load.size()) + " ranks, --ep-ranks " +
                             std::to_string(ranks));
  if (!r.rank_load.empty() || ranks < 1) return r.rank_load;
  std::vector<int64_t> load = contiguous_rank_load(r.counts, ranks);
  if (load.empty())
    throw std::runtime_error("layer " + key + " has " + std::to_string(r.counts.size()) +
                             " experts, which do not split over " + std::to_string(ranks) +
                             " ranks (--ep-ranks)");
  return load;
}

void ReportBuilder::add(const CountsRecord& r) {
  // Every check comes before any change: a record refused (and skipped under
  // --lenient) leaves the report as it was.
  const std::string key = key_of(r.layer, r.split);
  const std::vector<int64_t> rank_load = rank_load_of(r, ranks_);
  const StepStats step = stats_of(r.counts, r.served, rank_load);
  auto it = index_.find(key);
  if (it != index_.end()) {
    const Layer& layer = layers_[it->second];
    if (static_cast<int64_t>(r.counts.size()) != layer.sum.experts)
      throw std::runtime_error("layer " + key + " changes its number of experts from " +
                               std::to_string(layer.sum.experts) + " to " +
                               std::to_string(r.counts.size()) + " at step " +
                               std::to_string(r.step));
    // The sums, checked before StepStats::add makes them (it does not check); a
    // window's sums are parts of these.
    for (size_t e = 0; e < r.counts.size(); ++e) {
      checked_add(layer.sum.demand[e], step.demand[e]);
      checked_add(layer.sum.served[e], step.served[e]);
    }
    checked_add(layer.sum.nominal_copies, step.nominal_copies);
  } else {
    it = index_.emplace(key, layers_.size()).first;
    Layer layer;
    layer.report.layer = r.layer;
    layer.report.split = r.split;
    layer.sum = StepStats(static_cast<int64_t>(r.counts.size()), false);
    layer.served_seen = !r.served.empty();
    // About 32 MiB of window counts a layer (demand and served, 16 bytes an expert).
    const size_t fits = (size_t{32} << 20) / (16 * r.counts.size());
    // Even, so that merging pairs leaves no window alone.
    layer.max_windows = std::max<size_t>(4, std::min(kMaxWindows, fits)) & ~size_t{1};
    layers_.push_back(std::move(layer));
  }
  Layer& layer = layers_[it->second];
  layer.sum.add(step);
  ++layer.report.records;
  std::vector<StepWindow>& windows = layer.report.steps;
  if (windows.empty() || windows.back().records >= layer.window_width) {
    if (windows.size() == layer.max_windows) {
      // Full: pairs of windows become one, and windows hold twice the steps.
      for (size_t i = 0; i < windows.size() / 2; ++i) {
        StepWindow merged = std::move(windows[2 * i]);
        const StepWindow& second = windows[2 * i + 1];
        merged.last_step = second.last_step;
        merged.records += second.records;
        for (size_t e = 0; e < merged.counts.size(); ++e) {
          merged.counts[e] += second.counts[e];
          merged.served[e] += second.served[e];
        }
        add_rank_load(merged.rank_load, second.rank_load);
        windows[i] = std::move(merged);
      }
      windows.resize(windows.size() / 2);
      layer.window_width *= 2;
    }
    if (windows.empty() || windows.back().records >= layer.window_width) {
      StepWindow w;
      w.first_step = r.step;
      w.counts.assign(r.counts.size(), 0);
      w.served.assign(r.counts.size(), 0);
      w.rank_load.assign(rank_load.size(), 0);
      windows.push_back(std::move(w));
    }
  }
  StepWindow& w = windows.back();
  w.last_step = r.step;
  ++w.records;
  for (size_t e = 0; e < r.counts.size(); ++e) {
    w.counts[e] += step.demand[e];
    w.served[e] += step.served[e];
  }
  add_rank_load(w.rank_load, rank_load);
}

std::vector<LayerReport> ReportBuilder::finish() {
  std::vector<LayerReport> out;
  for (Layer& layer : layers_) {
    LayerReport& l = layer.report;
    // Rank figures only when every record of the layer said (or was given) its ranks.
    const bool served = layer.served_seen,
               ranks = !layer.sum.rank_load.empty() && layer.sum.rank_steps == layer.sum.steps;
    const LayerConfig config = config_of(layer.sum.experts);
    for (StepWindow& w : l.steps)
      w.metrics = pick(
          compute_metrics(
              stats_of(w.counts, served ? w.served : std::vector<int64_t>{}, w.rank_load), config),
          served, ranks);
    const MetricSet m = compute_metrics(layer.sum, config);
    l.summed = pick(m, served, ranks);
    l.summed_counts = layer.sum.demand;
    if (ranks) l.summed_rank_load = layer.sum.rank_load;
    const moe_verdicts_t v = judge(m, config, default_thresholds(), 0);
    l.verdicts["balance"] = tools::verdict_json(v.balance);
    if (served) l.verdicts["capacity"] = tools::verdict_json(v.capacity);
    out.push_back(std::move(l));
  }
  layers_.clear();
  index_.clear();
  return out;
}

std::string json_text(const nlohmann::json& value) {
  return value.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

nlohmann::json report_json(const std::vector<LayerReport>& report) {
  nlohmann::json out = nlohmann::json::array();
  for (const LayerReport& l : report) {
    nlohmann::json steps = nlohmann::json::array();
    for (const StepWindow& w : l.steps) {
      nlohmann::json s{{"step", w.first_step}, {"last_step", w.last_step}, {"records", w.records}};
      for (const auto& [k, v] : w.metrics) s[k] = number(v);
      s["expert_counts"] = w.counts;
      if (!w.rank_load.empty()) s["rank_load"] = w.rank_load;
      steps.push_back(s);
    }
    nlohmann::json summed;
    for (const auto& [k, v] : l.summed) summed[k] = number(v);
    summed["expert_counts"] = l.summed_counts;
    if (!l.summed_rank_load.empty()) summed["rank_load"] = l.summed_rank_load;
    out.push_back({{"layer", l.layer},
                   {"split", l.split},
                   {"records", l.records},
                   {"steps", steps},
                   {"summed", summed},
                   {"verdicts", l.verdicts}});
  }
  return out;
}

std::string report_text(const std::vector<LayerReport>& report, bool per_step) {
  std::string out;
  const std::vector<std::string> count_columns = {
      "load_cv",       "max_frac",     "load_entropy_norm", "kl_to_uniform", "gini",
      "min_max_ratio", "balancedness", "imbalance_ratio",   "dead_experts"};
  const std::vector<std::string> rank_columns = {"rank_balancedness", "rank_imbalance_ratio",
                                                 "overload_factor"};
  for (const LayerReport& l : report) {
    out += "layer " + l.layer + (l.split.empty() ? "" : " (" + l.split + ")") + ": " +
           std::to_string(l.records) + " steps, " + std::to_string(l.summed_counts.size()) +
           " experts";
    if (!l.summed_rank_load.empty())
      out += ", " + std::to_string(l.summed_rank_load.size()) + " ranks";
    if (l.steps.size() < static_cast<size_t>(l.records))
      out += " (shown in " + std::to_string(l.steps.size()) + " windows of steps)";
    out += "\n";
    if (per_step) {
      std::vector<std::string> columns = count_columns;
      if (!l.summed_rank_load.empty())
        columns.insert(columns.end(), rank_columns.begin(), rank_columns.end());
      out += "  step";
      for (const std::string& c : columns) out += "  " + c;
      out += "\n";
      for (const StepWindow& w : l.steps) {
        out += "  " + std::to_string(w.first_step);
        if (w.last_step != w.first_step) out += "-" + std::to_string(w.last_step);
        for (const std::string& c : columns) out += "  " + format(w.metrics.at(c));
        out += "\n";
      }
    }
    out += "  summed:";
    for (const auto& [k, v] : l.summed) out += " " + k + "=" + format(v);
    out += "\n  counts:";
    for (int64_t c : l.summed_counts) out += " " + std::to_string(c);
    out += "\n";
    if (!l.summed_rank_load.empty()) {
      out += "  rank load:";
      for (int64_t c : l.summed_rank_load) out += " " + std::to_string(c);
      out += "\n";
    }
    for (const auto& [kind, v] : l.verdicts) {
      out += "  " + kind + ": " + v["label"].get<std::string>();
      if (!v["metric"].get<std::string>().empty())
        out += " (" + v["metric"].get<std::string>() + " " +
               format(v["value"].is_null() ? NAN : v["value"].get<double>()) + " vs " +
               format(v["threshold"].is_null() ? NAN : v["threshold"].get<double>()) + ")";
      if (!v["hint"].get<std::string>().empty()) out += "; hint: " + v["hint"].get<std::string>();
      out += "\n";
    }
  }
  return out;
}

nlohmann::json compare_json(const std::vector<LayerReport>& a, const std::vector<LayerReport>& b) {
  nlohmann::json out = nlohmann::json::array();
  for (const LayerReport& la : a)
    for (const LayerReport& lb : b) {
      if (la.layer != lb.layer) continue;
      nlohmann::json metrics;
      for (const auto& [k, va] : la.summed) {
        auto it = lb.summed.find(k);
        if (it == lb.summed.end()) continue;
        metrics[k] = {
            {"a", number(va)}, {"b", number(it->second)}, {"diff", number(it->second - va)}};
      }
      out.push_back({{"layer", la.layer},
                     {"split_a", la.split},
                     {"split_b", lb.split},
                     {"metrics", metrics},
                     {"balance_a", la.verdicts.at("balance")["label"]},
                     {"balance_b", lb.verdicts.at("balance")["label"]}});
    }
  if (out.empty() && !a.empty() && !b.empty())
    throw std::runtime_error("the two logs have no layer in common: nothing to compare");
  return out;
}

std::string compare_text(const nlohmann::json& comparison, const std::string& name_a,
                         const std::string& name_b) {
  std::string out;
  auto cell = [](const nlohmann::json& v) {
    return v.is_null() ? std::string("nan") : format(v.get<double>());
  };
  for (const auto& layer : comparison) {
    char line[256];
    out += "layer " + layer["layer"].get<std::string>() + ": balance " +
           layer["balance_a"].get<std::string>() + " -> " + layer["balance_b"].get<std::string>() +
           "\n";
    std::snprintf(line, sizeof line, "  %-24s %12s %12s %12s\n", "metric",
                  name_a.substr(0, 12).c_str(), name_b.substr(0, 12).c_str(), "diff");
    out += line;
    for (const auto& [k, v] : layer["metrics"].items()) {
      std::snprintf(line, sizeof line, "  %-24s %12s %12s %12s\n", k.c_str(), cell(v["a"]).c_str(),
                    cell(v["b"]).c_str(), cell(v["diff"]).c_str());
      out += line;
    }
  }
  return out;
}

}  // namespace moe::stats
