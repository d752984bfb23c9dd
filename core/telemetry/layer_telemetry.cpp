#include "core/telemetry/layer_telemetry.hpp"

#include <cmath>

namespace moe {

LayerTelemetry::LayerTelemetry(int64_t experts, int64_t interval, double ema_decay)
    : experts_(experts), interval_(interval), decay_(ema_decay) {
  reset();
}

void LayerTelemetry::record(bool train, const StepStats& stats, const LayerConfig& config,
                            int64_t step) {
  Split& s = splits_[train ? MOE_SPLIT_TRAIN : MOE_SPLIT_EVAL];
  s.last = stats;
  s.window.add(stats);
  s.last_step = step;
  const MetricSet now = compute_metrics(stats, config);
  for (size_t i = 0; i < catalogue().size(); ++i) {
    if (catalogue()[i].shape != MOE_METRIC_SCALAR) continue;
    const double x = now.values[i][0];
    if (!s.ema_started || std::isnan(s.ema[i])) {
      s.ema[i] = x;
    } else if (!std::isnan(x)) {
      s.ema[i] = decay_ * s.ema[i] + (1.0 - decay_) * x;
    }
  }
  s.ema_started = true;
}

void LayerTelemetry::reset() {
  for (Split& s : splits_) {
    s.last = StepStats(experts_);
    s.window = StepStats(experts_);
    s.ema.assign(catalogue().size(), std::nan(""));
    s.ema_started = false;
    s.last_step = -1;
  }
}

MetricSet LayerTelemetry::metrics(moe_split_t split, moe_scope_t scope,
                                  const LayerConfig& config) const {
  const Split& s = splits_[split];
  if (scope == MOE_SCOPE_LAST) return compute_metrics(s.last, config);
  MetricSet window = compute_metrics(s.window, config);
  if (scope == MOE_SCOPE_EMA)
    for (size_t i = 0; i < catalogue().size(); ++i)
      if (catalogue()[i].shape == MOE_METRIC_SCALAR) window.values[i] = {s.ema[i]};
  return window;
}

}  // namespace moe
