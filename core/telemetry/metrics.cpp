#include "core/telemetry/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

namespace moe {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The load-balance metrics of docs/metrics.md over one count vector.
struct LoadMetrics {
  double entropy = kNaN, entropy_norm = kNaN, kl = kNaN, std_pct = kNaN, cv = kNaN, variance = kNaN,
         std_tokens = kNaN, max_pct = kNaN, max_frac = kNaN, min_max = kNaN, max_over_mean = kNaN,
         maxvio = kNaN, balancedness = kNaN, gini = kNaN, jain = kNaN, diversity = kNaN,
         dead = kNaN, active = kNaN, fraction_active = kNaN;
};

double population_std(const std::vector<double>& v) {
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  double sq = 0;
  for (double x : v) sq += (x - mean) * (x - mean);
  return std::sqrt(sq / static_cast<double>(v.size()));
}

LoadMetrics load_metrics(const std::vector<int64_t>& counts) {
  LoadMetrics m;
  const double E = static_cast<double>(counts.size());
  std::vector<double> c(counts.begin(), counts.end());
  const double total = std::accumulate(c.begin(), c.end(), 0.0);
  const double dead = static_cast<double>(std::count(c.begin(), c.end(), 0.0));
  m.dead = dead;
  m.active = E - dead;
  m.fraction_active = (E - dead) / E;
  if (total <= 0) return m;
  const double mean = total / E;
  const double most = *std::max_element(c.begin(), c.end());
  const double least = *std::min_element(c.begin(), c.end());
  double entropy = 0, sq = 0;
  std::vector<double> pct(c.size());
  for (size_t e = 0; e < c.size(); ++e) {
    const double p = c[e] / total;
    if (p > 0) entropy -= p * std::log(p);
    pct[e] = 100.0 * p;
    sq += c[e] * c[e];
  }
  m.entropy = entropy;
  m.entropy_norm = E > 1 ? entropy / std::log(E) : 1.0;
  m.kl = std::log(E) - entropy;
  m.std_pct = population_std(pct);
  m.std_tokens = population_std(c);
  m.cv = m.std_tokens / mean;
  m.variance = m.cv * m.cv;
  m.max_frac = most / total;
  m.max_pct = 100.0 * m.max_frac;
  m.min_max = least / most;
  m.max_over_mean = most / mean;
  m.maxvio = m.max_over_mean - 1.0;
  m.balancedness = mean / most;
  std::vector<double> sorted = c;
  std::sort(sorted.begin(), sorted.end());
  double weighted = 0;  // sum_i sum_j |c_i - c_j| = 2 sum_i (2i - E + 1) c_(i)
  for (size_t i = 0; i < sorted.size(); ++i)
    weighted += (2.0 * static_cast<double>(i) - E + 1.0) * sorted[i];
  m.gini = weighted / (E * total);
  m.jain = total * total / (E * sq);
  m.diversity = std::exp(entropy) / E;
  return m;
}

struct Entry {
  const char* name;
  moe_metric_shape_t shape;
  const char* help;
};

const Entry kEntries[] = {
    {"tokens", MOE_METRIC_SCALAR, "tokens seen (T)"},
    {"steps", MOE_METRIC_SCALAR, "forward calls summed into these figures"},
    {"frac_dem_max", MOE_METRIC_SCALAR, "max over experts of d_e/(T*k)"},
    {"frac_srv_max", MOE_METRIC_SCALAR, "max over experts of s_e/(T*k)"},
    {"load_entropy", MOE_METRIC_SCALAR, "-sum p_e ln p_e of the demand shares (nats)"},
    {"load_entropy_norm", MOE_METRIC_SCALAR, "load_entropy / ln E"},
    {"kl_to_uniform", MOE_METRIC_SCALAR, "ln E - load_entropy"},
    {"load_std_pct", MOE_METRIC_SCALAR, "population std of 100 p_e (percentage points)"},
    {"load_cv", MOE_METRIC_SCALAR, "population std / mean of the demand counts"},
    {"load_variance", MOE_METRIC_SCALAR, "load_cv squared"},
    {"std_tokens_per_expert", MOE_METRIC_SCALAR, "population std of the demand counts"},
    {"max_load_pct", MOE_METRIC_SCALAR, "100 max p_e"},
    {"max_frac", MOE_METRIC_SCALAR, "max p_e"},
    {"min_max_ratio", MOE_METRIC_SCALAR, "min count / max count"},
    {"max_over_mean", MOE_METRIC_SCALAR, "max count / mean count"},
    {"maxvio", MOE_METRIC_SCALAR, "max_over_mean - 1"},
    {"balancedness", MOE_METRIC_SCALAR, "mean count / max count (vLLM, SGLang)"},
    {"imbalance_ratio", MOE_METRIC_SCALAR, "(max count - mean count) / mean count (TensorRT-LLM)"},
    {"rank_balancedness", MOE_METRIC_SCALAR,
     "mean / max over ranks of the copies each rank's experts computed"},
    {"rank_imbalance_ratio", MOE_METRIC_SCALAR,
     "(max - mean) / mean over ranks of the copies each rank's experts computed"},
    {"overload_factor", MOE_METRIC_SCALAR,
     "max over ranks of the copies a rank's experts computed / (T*k / ranks) (Megatron)"},
    {"gini", MOE_METRIC_SCALAR, "Gini coefficient of the demand counts"},
    {"jain_fairness", MOE_METRIC_SCALAR, "(sum c)^2 / (E sum c^2)"},
    {"diversity", MOE_METRIC_SCALAR, "exp(load_entropy) / E"},
    {"dead_experts", MOE_METRIC_SCALAR, "experts with zero demand"},
    {"active_experts", MOE_METRIC_SCALAR, "E - dead_experts"},
    {"fraction_active", MOE_METRIC_SCALAR, "active_experts / E"},
    {"load_entropy_served", MOE_METRIC_SCALAR, "load_entropy of the served counts"},
    {"load_entropy_norm_served", MOE_METRIC_SCALAR, "load_entropy_norm of the served counts"},
    {"kl_to_uniform_served", MOE_METRIC_SCALAR, "kl_to_uniform of the served counts"},
    {"load_cv_served", MOE_METRIC_SCALAR, "load_cv of the served counts"},
    {"max_frac_served", MOE_METRIC_SCALAR, "max_frac of the served counts"},
    {"min_max_ratio_served", MOE_METRIC_SCALAR, "min_max_ratio of the served counts"},
    {"max_over_mean_served", MOE_METRIC_SCALAR, "max_over_mean of the served counts"},
    {"gini_served", MOE_METRIC_SCALAR, "gini of the served counts"},
    {"jain_fairness_served", MOE_METRIC_SCALAR, "jain_fairness of the served counts"},
    {"dead_experts_served", MOE_METRIC_SCALAR, "experts that served nothing"},
    {"router_entropy_mean", MOE_METRIC_SCALAR, "mean over tokens of the entropy of P[t,:] (nats)"},
    {"router_entropy_norm_mean", MOE_METRIC_SCALAR, "router_entropy_mean / ln E"},
    {"top1_p_mean", MOE_METRIC_SCALAR, "mean over tokens of max_e P[t,e]"},
    {"topk_mass_mean", MOE_METRIC_SCALAR, "mean over tokens of the chosen experts' P"},
    {"top1_margin_mean", MOE_METRIC_SCALAR, "mean over tokens of the largest minus the second P"},
    {"importance_cv", MOE_METRIC_SCALAR, "population CV over experts of sum_t P[t,e]"},
    {"aux_loss", MOE_METRIC_SCALAR, "Switch aux loss E sum f_e Pbar_e (unscaled)"},
    {"aux_loss_scaled", MOE_METRIC_SCALAR, "load_balance_alpha * aux_loss"},
    {"z_loss", MOE_METRIC_SCALAR, "mean over tokens of logsumexp(z)^2"},
    {"z_loss_scaled", MOE_METRIC_SCALAR, "router_z_loss_coef * z_loss"},
    {"logit_max_abs", MOE_METRIC_SCALAR, "max |z[t,e]| over finite rows"},
    {"nonfinite_rows", MOE_METRIC_SCALAR, "tokens with NaN/Inf logits, routed nowhere"},
    {"capacity", MOE_METRIC_SCALAR, "C per step (dropless: max demand)"},
    {"ideal_capacity", MOE_METRIC_SCALAR, "T*k/E per step"},
    {"capacity_factor", MOE_METRIC_SCALAR, "as configured (0 = dropless)"},
    {"capacity_usage", MOE_METRIC_SCALAR, "max demand / ideal capacity"},
    {"capacity_utilization", MOE_METRIC_SCALAR, "sum s_e / (E C)"},
    {"dropped_total", MOE_METRIC_SCALAR, "copies dropped by capacity"},
    {"drop_rate", MOE_METRIC_SCALAR, "dropped_total / (T*k)"},
    {"tokens_fully_dropped", MOE_METRIC_SCALAR, "tokens all of whose choices were dropped"},
    {"avg_experts_per_token", MOE_METRIC_SCALAR, "sum s_e / T"},
    {"routing_sparsity", MOE_METRIC_SCALAR, "1 - avg_experts_per_token / E"},
    {"jaccard_mean", MOE_METRIC_SCALAR, "mean Jaccard overlap of two experts' token sets"},
    {"jaccard_max", MOE_METRIC_SCALAR, "max Jaccard overlap of two experts' token sets"},
    {"seq_consistency", MOE_METRIC_SCALAR, "adjacent tokens of a sequence with the same top-1"},
    {"seq_topk_overlap", MOE_METRIC_SCALAR, "mean |S_t & S_t+1| / k over adjacent tokens"},
    {"routing_locality", MOE_METRIC_SCALAR, "mean cosine of P[t,:] and P[t+1,:]"},
    {"expert_counts", MOE_METRIC_PER_EXPERT, "demand d_e"},
    {"expert_served", MOE_METRIC_PER_EXPERT, "served s_e = min(d_e, C)"},
    {"frac_dem", MOE_METRIC_PER_EXPERT, "d_e / (T*k)"},
    {"frac_srv", MOE_METRIC_PER_EXPERT, "s_e / (T*k)"},
    {"dropped", MOE_METRIC_PER_EXPERT, "d_e - s_e"},
    {"coactivation", MOE_METRIC_MATRIX, "tokens that chose both i and j (diagonal: d_i)"},
};

}  // namespace

const std::vector<MetricInfo>& catalogue() {
  static const std::vector<MetricInfo> list = [] {
    std::vector<MetricInfo> out;
    for (const Entry& e : kEntries) out.push_back({e.name, e.shape, e.help});
    return out;
  }();
  return list;
}

int metric_index(const std::string& name) {
  static const std::unordered_map<std::string, int> index = [] {
    std::unordered_map<std::string, int> m;
    for (size_t i = 0; i < catalogue().size(); ++i) m[catalogue()[i].name] = static_cast<int>(i);
    return m;
  }();
  auto it = index.find(name);
  return it == index.end() ? -1 : it->second;
}

double MetricSet::scalar(const char* name) const {
  return values[metric_index(name)][0];
}

MetricSet compute_metrics(const StepStats& s, const LayerConfig& config) {
  const int64_t E = s.experts;
  const double Ed = static_cast<double>(E);
  MetricSet out;
  out.values.resize(catalogue().size());
  auto set = [&](const char* name, double v) { out.values[metric_index(name)] = {v}; };
  auto ratio = [](double a, double b) { return b > 0 ? a / b : kNaN; };
  const bool any_tokens = s.tokens > 0;
  const double Tk = static_cast<double>(s.nominal_copies);
  const double valid = static_cast<double>(s.valid_tokens);
  const double steps = static_cast<double>(s.steps);

  set("tokens", static_cast<double>(s.tokens));
  set("steps", steps);
  const LoadMetrics d = any_tokens ? load_metrics(s.demand) : LoadMetrics{};
  const LoadMetrics v = any_tokens ? load_metrics(s.served) : LoadMetrics{};
  const double most_d = static_cast<double>(*std::max_element(s.demand.begin(), s.demand.end()));
  const double most_s = static_cast<double>(*std::max_element(s.served.begin(), s.served.end()));
  set("frac_dem_max", ratio(most_d, Tk));
  set("frac_srv_max", ratio(most_s, Tk));
  set("load_entropy", d.entropy);
  set("load_entropy_norm", d.entropy_norm);
  set("kl_to_uniform", d.kl);
  set("load_std_pct", d.std_pct);
  set("load_cv", d.cv);
  set("load_variance", d.variance);
  set("std_tokens_per_expert", d.std_tokens);
  set("max_load_pct", d.max_pct);
  set("max_frac", d.max_frac);
  set("min_max_ratio", d.min_max);
  set("max_over_mean", d.max_over_mean);
  set("maxvio", d.maxvio);
  set("balancedness", d.balancedness);
  set("imbalance_ratio", d.maxvio);
  {
    // Over ranks: undefined without a communicator (rank_load empty) or without copies.
    // Undefined unless every call summed here had ranks, and the same number of them.
    const bool ranks = !s.rank_load.empty() && s.rank_steps == s.steps;
    const LoadMetrics r = ranks ? load_metrics(s.rank_load) : LoadMetrics{};
    set("rank_balancedness", r.balancedness);
    set("rank_imbalance_ratio", r.maxvio);
    if (ranks) out.rank_load = s.rank_load;
    const double most =
        s.rank_load.empty()
            ? kNaN
            : static_cast<double>(*std::max_element(s.rank_load.begin(), s.rank_load.end()));
    set("overload_factor", ratio(most, Tk / static_cast<double>(s.rank_load.size())));
  }
  set("gini", d.gini);
  set("jain_fairness", d.jain);
  set("diversity", d.diversity);
  set("dead_experts", d.dead);
  set("active_experts", d.active);
  set("fraction_active", d.fraction_active);
  set("load_entropy_served", v.entropy);
  set("load_entropy_norm_served", v.entropy_norm);
  set("kl_to_uniform_served", v.kl);
  set("load_cv_served", v.cv);
  set("max_frac_served", v.max_frac);
  set("min_max_ratio_served", v.min_max);
  set("max_over_mean_served", v.max_over_mean);
  set("gini_served", v.gini);
  set("jain_fairness_served", v.jain);
  set("dead_experts_served", v.dead);

  const double log_e = std::log(Ed);
  set("router_entropy_mean", ratio(s.entropy_sum, valid));
  set("router_entropy_norm_mean",
      E > 1 ? ratio(s.entropy_sum, valid) / log_e : (valid > 0 ? 1.0 : kNaN));
  set("top1_p_mean", ratio(s.top1_sum, valid));
  set("topk_mass_mean", ratio(s.topk_mass_sum, valid));
  set("top1_margin_mean", ratio(s.margin_sum, valid));
  {
    const double mean = std::accumulate(s.importance.begin(), s.importance.end(), 0.0) / Ed;
    set("importance_cv", mean > 0 ? population_std(s.importance) / mean : kNaN);
  }
  const double aux = valid > 0 ? s.aux_weighted / valid : kNaN;
  const double z = valid > 0 ? s.z_weighted / valid : kNaN;
  set("aux_loss", aux);
  set("aux_loss_scaled", config.load_balance_alpha * aux);
  set("z_loss", z);
  set("z_loss_scaled", config.z_loss_coef * z);
  set("logit_max_abs", valid > 0 ? s.logit_max_abs : kNaN);
  set("nonfinite_rows", static_cast<double>(s.nonfinite_rows));

  const double served_total = std::accumulate(s.served.begin(), s.served.end(), 0.0);
  const double demand_total = std::accumulate(s.demand.begin(), s.demand.end(), 0.0);
  const double dropped_total = demand_total - served_total;
  const double ideal = any_tokens ? Tk / Ed / steps : kNaN;
  set("capacity", any_tokens ? static_cast<double>(s.capacity_sum) / steps : kNaN);
  set("ideal_capacity", ideal);
  set("capacity_factor", config.capacity_factor > 0 ? config.capacity_factor : 0.0);
  set("capacity_usage", any_tokens ? ratio(most_d, Tk / Ed) : kNaN);
  set("capacity_utilization",
      any_tokens ? ratio(served_total, Ed * static_cast<double>(s.capacity_sum)) : kNaN);
  set("dropped_total", dropped_total);
  set("drop_rate", ratio(dropped_total, Tk));
  set("tokens_fully_dropped", static_cast<double>(s.tokens_fully_dropped));
  const double per_token = ratio(served_total, static_cast<double>(s.tokens));
  set("avg_experts_per_token", per_token);
  set("routing_sparsity", 1.0 - per_token / Ed);

  double jaccard_sum = 0, jaccard_max = kNaN;
  int64_t pairs = 0;
  const int64_t coactivation_rows = s.coactivation.empty() ? 0 : E;  // none past the limit
  for (int64_t i = 0; i < coactivation_rows; ++i)
    for (int64_t j = i + 1; j < E; ++j) {
      const double both = static_cast<double>(s.coactivation[i * E + j]);
      const double either =
          static_cast<double>(s.coactivation[i * E + i] + s.coactivation[j * E + j]) - both;
      if (either <= 0) continue;
      const double jac = both / either;
      jaccard_sum += jac;
      jaccard_max = pairs == 0 ? jac : std::max(jaccard_max, jac);
      ++pairs;
    }
  set("jaccard_mean", pairs > 0 ? jaccard_sum / static_cast<double>(pairs) : kNaN);
  set("jaccard_max", jaccard_max);
  const double seq_pairs = static_cast<double>(s.seq_pairs);
  set("seq_consistency", ratio(static_cast<double>(s.seq_same_top1), seq_pairs));
  set("seq_topk_overlap", ratio(s.seq_overlap_sum, seq_pairs));
  set("routing_locality", ratio(s.seq_cosine_sum, seq_pairs));

  auto per_expert = [&](const char* name, auto f) {
    std::vector<double> values(E);
    for (int64_t e = 0; e < E; ++e) values[e] = f(e);
    out.values[metric_index(name)] = values;
  };
  per_expert("expert_counts", [&](int64_t e) { return static_cast<double>(s.demand[e]); });
  per_expert("expert_served", [&](int64_t e) { return static_cast<double>(s.served[e]); });
  per_expert("frac_dem", [&](int64_t e) { return ratio(static_cast<double>(s.demand[e]), Tk); });
  per_expert("frac_srv", [&](int64_t e) { return ratio(static_cast<double>(s.served[e]), Tk); });
  per_expert("dropped", [&](int64_t e) { return static_cast<double>(s.demand[e] - s.served[e]); });
  out.values[metric_index("coactivation")].assign(s.coactivation.begin(), s.coactivation.end());
  return out;
}

}  // namespace moe
