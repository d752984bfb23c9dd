#include "tools/moe-stats/report.hpp"

#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "core/config.hpp"
#include "core/telemetry/metrics.hpp"
#include "core/telemetry/verdicts.hpp"
#include "tools/common/verdict_json.hpp"

namespace moe::stats {
namespace {

const std::vector<std::string> kCountMetrics = {
    "frac_dem_max", "load_entropy",   "load_entropy_norm", "kl_to_uniform",
    "load_std_pct", "load_cv",        "load_variance",     "std_tokens_per_expert",
    "max_load_pct", "max_frac",       "min_max_ratio",     "max_over_mean",
    "maxvio",       "gini",           "jain_fairness",     "diversity",
    "dead_experts", "active_experts", "fraction_active"};
const std::vector<std::string> kServedMetrics = {
    "frac_srv_max",         "dropped_total",      "drop_rate",
    "load_cv_served",       "max_frac_served",    "gini_served",
    "min_max_ratio_served", "dead_experts_served"};

int64_t checked_add(int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out)) throw std::runtime_error("counts overflow 64 bits");
  return out;
}

// A log of counts knows neither T nor k: the statistics treat each count as one copy
// (k = 1, T = the copies), which is exactly what the count metrics need.
StepStats stats_of(const std::vector<int64_t>& counts, const std::vector<int64_t>& served) {
  const int64_t E = static_cast<int64_t>(counts.size());
  StepStats s(E, /*with_coactivation=*/false);
  s.steps = 1;
  int64_t total = 0;
  for (int64_t c : counts) total = checked_add(total, c);
  s.tokens = s.valid_tokens = s.nominal_copies = total;
  s.demand = counts;
  s.served = served.empty() ? counts : served;
  return s;
}

LayerConfig config_of(int64_t experts) {
  LayerConfig c;
  c.num_experts = experts;
  c.top_k = 1;
  c.router = MOE_ROUTER_HASH;  // no probabilities: no specialisation verdict
  return c;
}

std::map<std::string, double> pick(const MetricSet& m, bool with_served) {
  std::map<std::string, double> out;
  for (const std::string& name : report_metric_names(with_served))
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

const std::vector<std::string>& report_metric_names(bool with_served) {
  static const std::vector<std::string> counts = kCountMetrics;
  static const std::vector<std::string> both = [] {
    std::vector<std::string> v = kCountMetrics;
    v.insert(v.end(), kServedMetrics.begin(), kServedMetrics.end());
    return v;
  }();
  return with_served ? both : counts;
}

void ReportBuilder::add(const CountsRecord& r) {
  // Every check comes before any change: a record refused (and skipped under
  // --lenient) leaves the report as it was.
  const std::string key = key_of(r.layer, r.split);
  auto it = index_.find(key);
  const StepStats step = stats_of(r.counts, r.served);
  if (it != index_.end()) {
    const StepStats& sum = sums_[it->second].sum;
    if (static_cast<int64_t>(r.counts.size()) != sum.experts)
      throw std::runtime_error(
          "layer " + key + " changes its number of experts from " + std::to_string(sum.experts) +
          " to " + std::to_string(r.counts.size()) + " at step " + std::to_string(r.step));
    // The window's sums, checked before StepStats::add makes them (it does not check).
    for (size_t e = 0; e < r.counts.size(); ++e) {
      checked_add(sum.demand[e], step.demand[e]);
      checked_add(sum.served[e], step.served[e]);
    }
    checked_add(sum.nominal_copies, step.nominal_copies);
  } else {
    it = index_.emplace(key, layers_.size()).first;
    layers_.push_back({r.layer, r.split, {}, {}, {}, {}});
    sums_.push_back({StepStats(static_cast<int64_t>(r.counts.size()), false), !r.served.empty()});
  }
  StepStats& sum = sums_[it->second].sum;
  sum.add(step);
  layers_[it->second].steps.push_back(
      {r.step, pick(compute_metrics(step, config_of(sum.experts)), sums_[it->second].served_seen)});
}

std::vector<LayerReport> ReportBuilder::finish() {
  for (size_t i = 0; i < layers_.size(); ++i) {
    LayerReport& l = layers_[i];
    const StepStats& sum = sums_[i].sum;
    const bool served_seen = sums_[i].served_seen;
    const LayerConfig config = config_of(sum.experts);
    const MetricSet m = compute_metrics(sum, config);
    l.summed = pick(m, served_seen);
    l.summed_counts.assign(sum.demand.begin(), sum.demand.end());
    const moe_verdicts_t v = judge(m, config, default_thresholds(), 0);
    l.verdicts["balance"] = tools::verdict_json(v.balance);
    if (served_seen) l.verdicts["capacity"] = tools::verdict_json(v.capacity);
  }
  return std::move(layers_);
}

std::vector<LayerReport> build_report(const std::vector<CountsRecord>& records) {
  ReportBuilder builder;
  for (const CountsRecord& r : records) builder.add(r);
  return builder.finish();
}

std::string json_text(const nlohmann::json& value) {
  return value.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

nlohmann::json report_json(const std::vector<LayerReport>& report) {
  nlohmann::json out = nlohmann::json::array();
  for (const LayerReport& l : report) {
    nlohmann::json steps = nlohmann::json::array();
    for (const auto& [step, metrics] : l.steps) {
      nlohmann::json s{{"step", step}};
      for (const auto& [k, v] : metrics) s[k] = number(v);
      steps.push_back(s);
    }
    nlohmann::json summed;
    for (const auto& [k, v] : l.summed) summed[k] = number(v);
    summed["expert_counts"] = l.summed_counts;
    out.push_back({{"layer", l.layer},
                   {"split", l.split},
                   {"steps", steps},
                   {"summed", summed},
                   {"verdicts", l.verdicts}});
  }
  return out;
}

std::string report_text(const std::vector<LayerReport>& report, bool per_step) {
  std::string out;
  const std::vector<std::string> columns = {"load_cv",       "max_frac", "load_entropy_norm",
                                            "kl_to_uniform", "gini",     "min_max_ratio",
                                            "dead_experts"};
  for (const LayerReport& l : report) {
    out += "layer " + l.layer + (l.split.empty() ? "" : " (" + l.split + ")") + ": " +
           std::to_string(l.steps.size()) + " steps, " + std::to_string(l.summed_counts.size()) +
           " experts\n";
    if (per_step) {
      out += "  step";
      for (const std::string& c : columns) out += "  " + c;
      out += "\n";
      for (const auto& [step, m] : l.steps) {
        out += "  " + std::to_string(step);
        for (const std::string& c : columns) out += "  " + format(m.at(c));
        out += "\n";
      }
    }
    out += "  summed:";
    for (const auto& [k, v] : l.summed) out += " " + k + "=" + format(v);
    out += "\n  counts:";
    for (double c : l.summed_counts) out += " " + std::to_string(static_cast<int64_t>(c));
    out += "\n";
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
