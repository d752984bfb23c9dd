// The telemetry groups' entry points: the layers of one model, summarised and exported
// together.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/abi/entry.hpp"
#include "core/sized_struct.hpp"

using namespace moe::abi;  // guarded, the handle lookups, the shared checks (entry.hpp)

extern "C" {

moe_status_t moe_group_create(moe_group_t* group) {
  return guarded(__func__, [&] {
    require_pointer(group, "group");
    *group = new_handle<moe_group_t>(std::make_unique<moe_group>(), moe::HandleKind::Group);
  });
}

moe_status_t moe_group_destroy(moe_group_t group) {
  return guarded(__func__, [&] {
    if (group == nullptr) return;
    delete static_cast<moe_group*>(registry().remove(group, moe::HandleKind::Group, "group"));
  });
}

moe_status_t moe_group_add(moe_group_t group, const_moe_layer_t layer) {
  return guarded(__func__, [&] {
    moe_group& g = group_of(group);
    layer_of(layer);
    // Twice in one group, a layer would count twice in every mean.
    moe::require(std::find(g.layers.begin(), g.layers.end(), layer) == g.layers.end(),
                 MOE_STATUS_INVALID_ARGUMENT, "the layer is in the group already");
    g.layers.push_back(layer);
  });
}

moe_status_t moe_group_get_metrics(moe_group_t group, moe_split_t split, moe_scope_t scope,
                                   moe_group_metrics_t* metrics) {
  return guarded(__func__, [&] {
    const moe_group& g = group_of(group);
    checked_split(split);
    checked_scope(scope);
    const moe_group_metrics_t defaults = MOE_GROUP_METRICS_INIT;
    moe_group_metrics_t out = moe::read_sized(metrics, defaults, "metrics");
    const double nan = std::nan("");
    double frac_sum = 0, frac_max = nan, active_min = nan, aux_sum = 0, drop_sum = 0;
    int64_t counted = 0;
    for (const_moe_layer_t layer : g.layers) {
      const moe::MetricSet m = metrics_of(layer_of(layer), split, scope);
      const double max_frac = m.scalar("max_frac");
      if (std::isnan(max_frac)) continue;
      frac_sum += max_frac;
      frac_max = counted ? std::max(frac_max, max_frac) : max_frac;
      const double active = m.scalar("active_experts");
      active_min = counted ? std::min(active_min, active) : active;
      const double aux = m.scalar("aux_loss_scaled");
      aux_sum += std::isnan(aux) ? 0.0 : aux;
      drop_sum += m.scalar("drop_rate");
      ++counted;
    }
    out.layers = static_cast<int64_t>(g.layers.size());
    out.max_frac_mean = counted ? frac_sum / static_cast<double>(counted) : nan;
    out.max_frac_max = frac_max;
    out.active_min = active_min;
    out.aux_mean = counted ? aux_sum / static_cast<double>(counted) : nan;
    out.drop_frac_mean = counted ? drop_sum / static_cast<double>(counted) : nan;
    out.collapsed = counted && (frac_max >= 0.90 || active_min <= 1) ? 1 : 0;
    moe::write_sized(metrics, out, "metrics");
  });
}

moe_status_t moe_group_telemetry_export(moe_group_t group, moe_export_format_t format,
                                        moe_split_t split, moe_scope_t scope, char* buffer,
                                        size_t capacity, size_t* length) {
  return guarded(__func__, [&] {
    const moe_group& g = group_of(group);
    require_pointer(length, "length");
    checked_export_format(format);
    checked_split(split);
    checked_scope(scope);
    std::vector<moe::MetricSet> metrics;
    metrics.reserve(g.layers.size());  // the exports point into it
    std::vector<moe::LayerExport> layers;
    for (const_moe_layer_t layer : g.layers) {
      const moe::Layer& l = layer_of(layer);
      metrics.push_back(metrics_of(l, split, scope));
      layers.push_back(export_of(l, metrics.back(), split, scope));
    }
    hand_out(moe::export_metrics(format, layers), buffer, capacity, length);
  });
}

}  // extern "C"
