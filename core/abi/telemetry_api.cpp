// The telemetry entry points of a layer: metrics by name and all at once, reset, name,
// exports, verdicts and weight metrics.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/abi/entry.hpp"
#include "core/bfloat16.hpp"
#include "core/sized_struct.hpp"
#include "core/telemetry/verdicts.hpp"
#include "core/telemetry/weight_metrics.hpp"

using namespace moe::abi;  // guarded, the handle lookups, the shared checks (entry.hpp)

namespace {

// A host copy, in double, of one bound weight tensor.
std::vector<double> host_values(moe::Layer& l, const moe_tensor_t& t) {
  if (t.data == nullptr) return {};
  int64_t n = 1;
  for (int i = 0; i < t.ndim; ++i) n *= t.shape[i];
  const size_t element = moe::dtype_size(l.config.dtype);
  std::vector<unsigned char> raw(static_cast<size_t>(n) * element);
  l.backend.read_to_host(t, raw.data(), raw.size());
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (l.config.dtype == MOE_DTYPE_F64) {
      std::memcpy(&out[i], &raw[i * 8], 8);
    } else if (l.config.dtype == MOE_DTYPE_F32) {
      float f;
      std::memcpy(&f, &raw[i * 4], 4);
      out[i] = f;
    } else {
      moe::bfloat16 h;
      std::memcpy(&h, &raw[i * 2], 2);
      out[i] = h;
    }
  }
  return out;
}

}  // namespace

extern "C" {

moe_status_t moe_layer_metric(const_moe_layer_t layer, moe_split_t split, moe_scope_t scope,
                              const char* name, double* values, int64_t capacity, int64_t* count) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_pointer(name, "name");
    const int index = moe::metric_index(name);
    moe::require(index >= 0, MOE_STATUS_INVALID_ARGUMENT,
                 std::string("unknown metric '") + name + "' (see moe_metric_info)");
    const moe::MetricSet m = metrics_of(l, split, scope);
    const std::vector<double>& v = m.values[index];
    if (count) *count = static_cast<int64_t>(v.size());
    if (values) {
      moe::require(capacity >= static_cast<int64_t>(v.size()), MOE_STATUS_INVALID_ARGUMENT,
                   std::string("metric '") + name + "' has " + std::to_string(v.size()) +
                       " values; capacity is " + std::to_string(capacity));
      std::copy(v.begin(), v.end(), values);
    }
  });
}

moe_status_t moe_layer_telemetry(const_moe_layer_t layer, moe_telemetry_snapshot_t* snapshot) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    const moe_telemetry_snapshot_t defaults = MOE_TELEMETRY_SNAPSHOT_INIT;
    moe_telemetry_snapshot_t out = moe::read_sized(snapshot, defaults, "snapshot");
    const moe::MetricSet m = metrics_of(l, out.split, out.scope);
    const int64_t E = l.config.num_experts;
    int32_t scalars = 0, vectors = 0;
    for (size_t i = 0; i < moe::catalogue().size(); ++i) {
      const auto& v = m.values[i];
      switch (moe::catalogue()[i].shape) {
        case MOE_METRIC_SCALAR:
          if (out.scalars) out.scalars[scalars] = v[0];
          ++scalars;
          break;
        case MOE_METRIC_PER_EXPERT:
          if (out.per_expert) std::copy(v.begin(), v.end(), out.per_expert + vectors * E);
          ++vectors;
          break;
        case MOE_METRIC_MATRIX:
          if (out.coactivation) std::copy(v.begin(), v.end(), out.coactivation);
          break;
      }
    }
    out.num_scalars = scalars;
    out.num_per_expert = vectors;
    out.num_experts = E;
    out.step = l.telemetry.recorded_step(out.split);
    moe::write_sized(snapshot, out, "snapshot");
  });
}

moe_status_t moe_layer_telemetry_reset(moe_layer_t layer) {
  return guarded(__func__, [&] { layer_of(layer).telemetry.reset(); });
}

moe_status_t moe_layer_set_name(moe_layer_t layer, const char* name) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    require_pointer(name, "name");
    l.name = name;
  });
}

moe_status_t moe_layer_telemetry_export(const_moe_layer_t layer, moe_export_format_t format,
                                        moe_split_t split, moe_scope_t scope, char* buffer,
                                        size_t capacity, size_t* length) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_pointer(length, "length");
    checked_export_format(format);
    const moe::MetricSet m = metrics_of(l, split, scope);
    hand_out(moe::export_metrics(format, {export_of(l, m, split, scope)}), buffer, capacity,
             length);
  });
}

moe_status_t moe_layer_set_verdict_thresholds(moe_layer_t layer,
                                              const moe_verdict_thresholds_t* thresholds) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    const moe_verdict_thresholds_t t =
        moe::read_sized(thresholds, moe::default_thresholds(), "thresholds");
    // Every threshold is a finite number >= 0 (a NaN one would judge nothing and say so
    // nowhere); the warm-up is a step count.
    const std::pair<const char*, double> values[] = {
        {"collapse_max_frac", t.collapse_max_frac},
        {"collapse_active_experts", t.collapse_active_experts},
        {"imbalance_load_cv", t.imbalance_load_cv},
        {"imbalance_entropy_norm", t.imbalance_entropy_norm},
        {"imbalance_kl", t.imbalance_kl},
        {"imbalance_dead_fraction", t.imbalance_dead_fraction},
        {"imbalance_max_frac_floor", t.imbalance_max_frac_floor},
        {"imbalance_max_frac_experts", t.imbalance_max_frac_experts},
        {"moderate_load_cv", t.moderate_load_cv},
        {"diffuse_entropy_norm", t.diffuse_entropy_norm},
        {"diffuse_top1_experts", t.diffuse_top1_experts},
        {"peaked_top1", t.peaked_top1},
        {"peaked_entropy_norm", t.peaked_entropy_norm},
        {"pressure_drop_rate", t.pressure_drop_rate},
        {"pressure_frac_gap", t.pressure_frac_gap}};
    for (const auto& [name, value] : values)
      moe::require(std::isfinite(value) && value >= 0.0, MOE_STATUS_INVALID_ARGUMENT,
                   std::string("thresholds.") + name + " must be finite and >= 0, got " +
                       std::to_string(value));
    moe::require(t.specialization_warmup_steps >= 0, MOE_STATUS_INVALID_ARGUMENT,
                 "thresholds.specialization_warmup_steps must be >= 0");
    l.thresholds = t;
  });
}

moe_status_t moe_layer_verdicts(const_moe_layer_t layer, moe_split_t split, moe_scope_t scope,
                                moe_verdicts_t* verdicts) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    const moe::MetricSet m = metrics_of(l, split, scope);
    moe::write_sized(verdicts, moe::judge(m, l.config, l.thresholds, l.step), "verdicts");
  });
}

moe_status_t moe_layer_weight_metrics(const_moe_layer_t layer, moe_weight_metrics_t* metrics) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe::require(l.weights.bound, MOE_STATUS_INVALID_STATE, "no weights are bound");
    const std::vector<double> router = host_values(l, l.weights.router);
    const std::vector<double> w1 = host_values(l, l.weights.w1);
    moe::write_sized(metrics,
                     moe::weight_metrics(router, l.config.d_model, l.config.num_experts, w1),
                     "metrics");
  });
}

}  // extern "C"
