// moe.hpp covers the whole C ABI: each wrapper gives what the C call it wraps gives
// (compared with the C call made directly), owns its handle (moves leave nothing to
// destroy twice), and turns a failing status into moe::Exception with that status.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "problem.hpp"

namespace {

using moe_test::make_config;
using moe_test::Problem;

TEST(CppWrapper, LibraryLevelQueriesMatchTheCCalls) {
  int32_t major = -1;
  ASSERT_EQ(moe_version(&major, nullptr, nullptr), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe::version().major, major);
  const std::vector<std::string> names = moe::backends();
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names.back(), "cpu_ref");
  int32_t count = 0;
  ASSERT_EQ(moe_metric_count(&count), MOE_STATUS_SUCCESS);
  const auto catalogue = moe::metric_catalogue();
  ASSERT_EQ(static_cast<int32_t>(catalogue.size()), count);
  EXPECT_EQ(catalogue.front().shape, MOE_METRIC_SCALAR);
  EXPECT_EQ(catalogue.back().name, "coactivation");
}

TEST(CppWrapper, LayerTelemetryAndStateWrappers) {
  Problem<float> p(make_config(8, 8, 4, 2), 12, 3);
  moe::Layer& layer = p.layer;
  moe::Context a = p.forward();
  moe::Context b = p.forward(false);

  EXPECT_EQ(layer.step(), 1);
  layer.set_step(7);
  EXPECT_EQ(layer.step(), 7);
  layer.set_selection_bias({0.5, 0.0, -0.5, 1.0});
  EXPECT_EQ(layer.selection_bias(), (std::vector<double>{0.5, 0.0, -0.5, 1.0}));
  layer.set_stream(nullptr);  // CPU backends accept and ignore it

  double load_cv = 0;
  int64_t n = 0;
  ASSERT_EQ(
      moe_layer_metric(layer.get(), MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, "load_cv", &load_cv, 1, &n),
      MOE_STATUS_SUCCESS);
  EXPECT_EQ(layer.metric("load_cv"), std::vector<double>{load_cv});
  EXPECT_EQ(layer.metric("expert_counts").size(), 4u);
  const auto snapshot = layer.telemetry();
  EXPECT_EQ(snapshot.num_experts, 4);
  EXPECT_EQ(snapshot.coactivation.size(), 16u);
  EXPECT_FALSE(snapshot.scalars.empty());

  layer.set_name("blk,0");
  const std::string csv = layer.export_text(MOE_EXPORT_CSV);
  EXPECT_NE(csv.find("\"blk,0\""), std::string::npos);
  EXPECT_EQ(csv, layer.export_text(MOE_EXPORT_CSV_HEADER) + layer.export_text(MOE_EXPORT_CSV_ROW));
  moe_verdict_thresholds_t t = MOE_VERDICT_THRESHOLDS_INIT;
  t.specialization_warmup_steps = 0;
  layer.set_verdict_thresholds(t);
  EXPECT_STRNE(layer.verdicts(MOE_SPLIT_TRAIN, MOE_SCOPE_LAST).balance.label, "");
  EXPECT_TRUE(std::isfinite(layer.weight_metrics().expert_similarity_mean));
  EXPECT_EQ(layer.stage_profile().forward_calls, 2);
  layer.reset_telemetry();
  EXPECT_TRUE(std::isnan(layer.metric("load_cv", MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW)[0]));

  const auto same = a.compare_routing(a);
  EXPECT_EQ(same.top1, 1.0);
  EXPECT_EQ(same.topk, 1.0);
  EXPECT_EQ(b.stats(4).summary.tokens, 12);
}

TEST(CppWrapper, FailuresThrowWithTheirStatusAndHandlesMoveOnce) {
  moe_layer_config_t bad = make_config(8, 8, 4, 5);  // k > E
  try {
    moe::Layer layer(bad);
    ADD_FAILURE() << "k > E was accepted";
  } catch (const moe::Exception& e) {
    EXPECT_EQ(e.status(), MOE_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("top_k"), std::string::npos);
  }
  Problem<float> p(make_config(8, 8, 4, 2), 6, 1);
  try {
    p.layer.metric("no_such_metric");
    ADD_FAILURE();
  } catch (const moe::Exception& e) {
    EXPECT_EQ(e.status(), MOE_STATUS_INVALID_ARGUMENT);
  }
  moe::Layer moved = std::move(p.layer);
  EXPECT_EQ(p.layer.get(), nullptr);
  EXPECT_NE(moved.get(), nullptr);
  moe::Group group;
  moe::Group other = std::move(group);
  EXPECT_EQ(group.get(), nullptr);
  p.layer = std::move(moved);  // back, so the problem's destructor order holds
}

TEST(CppWrapper, GroupsAndCommunicators) {
  Problem<float> p(make_config(8, 8, 4, 2), 12, 3), q(make_config(8, 8, 4, 2), 12, 4);
  p.layer.set_name("first");
  q.layer.set_name("second");
  p.forward();
  q.forward();
  moe::Group group;
  group.add(p.layer);
  group.add(q.layer);
  EXPECT_EQ(group.metrics().layers, 2);
  const std::string prometheus = group.export_text(MOE_EXPORT_PROMETHEUS);
  size_t help_lines = 0;
  for (size_t at = prometheus.find("# HELP moe_load_cv "); at != std::string::npos;
       at = prometheus.find("# HELP moe_load_cv ", at + 1))
    ++help_lines;
  EXPECT_EQ(help_lines, 1u);
  EXPECT_NE(prometheus.find("layer=\"second\""), std::string::npos);

  moe::Comm comm = moe::Comm::local();
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.world(), 1);
  std::vector<double> values{1.5, -2.0};
  comm.all_reduce_sum(values);
  EXPECT_EQ(values, (std::vector<double>{1.5, -2.0}));
  const char send[3] = {'a', 'b', 'c'};
  char recv[3] = {};
  comm.all_to_all(send, {3}, recv, {3});
  EXPECT_EQ(std::string(recv, 3), "abc");
  try {
    comm.all_to_all(send, {3}, recv, {2});  // counts that do not pair up
    ADD_FAILURE();
  } catch (const moe::Exception& e) {
    EXPECT_EQ(e.status(), MOE_STATUS_INVALID_ARGUMENT);
  }
  comm.barrier();  // still usable

  p.layer.set_comm(comm);
  EXPECT_EQ(p.layer.local_experts(), (std::vector<int32_t>{0, 1, 2, 3}));
  p.bind();
  p.forward();
  EXPECT_EQ(p.layer.traffic().totals.world, 1);
  p.layer.detach();
}

// What the fresh-eyes review of the wrapper found: an empty Comm detached instead of
// failing, stats(0) and stats(-1) escaped the status check, a layer could join a group
// twice, and temporaries could be attached or added (their handles die at once).
template <typename T, typename Arg, typename = void>
struct can_add : std::false_type {};
template <typename T, typename Arg>
struct can_add<T, Arg, std::void_t<decltype(std::declval<T&>().add(std::declval<Arg>()))>>
    : std::true_type {};
template <typename T, typename Arg, typename = void>
struct can_attach : std::false_type {};
template <typename T, typename Arg>
struct can_attach<T, Arg, std::void_t<decltype(std::declval<T&>().set_comm(std::declval<Arg>()))>>
    : std::true_type {};

TEST(CppWrapper, MisuseIsRefused) {
  static_assert(can_add<moe::Group, const moe::Layer&>::value);
  static_assert(!can_add<moe::Group, moe::Layer&&>::value, "a temporary layer joins no group");
  static_assert(can_attach<moe::Layer, const moe::Comm&>::value);
  static_assert(!can_attach<moe::Layer, moe::Comm&&>::value, "a temporary Comm is not attached");

  Problem<float> p(make_config(8, 8, 4, 2), 6, 1);
  moe::Context ctx = p.forward();
  for (int64_t n : {0, -1}) {
    try {
      ctx.stats(n);
      ADD_FAILURE() << "stats(" << n << ") was accepted";
    } catch (const moe::Exception& e) {
      EXPECT_EQ(e.status(), MOE_STATUS_SHAPE_MISMATCH);
    }
  }
  moe::Comm empty;
  try {
    p.layer.set_comm(empty);
    ADD_FAILURE() << "an empty Comm was attached (it detached)";
  } catch (const moe::Exception& e) {
    EXPECT_EQ(e.status(), MOE_STATUS_NULL_POINTER);
  }
  p.forward();  // the weights are still bound

  moe::Group group;
  group.add(p.layer);
  try {
    group.add(p.layer);
    ADD_FAILURE() << "a layer joined one group twice";
  } catch (const moe::Exception& e) {
    EXPECT_EQ(e.status(), MOE_STATUS_INVALID_ARGUMENT);
  }
  EXPECT_EQ(group.metrics().layers, 1);
}

}  // namespace
