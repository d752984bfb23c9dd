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

  // Whether the forward call under way is sampled (every interval-th completed call;
  // never when the interval is 0). Asking does not advance the schedule: every part of
  // one call (the group's check-in, a device pipeline, the record) gets one answer,
  // and only count_forward, once the call has completed, moves on. So a rejected or
  // failed call shifts nothing.
  bool due() const { return interval_ > 0 && calls_ % interval_ == 0; }
  void count_forward() { ++calls_; }
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
