#include "core/telemetry/verdicts.hpp"

#include <algorithm>
#include <cmath>

namespace moe {
namespace {

const char* const kBalanceHint =
    "raise load_balance_alpha (e.g. 0.01 -> 0.02), raise router_temp_init/final or "
    "router_noise_std_init, or add router_z_loss_coef";
const char* const kModerateHint =
    "watch load_cv; if it keeps rising, raise load_balance_alpha slightly";
const char* const kDiffuseHint =
    "lower router_temp_final or router_noise_std_init, or lower load_balance_alpha; check "
    "that the model is learning";
const char* const kPeakedHint =
    "raise router_temp_init/final or router_noise_std_init, add router_z_loss_coef";
const char* const kPressureHint =
    "raise capacity_factor or go dropless (capacity_factor 0), or reduce peaking";

moe_verdict_t verdict(const char* label, const char* metric, double value, double threshold,
                      const char* hint) {
  return {label, metric, value, threshold, hint};
}

}  // namespace

moe_verdict_thresholds_t default_thresholds() {
  const moe_verdict_thresholds_t t = MOE_VERDICT_THRESHOLDS_INIT;
  return t;
}

moe_verdicts_t judge(const MetricSet& m, const LayerConfig& config,
                     const moe_verdict_thresholds_t& t, int64_t train_steps) {
  moe_verdicts_t out = MOE_VERDICTS_INIT;
  const double E = static_cast<double>(config.num_experts);
  const double max_frac = m.scalar("max_frac"), active = m.scalar("active_experts");
  const double cv = m.scalar("load_cv"), entropy_norm = m.scalar("load_entropy_norm");
  const double kl = m.scalar("kl_to_uniform"), dead = m.scalar("dead_experts");
  const double max_frac_limit =
      std::max(t.imbalance_max_frac_floor, t.imbalance_max_frac_experts / E);

  if (std::isnan(max_frac)) {
    out.balance = verdict("no_data", "", 0, 0, "");
  } else if (max_frac >= t.collapse_max_frac) {
    out.balance = verdict("collapsed", "max_frac", max_frac, t.collapse_max_frac, kBalanceHint);
  } else if (active <= t.collapse_active_experts) {
    out.balance =
        verdict("collapsed", "active_experts", active, t.collapse_active_experts, kBalanceHint);
  } else if (cv > t.imbalance_load_cv) {
    out.balance = verdict("imbalanced", "load_cv", cv, t.imbalance_load_cv, kBalanceHint);
  } else if (E > 1 && entropy_norm < t.imbalance_entropy_norm) {
    out.balance = verdict("imbalanced", "load_entropy_norm", entropy_norm, t.imbalance_entropy_norm,
                          kBalanceHint);
  } else if (kl > t.imbalance_kl) {
    out.balance = verdict("imbalanced", "kl_to_uniform", kl, t.imbalance_kl, kBalanceHint);
  } else if (dead > E * t.imbalance_dead_fraction) {
    out.balance =
        verdict("imbalanced", "dead_experts", dead, E * t.imbalance_dead_fraction, kBalanceHint);
  } else if (max_frac > max_frac_limit) {
    out.balance = verdict("imbalanced", "max_frac", max_frac, max_frac_limit, kBalanceHint);
  } else if (cv > t.moderate_load_cv) {
    out.balance = verdict("moderate", "load_cv", cv, t.moderate_load_cv, kModerateHint);
  } else {
    out.balance = verdict("balanced", "load_cv", cv, t.moderate_load_cv, "");
  }

  const double r_entropy = m.scalar("router_entropy_norm_mean"), top1 = m.scalar("top1_p_mean");
  if (!config.learned_router() || config.num_experts == 1) {
    out.specialization = verdict("not_applicable", "", 0, 0, "");
  } else if (std::isnan(top1)) {
    out.specialization = verdict("no_data", "", 0, 0, "");
  } else if (train_steps < t.specialization_warmup_steps) {
    out.specialization = verdict("warming_up", "steps", static_cast<double>(train_steps),
                                 static_cast<double>(t.specialization_warmup_steps), "");
  } else if (r_entropy > t.diffuse_entropy_norm) {
    out.specialization = verdict("diffuse", "router_entropy_norm_mean", r_entropy,
                                 t.diffuse_entropy_norm, kDiffuseHint);
  } else if (top1 < t.diffuse_top1_experts / E) {
    out.specialization =
        verdict("diffuse", "top1_p_mean", top1, t.diffuse_top1_experts / E, kDiffuseHint);
  } else if (top1 > t.peaked_top1) {
    out.specialization = verdict("peaked", "top1_p_mean", top1, t.peaked_top1, kPeakedHint);
  } else if (r_entropy < t.peaked_entropy_norm) {
    out.specialization = verdict("peaked", "router_entropy_norm_mean", r_entropy,
                                 t.peaked_entropy_norm, kPeakedHint);
  } else {
    out.specialization = verdict("healthy", "top1_p_mean", top1, t.peaked_top1, "");
  }

  const double drop_rate = m.scalar("drop_rate");
  const double gap = m.scalar("frac_dem_max") - m.scalar("frac_srv_max");
  if (std::isnan(drop_rate)) {
    out.capacity = verdict("no_data", "", 0, 0, "");
  } else if (drop_rate > t.pressure_drop_rate) {
    out.capacity = verdict("pressure", "drop_rate", drop_rate, t.pressure_drop_rate, kPressureHint);
  } else if (gap > t.pressure_frac_gap) {
    out.capacity =
        verdict("pressure", "frac_dem_max-frac_srv_max", gap, t.pressure_frac_gap, kPressureHint);
  } else {
    out.capacity = verdict("ok", "drop_rate", drop_rate, t.pressure_drop_rate, "");
  }
  return out;
}

}  // namespace moe
