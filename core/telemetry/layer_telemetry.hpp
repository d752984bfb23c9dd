// A layer's telemetry: the last sampled call, the window since reset and the EMA of
// every scalar, for training and eval calls apart.
#pragma once

#include <cstdint>
#include <vector>

#include "core/telemetry/metrics.hpp"
#include "core/telemetry/step_stats.hpp"

namespace moe {

class LayerTelemetry {
 public:
  LayerTelemetry(int64_t experts, int64_t interval, double ema_decay);

  // Whether this forward call is sampled (every interval-th call; never when 0).
  bool due();
  void record(bool train, const StepStats& stats, const LayerConfig& config, int64_t step);
  void reset();

  MetricSet metrics(moe_split_t split, moe_scope_t scope, const LayerConfig& config) const;
  int64_t recorded_step(moe_split_t split) const { return splits_[split].last_step; }

 private:
  struct Split {
    StepStats last, window;
    std::vector<double> ema;  // per catalogue entry (scalars only)
    bool ema_started = false;
    int64_t last_step = -1;
  };
  int64_t experts_, interval_;
  double decay_;
  int64_t calls_ = 0;
  Split splits_[2];
};

}  // namespace moe
