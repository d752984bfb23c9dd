// The telemetry entry points of the C ABI: the catalogue, lookup by name, the snapshot,
// exports, verdicts, groups, and their bad input (each with its status and message,
// leaving the layer usable).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "problem.hpp"

namespace {

using moe_test::make_config;
using moe_test::Problem;

TEST(TelemetryApi, CatalogueNamesAreUniqueAndCoverTheContract) {
  int32_t n = 0;
  ASSERT_EQ(moe_metric_count(&n), MOE_STATUS_SUCCESS);
  std::vector<std::string> names;
  int last_shape = 0;
  for (int32_t i = 0; i < n; ++i) {
    const char* name = nullptr;
    const char* help = nullptr;
    moe_metric_shape_t shape;
    ASSERT_EQ(moe_metric_info(i, &name, &shape, &help), MOE_STATUS_SUCCESS);
    EXPECT_GE(static_cast<int>(shape), last_shape) << "scalars, then vectors, then the matrix";
    last_shape = shape;
    EXPECT_GT(std::strlen(help), 5u);
    for (const std::string& seen : names) EXPECT_NE(seen, name);
    names.emplace_back(name);
  }
  for (const char* required : {"tokens",
                               "expert_counts",
                               "expert_served",
                               "frac_dem",
                               "frac_dem_max",
                               "frac_srv",
                               "frac_srv_max",
                               "load_entropy",
                               "load_entropy_norm",
                               "kl_to_uniform",
                               "load_std_pct",
                               "load_cv",
                               "load_variance",
                               "std_tokens_per_expert",
                               "max_load_pct",
                               "max_frac",
                               "min_max_ratio",
                               "max_over_mean",
                               "maxvio",
                               "gini",
                               "jain_fairness",
                               "diversity",
                               "dead_experts",
                               "active_experts",
                               "fraction_active",
                               "router_entropy_mean",
                               "router_entropy_norm_mean",
                               "top1_p_mean",
                               "topk_mass_mean",
                               "top1_margin_mean",
                               "importance_cv",
                               "aux_loss",
                               "aux_loss_scaled",
                               "z_loss",
                               "z_loss_scaled",
                               "logit_max_abs",
                               "nonfinite_rows",
                               "capacity",
                               "ideal_capacity",
                               "capacity_factor",
                               "capacity_usage",
                               "capacity_utilization",
                               "dropped",
                               "dropped_total",
                               "drop_rate",
                               "tokens_fully_dropped",
                               "avg_experts_per_token",
                               "routing_sparsity",
                               "coactivation",
                               "jaccard_mean",
                               "jaccard_max",
                               "seq_consistency",
                               "seq_topk_overlap",
                               "routing_locality"})
    EXPECT_NE(std::find(names.begin(), names.end(), required), names.end()) << required;
  EXPECT_EQ(moe_metric_info(n, nullptr, nullptr, nullptr), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_metric_count(nullptr), MOE_STATUS_NULL_POINTER);
}

TEST(TelemetryApi, SnapshotMatchesLookupByName) {
  Problem<float> p(make_config(8, 8, 4, 2), 50, 1);
  p.forward();
  int32_t n = 0;
  moe_metric_count(&n);
  std::vector<double> scalars(n), per_expert(n * 4), coactivation(16);
  moe_telemetry_snapshot_t s = MOE_TELEMETRY_SNAPSHOT_INIT;
  s.scalars = scalars.data();
  s.per_expert = per_expert.data();
  s.coactivation = coactivation.data();
  ASSERT_EQ(moe_layer_telemetry(p.layer.get(), &s), MOE_STATUS_SUCCESS) << moe_last_error();
  EXPECT_EQ(s.num_experts, 4);
  EXPECT_EQ(s.step, 0);
  int32_t scalar = 0, vector = 0;
  for (int32_t i = 0; i < n; ++i) {
    const char* name;
    moe_metric_shape_t shape;
    moe_metric_info(i, &name, &shape, nullptr);
    std::vector<double> v(16);
    int64_t count = 0;
    ASSERT_EQ(moe_layer_metric(p.layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, name, v.data(), 16,
                               &count),
              MOE_STATUS_SUCCESS);
    if (shape == MOE_METRIC_SCALAR) {
      EXPECT_EQ(count, 1);
      if (!std::isnan(v[0])) {
        EXPECT_EQ(scalars[scalar], v[0]) << name;
      }
      ++scalar;
    } else if (shape == MOE_METRIC_PER_EXPERT) {
      EXPECT_EQ(count, 4);
      for (int e = 0; e < 4; ++e) EXPECT_EQ(per_expert[vector * 4 + e], v[e]) << name;
      ++vector;
    } else {
      EXPECT_EQ(count, 16);
      for (int i2 = 0; i2 < 16; ++i2) EXPECT_EQ(coactivation[i2], v[i2]);
    }
  }
  EXPECT_EQ(s.num_scalars, scalar);
  EXPECT_EQ(s.num_per_expert, vector);
}

TEST(TelemetryApi, BadInputIsRefusedAndChangesNothing) {
  Problem<float> p(make_config(8, 8, 4, 2), 20, 1);
  p.forward();
  moe_layer_t layer = p.layer.get();
  double v[16];
  int64_t count = 0;
  EXPECT_EQ(
      moe_layer_metric(layer, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, "no_such_metric", v, 16, &count),
      MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(moe_last_error()).find("no_such_metric"), std::string::npos);
  EXPECT_EQ(moe_layer_metric(layer, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, "expert_counts", v, 3, &count),
            MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_layer_metric(layer, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, nullptr, v, 16, &count),
            MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(
      moe_layer_metric(layer, static_cast<moe_split_t>(7), MOE_SCOPE_LAST, "gini", v, 16, &count),
      MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(
      moe_layer_metric(layer, MOE_SPLIT_TRAIN, static_cast<moe_scope_t>(-1), "gini", v, 16, &count),
      MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_layer_telemetry(layer, nullptr), MOE_STATUS_NULL_POINTER);
  size_t length = 0;
  EXPECT_EQ(moe_layer_telemetry_export(layer, static_cast<moe_export_format_t>(9), MOE_SPLIT_TRAIN,
                                       MOE_SCOPE_LAST, nullptr, 0, &length),
            MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_layer_telemetry_export(layer, MOE_EXPORT_JSONL, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST,
                                       nullptr, 0, nullptr),
            MOE_STATUS_NULL_POINTER);
  ASSERT_EQ(moe_layer_telemetry_export(layer, MOE_EXPORT_CSV, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST,
                                       nullptr, 0, &length),
            MOE_STATUS_SUCCESS);
  std::vector<char> text(length + 1, 'x');
  ASSERT_EQ(moe_layer_telemetry_export(layer, MOE_EXPORT_CSV, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST,
                                       text.data(), length, &length),  // one short: untouched
            MOE_STATUS_SUCCESS);
  EXPECT_EQ(text[0], 'x');
  ASSERT_EQ(moe_layer_telemetry_export(layer, MOE_EXPORT_CSV, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST,
                                       text.data(), text.size(), &length),
            MOE_STATUS_SUCCESS);
  EXPECT_EQ(std::string(text.data()).rfind("step,layer,split,scope,tokens", 0), 0u);
  EXPECT_EQ(moe_layer_set_name(layer, nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(moe_layer_verdicts(layer, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, nullptr),
            MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(moe_layer_set_verdict_thresholds(layer, nullptr), MOE_STATUS_NULL_POINTER);
  // NaN, infinite or negative thresholds are refused, and the layer keeps its own.
  for (double bad : {std::nan(""), -0.5, HUGE_VAL}) {
    moe_verdict_thresholds_t t = MOE_VERDICT_THRESHOLDS_INIT;
    t.imbalance_load_cv = bad;
    EXPECT_EQ(moe_layer_set_verdict_thresholds(layer, &t), MOE_STATUS_INVALID_ARGUMENT) << bad;
  }
  moe_verdict_thresholds_t negative_warmup = MOE_VERDICT_THRESHOLDS_INIT;
  negative_warmup.specialization_warmup_steps = -1;
  EXPECT_EQ(moe_layer_set_verdict_thresholds(layer, &negative_warmup), MOE_STATUS_INVALID_ARGUMENT);
  // A step from which counting on would overflow is refused.
  int64_t step = -1;
  ASSERT_EQ(moe_layer_get_step(layer, &step), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_layer_set_step(layer, INT64_MAX), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_layer_set_step(layer, int64_t{1} << 62), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_layer_set_step(layer, step), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_layer_weight_metrics(layer, nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(moe_ctx_compare_routing(nullptr, nullptr, nullptr, nullptr), MOE_STATUS_NULL_POINTER);
  Problem<float> other(make_config(8, 8, 4, 2), 21, 1);
  moe::Context a = p.forward(), b = other.forward();
  EXPECT_EQ(moe_ctx_compare_routing(a.get(), b.get(), nullptr, nullptr), MOE_STATUS_SHAPE_MISMATCH);

  // The layer's telemetry is what it was: one more call still counts normally.
  ASSERT_EQ(moe_layer_metric(layer, MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, "steps", v, 16, &count),
            MOE_STATUS_SUCCESS);
  EXPECT_EQ(v[0], 2);
}

TEST(TelemetryApi, GroupsCheckTheirHandles) {
  moe_group_t group = nullptr;
  ASSERT_EQ(moe_group_create(&group), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_group_add(group, nullptr), MOE_STATUS_NULL_POINTER);
  moe_group_metrics_t m = MOE_GROUP_METRICS_INIT;
  EXPECT_EQ(moe_group_get_metrics(group, static_cast<moe_split_t>(5), MOE_SCOPE_LAST, &m),
            MOE_STATUS_INVALID_ARGUMENT);
  {
    Problem<float> p(make_config(8, 8, 4, 2), 20, 1);
    p.forward();
    ASSERT_EQ(moe_group_add(group, p.layer.get()), MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_group_get_metrics(group, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, &m),
              MOE_STATUS_SUCCESS);
    EXPECT_EQ(m.layers, 1);
  }
  // The layer is gone: the group says so instead of reading freed memory.
  EXPECT_EQ(moe_group_get_metrics(group, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, &m),
            MOE_STATUS_INVALID_HANDLE);
  EXPECT_EQ(moe_group_destroy(group), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_group_destroy(group), MOE_STATUS_INVALID_HANDLE);
  EXPECT_EQ(moe_group_get_metrics(group, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, &m),
            MOE_STATUS_INVALID_HANDLE);
}

TEST(TelemetryApi, OffMeansNothingRecorded) {
  moe_layer_config_t c = make_config(8, 8, 4, 2);
  c.telemetry_interval = 0;
  Problem<float> p(c, 20, 1);
  p.forward();
  double tokens = -1;
  int64_t count = 0;
  moe_layer_metric(p.layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, "tokens", &tokens, 1, &count);
  EXPECT_EQ(tokens, 0);
  c.telemetry_interval = -1;
  moe_layer_t layer = nullptr;
  EXPECT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_INVALID_ARGUMENT);
  c.telemetry_interval = 1;
  c.telemetry_ema_decay = 1.0;
  EXPECT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_INVALID_ARGUMENT);
}

// Every interval-th forward is sampled, counting completed calls only: the same under a
// communicator (whose check-in once consumed a sample of its own, so that interval 2
// never recorded) and across a rejected call (which once shifted the schedule).
TEST(TelemetryApi, EveryIntervalthCallIsSampledWithOrWithoutACommunicator) {
  for (bool on_comm : {false, true}) {
    for (int64_t interval : {1, 2, 3}) {
      SCOPED_TRACE(std::string(on_comm ? "local communicator" : "no communicator") + ", interval " +
                   std::to_string(interval));
      moe_layer_config_t c = make_config(8, 8, 4, 2);
      c.telemetry_interval = interval;
      Problem<float> p(c, 20, 1);
      moe_comm_t comm = nullptr;
      if (on_comm) {
        ASSERT_EQ(moe_comm_create_local(&comm), MOE_STATUS_SUCCESS);
        ASSERT_EQ(moe_layer_set_comm(p.layer.get(), comm, nullptr, 0), MOE_STATUS_SUCCESS);
        p.bind();  // attaching unbinds; one rank owns every expert
      }
      const int calls = 7;
      for (int call = 0; call < calls; ++call) {
        moe_forward_args_t bad = p.forward_args();
        bad.x.shape[1] = 3;  // rejected: changes nothing, the schedule included
        moe_ctx_t ctx = nullptr;
        EXPECT_EQ(moe_layer_forward(p.layer.get(), &bad, &ctx), MOE_STATUS_SHAPE_MISMATCH);
        p.forward();
      }
      double tokens = -1;
      int64_t count = 0;
      ASSERT_EQ(moe_layer_metric(p.layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, "tokens",
                                 &tokens, 1, &count),
                MOE_STATUS_SUCCESS);
      const int64_t sampled = (calls + interval - 1) / interval;  // calls 0, n, 2n, ...
      EXPECT_EQ(tokens, static_cast<double>(sampled * p.T));
      if (on_comm) {
        ASSERT_EQ(moe_layer_set_comm(p.layer.get(), nullptr, nullptr, 0), MOE_STATUS_SUCCESS);
        EXPECT_EQ(moe_comm_destroy(comm), MOE_STATUS_SUCCESS);
      }
    }
  }
}

// Co-activation (E x E counts per record) is kept up to 256 experts and left empty
// above: a 4096-expert layer once held 0.93 GB after one 16-token forward. The memory a
// forward adds is measured from the process's resident set.
int64_t resident_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

TEST(TelemetryApi, CoactivationIsKeptUpTo256Experts) {
  for (int64_t E : {256, 257, 4096}) {
    SCOPED_TRACE(E);
    moe_layer_config_t c = make_config(8, 8, E, 2);
    c.backend = "cpu_ref";
    Problem<float> p(c, 16, 1);
    const int64_t before = resident_kib();
    p.forward();
    p.forward(false);
    const int64_t grown_kib = resident_kib() - before;
    int64_t matrix = -1, one = 0;
    double jaccard = 0;
    ASSERT_EQ(moe_layer_metric(p.layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, "coactivation",
                               nullptr, 0, &matrix),
              MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_layer_metric(p.layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, "jaccard_mean",
                               &jaccard, 1, &one),
              MOE_STATUS_SUCCESS);
    if (E <= 256) {
      EXPECT_EQ(matrix, E * E);
      EXPECT_FALSE(std::isnan(jaccard));
    } else {
      EXPECT_EQ(matrix, 0);
      EXPECT_TRUE(std::isnan(jaccard));
      EXPECT_LT(grown_kib, 64 * 1024)
          << "two forwards on " << E << " experts took " << grown_kib << " KiB";
    }
  }
}

}  // namespace
