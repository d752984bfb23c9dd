// Expert parallelism under mpirun (2 and 4 ranks): every rank runs the same global
// batch in one process (the reference) and its own share of it through an
// expert-parallel layer, then compares. With cpu_ref, outputs, dx, expert gradients,
// routing, drops, selection bias and telemetry must be bit-identical (telemetry to
// summation order); the router gradient, a sum over ranks, after
// moe_layer_reduce_router_grad to rounding. With MOE_TEST_BACKEND=onednn, 1e-5.
// Exits non-zero on the first failure (MPI_Abort).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/bfloat16.hpp"
#include "moe/moe.hpp"
#include "moe/moe_mpi.h"
#include "tests/cpp/ep_scenarios.hpp"

namespace {

int g_rank = 0, g_world = 1;
std::string g_case;

#define CHECK(cond, ...)                                                                      \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      std::fprintf(stderr, "rank %d [%s]: %s:%d: CHECK(%s) failed: ", g_rank, g_case.c_str(), \
                   __FILE__, __LINE__, #cond);                                                \
      std::fprintf(stderr, __VA_ARGS__);                                                      \
      std::fprintf(stderr, " [%s]\n", moe_last_error());                                      \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                           \
    }                                                                                         \
  } while (0)

const char* backend() {
  const char* name = std::getenv("MOE_TEST_BACKEND");
  return name && *name ? name : "cpu_ref";
}
bool exact() {
  return std::strcmp(backend(), "cpu_ref") == 0;
}

template <typename S>
moe_dtype_t dtype_of();
template <>
moe_dtype_t dtype_of<float>() {
  return MOE_DTYPE_F32;
}
template <>
moe_dtype_t dtype_of<double>() {
  return MOE_DTYPE_F64;
}
template <>
moe_dtype_t dtype_of<moe::bfloat16>() {
  return MOE_DTYPE_BF16;
}

using Scenario = moe_test::EpScenario;
using moe_test::ep_base_config;

// How the expert-parallel layer exchanges rows: one per token copy (the default), one
// per (token, rank) (moe_ep_options_t.dedup), or one per (token, rank) over a slot-table
// placement with replicated experts.
enum class Path { kPerCopy, kDedup, kChunked, kReplicated };
const char* path_name(Path p) {
  return p == Path::kPerCopy   ? ""
         : p == Path::kDedup   ? "/dedup"
         : p == Path::kChunked ? "/dedup_3_chunks"
                               : "/replicated";
}

// moe_placement_from_load's table for `load` in world * (E / world + 1) slots (at
// least one redundant slot), with the predicted imbalance before and after.
std::vector<int32_t> placement_for(const std::vector<double>& load, double& before, double& after) {
  const int64_t E = static_cast<int64_t>(load.size());
  const int64_t slots = g_world * (E / g_world + 1);
  std::vector<int32_t> table(slots);
  CHECK(moe_placement_from_load(load.data(), E, g_world, slots, 1, table.data(), &before, &after) ==
            MOE_STATUS_SUCCESS,
        "placement from load");
  return table;
}

// A slot table with replicas: expert 0 ten times as loaded as the others.
std::vector<int32_t> skewed_slot_table(int64_t E) {
  std::vector<double> load(E, 1.0);
  load[0] = 10.0;
  double before = 0, after = 0;
  std::vector<int32_t> table = placement_for(load, before, after);
  CHECK(after <= before, "placement made the ranks less balanced: %g -> %g", before, after);
  return table;
}

// The rank each kept copy of the batch goes to, written here from the documented rule
// (docs/distributed.md): an expert's kept copies, in batch order, split into contiguous
// blocks over its holders in rank order, floor(position * holders / kept). -1: none.
std::vector<int32_t> copy_destinations(const moe::Context::RoutingDecision& r,
                                       const std::vector<std::vector<int32_t>>& holders) {
  const size_t n = r.experts.size();
  std::vector<int64_t> kept(holders.size(), 0), seen(holders.size(), 0);
  for (size_t i = 0; i < n; ++i)
    if (r.experts[i] >= 0 && !r.dropped[i]) ++kept[r.experts[i]];
  std::vector<int32_t> dest(n, -1);
  for (size_t i = 0; i < n; ++i) {
    const int32_t e = r.experts[i];
    if (e < 0 || r.dropped[i]) continue;
    const int64_t m = static_cast<int64_t>(holders[e].size());
    dest[i] = holders[e][seen[e]++ * m / kept[e]];
  }
  return dest;
}

// Values a and b agree: same bits on cpu_ref, else within `tol` relative.
template <typename S>
void expect_equal(const S* a, const S* b, int64_t n, double tol, const char* what) {
  for (int64_t i = 0; i < n; ++i) {
    const double x = static_cast<double>(a[i]), y = static_cast<double>(b[i]);
    if (tol == 0.0) {
      CHECK(std::memcmp(&a[i], &b[i], sizeof(S)) == 0, "%s[%lld]: %.17g vs single-process %.17g",
            what, static_cast<long long>(i), x, y);
    } else {
      CHECK(std::abs(x - y) <= tol * (1.0 + std::abs(y)), "%s[%lld]: %.17g vs single-process %.17g",
            what, static_cast<long long>(i), x, y);
    }
  }
}

void expect_close(const double* a, const double* b, int64_t n, double tol, const char* what) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    CHECK(std::abs(a[i] - b[i]) <= tol * (1.0 + std::abs(b[i])), "%s[%lld]: %.17g vs %.17g", what,
          static_cast<long long>(i), a[i], b[i]);
  }
}

// Where a metric lies in a snapshot: its index among the metrics of its shape.
int32_t snapshot_position(const char* wanted) {
  int32_t count = 0;
  moe_metric_count(&count);
  int32_t position[3] = {0, 0, 0};
  for (int32_t i = 0; i < count; ++i) {
    const char* name = nullptr;
    moe_metric_shape_t shape = MOE_METRIC_SCALAR;
    moe_metric_info(i, &name, &shape, nullptr);
    if (std::strcmp(name, wanted) == 0) return position[shape];
    ++position[shape];
  }
  CHECK(false, "no metric %s", wanted);
  return -1;
}

// rank_balancedness, rank_imbalance_ratio and overload_factor from each rank's load:
// the served copies of the experts it holds (expected only where every expert has one
// holder; with replicas the load of an expert splits by the split rule, and then the
// rank loads need only add up). Writes them into `want`.
void expect_rank_metrics(const std::vector<double>& got, std::vector<double>& want,
                         const std::vector<double>& per_expert,
                         const std::vector<std::vector<int32_t>>& holders, int64_t E,
                         const std::string& export_jsonl) {
  const int32_t served = snapshot_position("expert_served"),
                counts = snapshot_position("expert_counts"), frac = snapshot_position("frac_dem");
  const int32_t balancedness = snapshot_position("rank_balancedness"),
                imbalance = snapshot_position("rank_imbalance_ratio"),
                overload = snapshot_position("overload_factor");
  std::vector<double> load(g_world, 0.0);
  double copies = std::nan("");  // T k, from d_e / frac_dem_e
  bool one_holder = true;
  for (int64_t e = 0; e < E; ++e) {
    one_holder = one_holder && holders[e].size() == 1;
    load[holders[e][0]] += per_expert[served * E + e];
    if (per_expert[counts * E + e] > 0)
      copies = per_expert[counts * E + e] / per_expert[frac * E + e];
  }
  if (!one_holder) {
    CHECK(got[balancedness] > 0 && got[balancedness] <= 1, "rank_balancedness %g",
          got[balancedness]);
    for (int32_t m : {balancedness, imbalance, overload}) want[m] = got[m];
    return;
  }
  const double most = *std::max_element(load.begin(), load.end());
  const double mean = std::accumulate(load.begin(), load.end(), 0.0) / g_world;
  // The JSONL export lists the same loads: "rank_load":[L_0,L_1,...].
  const size_t at = export_jsonl.find("\"rank_load\":[");
  CHECK(at != std::string::npos, "the export has no rank_load");
  std::string exported = export_jsonl.substr(at + 13);
  exported = exported.substr(0, exported.find(']'));
  std::string want_text;
  for (double l : load)
    want_text += (want_text.empty() ? "" : ",") + std::to_string(static_cast<int64_t>(l));
  CHECK(exported == want_text, "exported rank_load [%s], expected [%s]", exported.c_str(),
        want_text.c_str());
  want[balancedness] = mean / most;
  want[imbalance] = (most - mean) / mean;
  want[overload] = most / (copies / g_world);
}

// n draws of N(0, scale^2) from rng.
std::vector<double> normal_values(std::mt19937_64& rng, int64_t n, double scale) {
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> v(n);
  for (double& e : v) e = scale * normal(rng);
  return v;
}

// One layer's weights and gradients, for `experts` of the E experts.
template <typename S>
struct Params {
  std::vector<S> router, w1, b1, w2, b2;
  moe_weights_t view(const moe_layer_config_t& c, int64_t experts) {
    const int64_t d = c.d_model,
                  F = c.activation == MOE_ACTIVATION_SWIGLU || c.activation == MOE_ACTIVATION_GEGLU
                          ? 2 * c.d_ff
                          : c.d_ff;
    moe_weights_t w = MOE_WEIGHTS_INIT;
    const moe_dtype_t t = dtype_of<S>();
    if (c.router != MOE_ROUTER_HASH) w.router = moe::tensor(router.data(), t, {d, c.num_experts});
    w.w1 = moe::tensor(w1.data(), t, {experts, d, F});
    w.w2 = moe::tensor(w2.data(), t, {experts, c.d_ff, d});
    if (c.expert_bias) {
      w.b1 = moe::tensor(b1.data(), t, {experts, F});
      w.b2 = moe::tensor(b2.data(), t, {experts, d});
    }
    return w;
  }
  // The given experts' slices of full [E, ...] tensors.
  Params slice(const std::vector<int32_t>& experts, const moe_layer_config_t& c) const {
    const int64_t d = c.d_model, dff = c.d_ff, F = w1.size() / (c.num_experts * d);
    Params p;
    p.router = router;
    auto take = [&](const std::vector<S>& from, std::vector<S>& to, int64_t block) {
      for (int32_t e : experts)
        if (!from.empty()) to.insert(to.end(), &from[e * block], &from[e * block] + block);
    };
    take(w1, p.w1, d * F);
    take(b1, p.b1, F);
    take(w2, p.w2, dff * d);
    take(b2, p.b2, d);
    return p;
  }
  void zeros_like(const Params& o) {
    router.assign(o.router.size(), S(0));
    w1.assign(o.w1.size(), S(0));
    b1.assign(o.b1.size(), S(0));
    w2.assign(o.w2.size(), S(0));
    b2.assign(o.b2.size(), S(0));
  }
};

template <typename S>
struct Run {
  std::vector<std::vector<S>> y, dx;  // per step
  std::vector<moe_losses_t> losses;
  std::vector<moe::Context::RoutingDecision> routing;
  Params<S> grads;
  std::vector<double> bias;
  std::vector<double> scalars, per_expert, coactivation;
  std::string export_jsonl;  // the window's JSONL export (rank_load under a communicator)
};

template <typename S>
Run<S> run_layer(moe::Layer& layer, const Scenario& sc, Params<S>& weights, int64_t experts,
                 const std::vector<S>& x, const std::vector<S>& dy, std::vector<int64_t> ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  const moe_layer_config_t& c = sc.config;
  const int64_t d = c.d_model, E = c.num_experts;
  layer.set_weights(weights.view(c, experts));
  Run<S> run;
  run.grads.zeros_like(weights);
  for (int step = 0; step < sc.steps; ++step) {
    std::vector<S> y(T * d, S(0)), dx(T * d, S(0));
    moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
    fa.x = moe::tensor(const_cast<S*>(x.data()), dtype_of<S>(), {T, d});
    fa.y = moe::tensor(y.data(), dtype_of<S>(), {T, d});
    fa.train = sc.train ? 1 : 0;
    fa.seq_len = sc.seq_len;
    fa.token_ids = ids.data();
    moe::Context ctx = layer.forward(fa);
    moe_backward_args_t ba = MOE_BACKWARD_ARGS_INIT;
    ba.dy = moe::tensor(const_cast<S*>(dy.data()), dtype_of<S>(), {T, d});
    ba.dx = moe::tensor(dx.data(), dtype_of<S>(), {T, d});
    ba.grads = run.grads.view(c, experts);
    ba.flags = step > 0 && sc.accumulate ? MOE_BACKWARD_ACCUMULATE : 0u;
    layer.backward(ctx, ba);
    run.y.push_back(y);
    run.dx.push_back(dx);
    run.losses.push_back(ctx.losses());
    run.routing.push_back(ctx.routing());
  }
  run.bias.resize(E);
  CHECK(moe_layer_get_selection_bias(layer.get(), run.bias.data(), E) == MOE_STATUS_SUCCESS,
        "selection bias");
  int32_t scalars = 0;
  CHECK(moe_metric_count(&scalars) == MOE_STATUS_SUCCESS, "metric count");
  run.scalars.assign(scalars, 0.0);
  run.per_expert.assign(scalars * E, 0.0);
  run.coactivation.assign(E * E, 0.0);
  moe_telemetry_snapshot_t snap = MOE_TELEMETRY_SNAPSHOT_INIT;
  snap.split = sc.train ? MOE_SPLIT_TRAIN : MOE_SPLIT_EVAL;
  snap.scope = MOE_SCOPE_WINDOW;
  snap.scalars = run.scalars.data();
  snap.per_expert = run.per_expert.data();
  snap.coactivation = run.coactivation.data();
  CHECK(moe_layer_telemetry(layer.get(), &snap) == MOE_STATUS_SUCCESS, "telemetry");
  run.scalars.resize(snap.num_scalars);
  run.per_expert.resize(snap.num_per_expert * E);
  run.export_jsonl = layer.export_text(MOE_EXPORT_JSONL, snap.split, MOE_SCOPE_WINDOW);
  return run;
}

template <typename S>
void run_scenario(moe_comm_t comm, Scenario sc, uint64_t seed, Path path = Path::kPerCopy) {
  g_case = sc.name + "/" + std::to_string(sizeof(S) * 8) + "bit" + path_name(path);
  moe_layer_config_t& c = sc.config;
  c.dtype = dtype_of<S>();
  c.backend = c.dtype == MOE_DTYPE_F64 ? "cpu_ref" : backend();
  const bool bit_exact = exact() || c.dtype == MOE_DTYPE_F64;
  const double tol = bit_exact ? 0.0 : (c.dtype == MOE_DTYPE_BF16 ? 2e-2 : 1e-5);
  const int64_t d = c.d_model, E = c.num_experts, dff = c.d_ff;
  const int64_t F =
      c.activation == MOE_ACTIVATION_SWIGLU || c.activation == MOE_ACTIVATION_GEGLU ? 2 * dff : dff;
  int64_t T = 0, offset = 0;
  for (int r = 0; r < g_world; ++r) {
    if (r < g_rank) offset += sc.split[r];
    T += sc.split[r];
  }
  const int64_t mine = sc.split[g_rank];

  // The global problem, the same on every rank.
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto fill = [&](std::vector<S>& v, int64_t n, double scale) {
    v.resize(n);
    for (auto& e : v) e = static_cast<S>(scale * normal(rng));
  };
  std::vector<S> x, dy;
  Params<S> full;
  fill(x, T * d, 1.0);
  fill(dy, T * d, 1.0);
  fill(full.router, d * E, 1.0 / std::sqrt(static_cast<double>(d)));
  fill(full.w1, E * d * F, 1.0 / std::sqrt(static_cast<double>(d)));
  fill(full.w2, E * dff * d, 1.0 / std::sqrt(static_cast<double>(dff)));
  if (c.expert_bias) {
    fill(full.b1, E * F, 0.1);
    fill(full.b2, E * d, 0.1);
  }

  std::vector<int64_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = t * 7 + 3;  // token ids of the hash router
  moe::Layer reference(c);
  const Run<S> ref = run_layer(reference, sc, full, E, x, dy, ids);

  moe::Layer layer(c);
  std::vector<std::vector<int32_t>> holders(E);
  if (path == Path::kReplicated) {
    layer.set_comm(comm);
    const std::vector<int32_t> table = skewed_slot_table(E);
    layer.set_placement(table);
    const int64_t per_rank = static_cast<int64_t>(table.size()) / g_world;
    for (size_t i = 0; i < table.size(); ++i)
      if (table[i] >= 0) holders[table[i]].push_back(static_cast<int32_t>(i / per_rank));
    CHECK(holders[0].size() > 1, "expert 0 is not replicated");
  } else {
    layer.set_comm(comm, sc.owner);
    if (path == Path::kDedup) layer.set_dedup(true);
    // Three chunks: the same expert rows, so the same bits as one (the bounds below, and
    // the expert gradients, computed from the saved activations, bit for bit).
    if (path == Path::kChunked) layer.set_dedup(true, 3);
    for (int64_t e = 0; e < E; ++e)
      holders[e] = {sc.owner.empty() ? static_cast<int32_t>(e * g_world / E) : sc.owner[e]};
  }
  const std::vector<int32_t> experts = layer.local_experts();
  for (int32_t e : experts)
    CHECK(std::count(holders[e].begin(), holders[e].end(), g_rank) == 1,
          "expert %d is not this rank's", e);
  Params<S> local = full.slice(experts, c);
  const std::vector<S> x_mine(x.begin() + offset * d, x.begin() + (offset + mine) * d);
  const std::vector<S> dy_mine(dy.begin() + offset * d, dy.begin() + (offset + mine) * d);
  Run<S> got = run_layer(layer, sc, local, static_cast<int64_t>(experts.size()), x_mine, dy_mine,
                         std::vector<int64_t>(ids.begin() + offset, ids.begin() + offset + mine));

  const int64_t slots = c.top_k;
  // One row per token copy: y and dx are the single process's bits. One row per
  // (token, rank): a token whose kept copies all went to one rank still gets the same y;
  // otherwise y and dx add the ranks' partial sums, each rounded to the dtype once more,
  // which the docs bound by a few units of the dtype's rounding of the row's magnitude.
  int64_t row_bytes_expected = 0, per_copy_expected = 0;
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(S));
  const double unit = c.dtype == MOE_DTYPE_BF16  ? 0x1p-8
                      : c.dtype == MOE_DTYPE_F64 ? 0x1p-53
                                                 : 0x1p-24;
  for (int step = 0; step < sc.steps; ++step) {
    if (path == Path::kPerCopy) {
      expect_equal(got.y[step].data(), &ref.y[step][offset * d], mine * d, tol, "y");
      expect_equal(got.dx[step].data(), &ref.dx[step][offset * d], mine * d, tol, "dx");
    }
    const std::vector<int32_t> dest = copy_destinations(ref.routing[step], holders);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> ranks;
      int64_t kept = 0;
      for (int64_t j = 0; j < slots; ++j)
        if (dest[t * slots + j] >= 0) {
          ranks.push_back(dest[t * slots + j]);
          ++kept;
        }
      std::sort(ranks.begin(), ranks.end());
      ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
      const int64_t n = static_cast<int64_t>(ranks.size());
      row_bytes_expected += 4 * n * row_bytes + 32 * kept;  // rows each way, metadata, dgate
      per_copy_expected += 4 * kept * row_bytes;
      if (path == Path::kPerCopy || t < offset || t >= offset + mine) continue;
      const S* a = &got.y[step][(t - offset) * d];
      const S* b = &ref.y[step][t * d];
      const S* da = &got.dx[step][(t - offset) * d];
      const S* db = &ref.dx[step][t * d];
      double scale = 1.0, dscale = 1.0;
      for (int64_t i = 0; i < d; ++i) {
        scale = std::max(scale, std::abs(static_cast<double>(b[i])));
        dscale = std::max(dscale, std::abs(static_cast<double>(db[i])));
      }
      const bool same_bits = bit_exact && n <= 1;
      const double bound = std::max(tol, 8 * unit);
      for (int64_t i = 0; i < d; ++i) {
        const double ya = static_cast<double>(a[i]), yb = static_cast<double>(b[i]);
        CHECK(same_bits ? ya == yb : std::abs(ya - yb) <= bound * scale,
              "step %d y[%lld, %lld] (%lld ranks): %.9g vs %.9g", step, static_cast<long long>(t),
              static_cast<long long>(i), static_cast<long long>(n), ya, yb);
        const double xa = static_cast<double>(da[i]), xb = static_cast<double>(db[i]);
        CHECK(std::abs(xa - xb) <= bound * dscale * (sc.steps + 1),
              "step %d dx[%lld, %lld]: %.9g vs %.9g", step, static_cast<long long>(t),
              static_cast<long long>(i), xa, xb);
      }
    }
    const auto& a = got.routing[step];
    const auto& b = ref.routing[step];
    for (int64_t i = 0; i < mine * slots; ++i) {
      CHECK(a.experts[i] == b.experts[offset * slots + i], "step %d copy %lld: expert %d vs %d",
            step, static_cast<long long>(i), a.experts[i], b.experts[offset * slots + i]);
      CHECK(a.dropped[i] == b.dropped[offset * slots + i], "step %d copy %lld: dropped %d vs %d",
            step, static_cast<long long>(i), a.dropped[i], b.dropped[offset * slots + i]);
    }
    const double loss_tol = bit_exact ? 1e-12 : 1e-5;
    const double la[] = {got.losses[step].aux_loss, got.losses[step].z_loss};
    const double lb[] = {ref.losses[step].aux_loss, ref.losses[step].z_loss};
    expect_close(la, lb, 2, loss_tol, "aux_loss, z_loss");
  }
  const Params<S> ref_mine = ref.grads.slice(experts, c);
  // A replicated expert's gradient is its holders' partial sums added: rounding apart.
  const double grad_tol =
      path == Path::kReplicated && bit_exact ? (c.dtype == MOE_DTYPE_F64 ? 1e-12 : 1e-5) : tol;
  expect_equal(got.grads.w1.data(), ref_mine.w1.data(), ref_mine.w1.size(), grad_tol, "grad w1");
  expect_equal(got.grads.w2.data(), ref_mine.w2.data(), ref_mine.w2.size(), grad_tol, "grad w2");
  expect_equal(got.grads.b1.data(), ref_mine.b1.data(), ref_mine.b1.size(), grad_tol, "grad b1");
  expect_equal(got.grads.b2.data(), ref_mine.b2.data(), ref_mine.b2.size(), grad_tol, "grad b2");
  if (path == Path::kReplicated) {
    // Every holder of a replicated expert has the same gradient bits.
    const int64_t block = static_cast<int64_t>(got.grads.w1.size()) /
                          std::max<int64_t>(1, static_cast<int64_t>(experts.size()));
    std::vector<S> all_w1(static_cast<size_t>(E * block), S(0)), summed(all_w1.size());
    std::vector<int32_t> mine_holds(E, 0), holds(E, 0);
    for (size_t j = 0; j < experts.size(); ++j) {
      std::copy_n(&got.grads.w1[j * block], block, &all_w1[experts[j] * block]);
      mine_holds[experts[j]] = 1;
    }
    for (int64_t e = 0; e < E; ++e) {
      if (holders[e].size() < 2) continue;
      // Rank 0's view of the lowest holder's bits, compared on every holder.
      std::vector<S> first(static_cast<size_t>(block));
      if (g_rank == holders[e][0]) std::copy_n(&all_w1[e * block], block, first.data());
      MPI_Bcast(first.data(), static_cast<int>(block * sizeof(S)), MPI_BYTE, holders[e][0],
                MPI_COMM_WORLD);
      if (mine_holds[e])
        CHECK(std::memcmp(first.data(), &all_w1[e * block], block * sizeof(S)) == 0,
              "expert %lld's gradient differs between its holders", static_cast<long long>(e));
    }
  }
  if (c.router != MOE_ROUTER_HASH) {
    layer.reduce_router_grad(moe::tensor(got.grads.router.data(), dtype_of<S>(), {d, E}));
    const double router_tol = c.dtype == MOE_DTYPE_BF16  ? 3e-2
                              : c.dtype == MOE_DTYPE_F64 ? 1e-12
                                                         : 1e-5;
    double scale = 0;
    for (S v : ref.grads.router) scale = std::max(scale, std::abs(static_cast<double>(v)));
    for (size_t i = 0; i < ref.grads.router.size(); ++i) {
      const double g = static_cast<double>(got.grads.router[i]);
      const double r = static_cast<double>(ref.grads.router[i]);
      CHECK(std::abs(g - r) <= router_tol * scale, "router grad[%zu]: %.9g vs %.9g (scale %g)", i,
            g, r, scale);
    }
    // Every rank holds the same bits after the reduction.
    std::vector<S> root = got.grads.router;
    MPI_Bcast(root.data(), static_cast<int>(root.size() * sizeof(S)), MPI_BYTE, 0, MPI_COMM_WORLD);
    CHECK(std::memcmp(root.data(), got.grads.router.data(), root.size() * sizeof(S)) == 0,
          "router gradient differs from rank 0's");
  }
  CHECK(got.bias == ref.bias, "selection bias differs");
  const double metric_tol = bit_exact ? 1e-9 : 1e-4;
  // The single process has no ranks (its rank metrics are NaN): the group's are what the
  // definitions (docs/metrics.md, expert-parallel ranks) give for the reference's served
  // counts on the experts each rank holds.
  std::vector<double> want_scalars = ref.scalars;
  expect_rank_metrics(got.scalars, want_scalars, ref.per_expert, holders, E, got.export_jsonl);
  CHECK(ref.export_jsonl.find("rank_load") == std::string::npos,
        "a layer without a communicator exports rank_load");
  expect_close(got.scalars.data(), want_scalars.data(), got.scalars.size(), metric_tol, "metric");
  expect_close(got.per_expert.data(), ref.per_expert.data(), got.per_expert.size(), metric_tol,
               "per-expert metric");
  expect_close(got.coactivation.data(), ref.coactivation.data(), got.coactivation.size(), 0.0,
               "coactivation");

  // Traffic: the copies this rank kept, by the ranks they went to.
  moe::Layer::Traffic traffic = layer.traffic();
  std::vector<int64_t> expected(g_world, 0);
  for (int step = 0; step < sc.steps; ++step) {
    const std::vector<int32_t> dest = copy_destinations(ref.routing[step], holders);
    for (int64_t i = offset * slots; i < (offset + mine) * slots; ++i)
      if (dest[i] >= 0) ++expected[dest[i]];
  }
  // The token rows the group moved: one per copy, or one per (token, rank) with the
  // copies' metadata, as counted above from the single process's routing.
  int64_t moved[2] = {traffic.totals.row_bytes_sent, traffic.totals.per_copy_row_bytes_sent};
  MPI_Allreduce(MPI_IN_PLACE, moved, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  CHECK(moved[1] == per_copy_expected, "per-copy row bytes %lld, expected %lld",
        static_cast<long long>(moved[1]), static_cast<long long>(per_copy_expected));
  CHECK(moved[0] == (path == Path::kPerCopy ? per_copy_expected : row_bytes_expected),
        "row bytes %lld, expected %lld", static_cast<long long>(moved[0]),
        static_cast<long long>(path == Path::kPerCopy ? per_copy_expected : row_bytes_expected));
  for (int p = 0; p < g_world; ++p)
    CHECK(traffic.peers[p].tokens_sent == expected[p], "tokens sent to %d: %lld vs %lld", p,
          static_cast<long long>(traffic.peers[p].tokens_sent),
          static_cast<long long>(expected[p]));
  std::vector<int64_t> sent(g_world), received(g_world);
  for (int p = 0; p < g_world; ++p) sent[p] = traffic.peers[p].tokens_sent;
  MPI_Alltoall(sent.data(), 1, MPI_INT64_T, received.data(), 1, MPI_INT64_T, MPI_COMM_WORLD);
  for (int p = 0; p < g_world; ++p)
    CHECK(traffic.peers[p].tokens_received == received[p], "tokens received from %d", p);
  CHECK(traffic.totals.exchanges > 0 && traffic.totals.exchange_seconds >= 0.0, "exchange count");
  const moe_stage_profile_t profile = layer.stage_profile();
  CHECK(profile.exchange > 0.0 && profile.exchange_backward > 0.0, "exchange time profiled");
  layer.set_comm(nullptr);
  if (g_rank == 0) std::printf("ok %s\n", g_case.c_str());
}

// Bad attachments are refused on every rank, and the layer stays usable.
void refusals(moe_comm_t comm) {
  g_case = "refusals";
  moe_layer_config_t c = ep_base_config(4, 1);
  c.backend = backend();
  moe::Layer layer(c);
  const int32_t bad_owner[4] = {0, 0, 0, g_world};
  CHECK(moe_layer_set_comm(layer.get(), comm, bad_owner, 4) == MOE_STATUS_INVALID_ARGUMENT,
        "owner out of range");
  CHECK(moe_layer_set_comm(layer.get(), comm, bad_owner, 3) == MOE_STATUS_SHAPE_MISMATCH,
        "owner count");
  // A refusal on one rank only (rank 1's map is short) fails every rank, with its status.
  const int32_t good_owner[4] = {0, 0, 0, 0};
  CHECK(moe_layer_set_comm(layer.get(), comm, good_owner, g_rank == 1 ? 3 : 4) ==
                MOE_STATUS_SHAPE_MISMATCH &&
            std::strstr(moe_last_error(), g_rank == 1 ? "expert_owner has 3" : "rank 1 refused"),
        "one rank's short map");
  // Ranks that disagree on the map: all of them refuse.
  std::vector<int32_t> owner(4, 0);
  owner[3] = g_rank;
  CHECK(moe_layer_set_comm(layer.get(), comm, owner.data(), 4) == MOE_STATUS_INVALID_ARGUMENT &&
            std::strstr(moe_last_error(), "owner of expert 3"),
        "disagreeing maps");
  moe_layer_config_t other = c;
  other.top_k = g_rank == 0 ? 1 : 2;
  moe::Layer mismatched(other);
  CHECK(moe_layer_set_comm(mismatched.get(), comm, nullptr, 0) == MOE_STATUS_INVALID_ARGUMENT &&
            std::strstr(moe_last_error(), "top_k"),
        "disagreeing configs");
  moe_layer_config_t ec = c;
  ec.router = MOE_ROUTER_EXPERT_CHOICE;
  moe::Layer expert_choice(ec);
  CHECK(moe_layer_set_comm(expert_choice.get(), comm, nullptr, 0) == MOE_STATUS_UNSUPPORTED,
        "expert choice");
  moe_layer_config_t bh = c;  // the balanced hash ranks the whole batch, which no rank holds
  bh.router = MOE_ROUTER_HASH;
  bh.hash_mode = MOE_HASH_BALANCED;
  moe::Layer balanced(bh);
  CHECK(moe_layer_set_comm(balanced.get(), comm, nullptr, 0) == MOE_STATUS_UNSUPPORTED &&
            std::strstr(moe_last_error(), "balanced hash mode"),
        "balanced hash");

  layer.set_comm(comm);
  CHECK(moe_comm_destroy(comm) == MOE_STATUS_INVALID_STATE, "destroyed while attached");
  // Full-size expert weights no longer fit: each rank binds its own experts.
  const int64_t held = static_cast<int64_t>(layer.local_experts().size());
  std::vector<float> router(16 * 4), w1(4 * 16 * 24), w2(4 * 24 * 16);
  moe_weights_t w = MOE_WEIGHTS_INIT;
  w.router = moe::tensor(router.data(), MOE_DTYPE_F32, {16, 4});
  w.w1 = moe::tensor(w1.data(), MOE_DTYPE_F32, {4, 16, 24});
  w.w2 = moe::tensor(w2.data(), MOE_DTYPE_F32, {4, 24, 16});
  if (held != 4)
    CHECK(moe_layer_set_weights(layer.get(), &w) == MOE_STATUS_SHAPE_MISMATCH, "full weights");
  w.w1 = moe::tensor(w1.data(), MOE_DTYPE_F32, {held, 16, 24});
  w.w2 = moe::tensor(w2.data(), MOE_DTYPE_F32, {held, 24, 16});
  CHECK(moe_layer_set_weights(layer.get(), &w) == MOE_STATUS_SUCCESS, "local weights");

  // One rank's bad input fails the call on every rank, with that rank's status, and
  // leaves the group usable.
  const int64_t T = 3;
  std::vector<float> x(T * 16, 0.5f), y(T * 16), dy(T * 16, 1.0f);
  moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
  fa.x = moe::tensor(x.data(), MOE_DTYPE_F32, {T, 16});
  fa.y = moe::tensor(y.data(), MOE_DTYPE_F32, {T, g_rank == 1 ? 15 : 16});
  moe_ctx_t a = nullptr, b = nullptr;
  CHECK(moe_layer_forward(layer.get(), &fa, &a) == MOE_STATUS_SHAPE_MISMATCH,
        "a bad y on rank 1 fails every rank");
  CHECK(std::strstr(moe_last_error(), g_rank == 1 ? "args.y" : "rank 1 refused") != nullptr,
        "the message names the cause");
  fa.y = moe::tensor(y.data(), MOE_DTYPE_F32, {T, 16});
  // Even a call refused before its arguments are read (NULL args) checks in.
  CHECK(
      moe_layer_forward(layer.get(), g_rank == 0 ? nullptr : &fa, &a) == MOE_STATUS_NULL_POINTER &&
          std::strstr(moe_last_error(), g_rank == 0 ? "args is NULL" : "rank 0 refused"),
      "NULL args on rank 0 fail every rank");
  CHECK(moe_layer_forward(layer.get(), &fa, &a) == MOE_STATUS_SUCCESS, "forward a");
  CHECK(moe_layer_forward(layer.get(), &fa, &b) == MOE_STATUS_SUCCESS, "forward b");
  // Backward of different forwards on different ranks: refused everywhere.
  moe_backward_args_t ba = MOE_BACKWARD_ARGS_INIT;
  ba.dy = moe::tensor(dy.data(), MOE_DTYPE_F32, {T, 16});
  CHECK(moe_layer_backward(layer.get(), g_rank == 0 ? a : b, &ba) == MOE_STATUS_INVALID_STATE &&
            std::strstr(moe_last_error(), "out of step"),
        "backward of different forwards");
  CHECK(moe_layer_backward(layer.get(), g_rank == 1 ? nullptr : b, &ba) == MOE_STATUS_NULL_POINTER,
        "a NULL ctx on rank 1 fails every rank");
  CHECK(moe_layer_backward(layer.get(), b, &ba) == MOE_STATUS_SUCCESS, "backward b");
  CHECK(moe_layer_backward(layer.get(), a, &ba) == MOE_STATUS_SUCCESS, "backward a");
  moe_ctx_destroy(a);
  moe_ctx_destroy(b);
  layer.set_comm(nullptr);
  if (g_rank == 0) std::printf("ok refusals\n");
}

// 200 training iterations: no hang, and still the single-process result at the end.
void long_run(moe_comm_t comm) {
  Scenario s = moe_test::ep_scenario("200_iterations", g_world, 8, 2, 24);
  s.config.d_model = 8;
  s.config.d_ff = 8;
  s.config.capacity_factor = 1.0;
  s.config.bias_update_rate = 0.001;
  s.steps = 200;
  run_scenario<float>(comm, s, 99);
}

// Two layers of one model share the communicator, their calls interleaved as in
// training (forward 1, forward 2, backward 2, backward 1): each still gives the
// single-process result.
void shared_communicator(moe_comm_t comm) {
  g_case = "two_layers_share_a_communicator";
  struct Model {
    moe_layer_config_t config;
    Params<float> full, local, grads;
    std::unique_ptr<moe::Layer> ep, single;
    std::vector<int32_t> experts;
  };
  const int64_t T = 10 * g_world, mine = 10, d = 16;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto random = [&](int64_t n) {
    std::vector<float> v(n);
    for (float& e : v) e = static_cast<float>(0.5 * normal(rng));
    return v;
  };
  std::vector<Model> models(2);
  models[0].config = ep_base_config(4, 1);
  models[1].config = ep_base_config(6, 2);
  models[1].config.capacity_factor = 1.0;
  for (Model& m : models) {
    m.config.backend = backend();
    const int64_t E = m.config.num_experts;
    m.full.router = random(d * E);
    m.full.w1 = random(E * d * 24);
    m.full.w2 = random(E * 24 * d);
    m.single = std::make_unique<moe::Layer>(m.config);
    m.single->set_weights(m.full.view(m.config, E));
    m.ep = std::make_unique<moe::Layer>(m.config);
    m.ep->set_comm(comm);
    m.experts = m.ep->local_experts();
    m.local = m.full.slice(m.experts, m.config);
    m.ep->set_weights(m.local.view(m.config, static_cast<int64_t>(m.experts.size())));
  }
  const std::vector<float> x = random(T * d), dy = random(T * d);
  auto args = [&](const float* in, float* out, int64_t n) {
    moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
    a.x = moe::tensor(const_cast<float*>(in), MOE_DTYPE_F32, {n, d});
    a.y = moe::tensor(out, MOE_DTYPE_F32, {n, d});
    return a;
  };
  // The single-process model: y1 = layer1(x), y2 = layer2(y1); then backward.
  std::vector<float> y1(T * d), y2(T * d), dx2(T * d), dx1(T * d);
  moe::Context c1 = models[0].single->forward(args(x.data(), y1.data(), T));
  moe::Context c2 = models[1].single->forward(args(y1.data(), y2.data(), T));
  moe_backward_args_t b = MOE_BACKWARD_ARGS_INIT;
  b.dy = moe::tensor(const_cast<float*>(dy.data()), MOE_DTYPE_F32, {T, d});
  b.dx = moe::tensor(dx2.data(), MOE_DTYPE_F32, {T, d});
  models[1].single->backward(c2, b);
  b.dy = moe::tensor(dx2.data(), MOE_DTYPE_F32, {T, d});
  b.dx = moe::tensor(dx1.data(), MOE_DTYPE_F32, {T, d});
  models[0].single->backward(c1, b);
  // The same on this rank's tokens, through the shared communicator.
  const int64_t at = g_rank * mine * d;
  std::vector<float> e1(mine * d), e2(mine * d), edx2(mine * d), edx1(mine * d);
  moe::Context p1 = models[0].ep->forward(args(&x[at], e1.data(), mine));
  moe::Context p2 = models[1].ep->forward(args(e1.data(), e2.data(), mine));
  b.dy = moe::tensor(const_cast<float*>(&dy[at]), MOE_DTYPE_F32, {mine, d});
  b.dx = moe::tensor(edx2.data(), MOE_DTYPE_F32, {mine, d});
  models[1].ep->backward(p2, b);
  b.dy = moe::tensor(edx2.data(), MOE_DTYPE_F32, {mine, d});
  b.dx = moe::tensor(edx1.data(), MOE_DTYPE_F32, {mine, d});
  models[0].ep->backward(p1, b);
  const double tol = exact() ? 0.0 : 1e-5;
  expect_equal(e2.data(), &y2[at], mine * d, tol, "y of layer 2");
  expect_equal(edx1.data(), &dx1[at], mine * d, tol, "dx of layer 1");
  for (Model& m : models) m.ep->set_comm(nullptr);
  if (g_rank == 0) std::printf("ok %s\n", g_case.c_str());
}

// The global-batch aux loss over data-parallel replicas: each rank's own whole layer
// (no expert parallelism) sums its counts over the aux communicator. Its loss and
// router gradient must be those of a lone layer that first ran the other ranks'
// micro-batches (accumulating their counts) and then this rank's: the counts are
// integers, exact in any order.
void data_parallel_global_aux(moe_comm_t comm) {
  g_case = "data_parallel_global_aux";
  const int64_t T = 24, d = 8, E = 6, F = 12;
  moe_layer_config_t c = ep_base_config(E, 2);
  c.d_model = d;
  c.d_ff = F;
  c.backend = "cpu_ref";  // float64: what is checked is the sum over replicas
  c.aux_loss_scope = MOE_AUX_LOSS_GLOBAL;
  c.load_balance_alpha = 0.3;
  std::mt19937_64 rng(11);
  auto random = [&](int64_t n, double scale) { return normal_values(rng, n, scale); };
  std::vector<double> router = random(d * E, 1.0), w1 = random(E * d * F, 0.3),
                      w2 = random(E * F * d, 0.3);
  std::vector<std::vector<double>> xs;
  for (int q = 0; q < g_world; ++q) xs.push_back(random(T * d, 1.0 + q));
  const std::vector<double> dy = random(T * d, 1.0);
  c.dtype = MOE_DTYPE_F64;
  moe_weights_t w = MOE_WEIGHTS_INIT;
  w.router = moe::tensor(router.data(), MOE_DTYPE_F64, {d, E});
  w.w1 = moe::tensor(w1.data(), MOE_DTYPE_F64, {E, d, F});
  w.w2 = moe::tensor(w2.data(), MOE_DTYPE_F64, {E, F, d});
  // Forward then backward of one call; returns (aux loss, router gradient).
  auto step = [&](moe::Layer& layer, const std::vector<double>& x) {
    std::vector<double> y(T * d), grad(d * E);
    moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
    a.x = moe::tensor(const_cast<double*>(x.data()), MOE_DTYPE_F64, {T, d});
    a.y = moe::tensor(y.data(), MOE_DTYPE_F64, {T, d});
    moe::Context ctx = layer.forward(a);
    moe_backward_args_t b = MOE_BACKWARD_ARGS_INIT;
    b.dy = moe::tensor(const_cast<double*>(dy.data()), MOE_DTYPE_F64, {T, d});
    b.grads.router = moe::tensor(grad.data(), MOE_DTYPE_F64, {d, E});
    layer.backward(ctx, b);
    return std::make_pair(ctx.losses().aux_loss, grad);
  };
  moe::Layer replica(c), lone(c);
  replica.set_weights(w);
  lone.set_weights(w);
  CHECK(moe_layer_set_aux_comm(replica.get(), comm) == MOE_STATUS_SUCCESS, "set_aux_comm");
  for (int round = 0; round < 2; ++round) {  // the second round after a reset
    const auto mine = step(replica, xs[g_rank]);
    for (int q = 0; q < g_world; ++q)
      if (q != g_rank) step(lone, xs[q]);
    const auto expected = step(lone, xs[g_rank]);
    CHECK(mine.first == expected.first, "aux loss %.17g vs %.17g (round %d)", mine.first,
          expected.first, round);
    expect_equal(mine.second.data(), expected.second.data(), d * E, 0.0, "router gradient");
    int64_t calls = 0;
    const std::vector<double> counts = replica.aux_counts(&calls);
    CHECK(calls == 1 && counts == lone.aux_counts(), "accumulated counts");
    replica.reset_aux_counts();
    lone.reset_aux_counts();
  }
  CHECK(moe_layer_set_aux_comm(replica.get(), nullptr) == MOE_STATUS_SUCCESS, "detach");
  if (g_rank == 0) std::printf("ok %s\n", g_case.c_str());
}

// A peer that arrives late: the wait is charged to the exchange (and to the call's
// total), never subtracted from a stage that did not contain it.
void late_peer_profile(moe_comm_t comm) {
  g_case = "late_peer_profile";
  moe_layer_config_t c = ep_base_config(4, 1);
  c.backend = backend();
  moe::Layer layer(c);
  layer.set_comm(comm);
  const int64_t held = static_cast<int64_t>(layer.local_experts().size()), T = 8, d = 16;
  std::vector<float> router(d * 4, 0.1f), w1(held * d * 24, 0.01f), w2(held * 24 * d, 0.01f);
  moe_weights_t w = MOE_WEIGHTS_INIT;
  w.router = moe::tensor(router.data(), MOE_DTYPE_F32, {d, 4});
  w.w1 = moe::tensor(w1.data(), MOE_DTYPE_F32, {held, d, 24});
  w.w2 = moe::tensor(w2.data(), MOE_DTYPE_F32, {held, 24, d});
  layer.set_weights(w);
  std::vector<float> x(T * d, 0.5f), y(T * d), dy(T * d, 1.0f);
  moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
  fa.x = moe::tensor(x.data(), MOE_DTYPE_F32, {T, d});
  fa.y = moe::tensor(y.data(), MOE_DTYPE_F32, {T, d});
  moe_backward_args_t ba = MOE_BACKWARD_ARGS_INIT;
  ba.dy = moe::tensor(dy.data(), MOE_DTYPE_F32, {T, d});
  layer.stage_profile(true);
  const double late = 0.2;
  auto arrive = [&] {
    if (g_rank == 1) std::this_thread::sleep_for(std::chrono::duration<double>(late));
  };
  arrive();
  moe::Context ctx = layer.forward(fa);
  arrive();
  layer.backward(ctx, ba);
  const moe_stage_profile_t p = layer.stage_profile();
  const double stages[] = {
      p.router,           p.plan,           p.permute,          p.experts,
      p.combine,          p.telemetry,      p.combine_backward, p.experts_backward,
      p.permute_backward, p.router_backward};
  for (double t : stages) CHECK(t >= 0.0, "a stage has negative time %g", t);
  CHECK(p.forward_other >= -1e-9 && p.backward_other >= -1e-9, "other: %g, %g", p.forward_other,
        p.backward_other);
  if (g_rank == 0)
    CHECK(p.exchange >= 0.9 * late && p.exchange_backward >= 0.9 * late &&
              p.forward_total >= p.exchange && p.backward_total >= p.exchange_backward,
          "waiting for the late peer: exchange %g of %g (forward), %g of %g (backward)", p.exchange,
          p.forward_total, p.exchange_backward, p.backward_total);
  layer.set_comm(nullptr);
  if (g_rank == 0) std::printf("ok %s\n", g_case.c_str());
}

// Load-driven placement, applied between steps as docs/distributed.md prescribes: the
// layer's expert load over a window, a slot table from it, every per-expert tensor moved
// through the communicator, the table installed, the moved weights bound, and training
// continues equal to the single process. Bad tables are refused on every rank.
void placement_from_load_flow(moe_comm_t comm) {
  g_case = "placement_from_load_flow";
  moe_layer_config_t c = ep_base_config(8, 2);
  c.dtype = MOE_DTYPE_F64;
  c.backend = "cpu_ref";
  const int64_t d = c.d_model, E = c.num_experts, F = c.d_ff, T = 24 * g_world;
  std::mt19937_64 rng(77);
  auto random = [&](int64_t n, double scale) { return normal_values(rng, n, scale); };
  Params<double> full;
  full.router = random(d * E, 0.5);
  for (int64_t i = 0; i < d; ++i) full.router[i * E + 3] += 1.0;  // expert 3 is popular
  full.w1 = random(E * d * F, 0.25);
  full.w2 = random(E * F * d, 0.2);
  const std::vector<double> x = random(T * d, 1.0);
  const int64_t mine = T / g_world, offset = g_rank * mine;
  const std::vector<double> x_mine(x.begin() + offset * d, x.begin() + (offset + mine) * d);
  auto forward = [&](moe::Layer& layer, const std::vector<double>& in, int64_t n) {
    std::vector<double> y(n * d);
    moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
    fa.x = moe::tensor(const_cast<double*>(in.data()), MOE_DTYPE_F64, {n, d});
    fa.y = moe::tensor(y.data(), MOE_DTYPE_F64, {n, d});
    fa.train = 1;
    layer.forward(fa);
    return y;
  };
  moe::Layer reference(c), layer(c);
  reference.set_weights(full.view(c, E));
  layer.set_comm(comm);
  Params<double> local = full.slice(layer.local_experts(), c);
  layer.set_weights(local.view(c, static_cast<int64_t>(layer.local_experts().size())));
  for (int step = 0; step < 2; ++step) {
    forward(reference, x, T);
    forward(layer, x_mine, mine);
  }
  // The window's load is the batch's, on every rank, equal to the single process's.
  const std::vector<double> load = layer.expert_load(), ref_load = reference.expert_load();
  CHECK(load == ref_load, "expert load differs from the single process's");
  double total = 0;
  for (double l : load) total += l;
  CHECK(total == 2.0 * T * 2, "the load counts %g copies, not %lld", total,
        static_cast<long long>(4 * T));
  CHECK(layer.expert_load(true) == load && layer.expert_load()[3] == 0.0, "reset");

  double before = 0, after = 0;
  const std::vector<int32_t> table = placement_for(load, before, after);
  const int64_t slots = static_cast<int64_t>(table.size());
  CHECK(after < before, "no better balance: %g -> %g", before, after);

  // Refusals, on every rank, and nothing changes.
  std::vector<int32_t> bad = table;
  bad[0] = bad[1];  // one rank holding an expert twice
  CHECK(moe_layer_set_placement(layer.get(), bad.data(), slots) == MOE_STATUS_INVALID_ARGUMENT,
        "expert twice on a rank");
  std::vector<int32_t> missing(slots, 0);
  CHECK(moe_layer_set_placement(layer.get(), missing.data(), slots) == MOE_STATUS_INVALID_ARGUMENT,
        "experts without a slot");
  CHECK(
      moe_layer_set_placement(layer.get(), table.data(), slots - 1) == MOE_STATUS_INVALID_ARGUMENT,
      "slots not a multiple of the world");
  std::vector<int32_t> differs = table;
  if (g_rank == 1) std::swap(differs[0], differs[slots - 1]);
  CHECK(moe_layer_set_placement(layer.get(), differs.data(), slots) == MOE_STATUS_INVALID_ARGUMENT,
        "tables that differ between ranks");
  // One rank alone refusing its own table (an expert twice on it), or passing a valid
  // table of another length: every rank refuses, the refusing rank with its own reason,
  // and the group stays usable (the barrier below would time out otherwise).
  std::vector<int32_t> one_bad = table;
  if (g_rank == g_world - 1) one_bad[slots - 1] = one_bad[slots - 2];
  CHECK(moe_layer_set_placement(layer.get(), one_bad.data(), slots) == MOE_STATUS_INVALID_ARGUMENT,
        "one rank's invalid table");
  if (g_rank == g_world - 1)
    CHECK(std::string(moe_last_error()).find("already holds expert") != std::string::npos,
          "the refusing rank's own reason: %s", moe_last_error());
  std::vector<double> src_bytes(local.w1.size(), 0.0), dst_bytes(local.w1.size() * 4, 0.0);
  CHECK(moe_layer_move_expert_tensor(layer.get(), one_bad.data(), slots, src_bytes.data(),
                                     dst_bytes.data(), 8) == MOE_STATUS_INVALID_ARGUMENT,
        "one rank's invalid table (move)");
  std::vector<int32_t> longer = table;
  if (g_rank == 0) longer.insert(longer.end(), table.begin(), table.end());
  CHECK(moe_layer_set_placement(layer.get(), longer.data(), static_cast<int64_t>(longer.size())) ==
            MOE_STATUS_INVALID_ARGUMENT,
        "tables of different lengths");
  CHECK(moe_comm_barrier(comm) == MOE_STATUS_SUCCESS, "the group is still usable");
  moe_ep_options_t options = MOE_EP_OPTIONS_INIT;
  options.dedup = g_rank == 0 ? 1 : 0;
  CHECK(moe_layer_set_ep_options(layer.get(), &options) == MOE_STATUS_INVALID_ARGUMENT,
        "options that differ between ranks");
  options.dedup = 2;
  CHECK(moe_layer_set_ep_options(layer.get(), &options) == MOE_STATUS_INVALID_ARGUMENT, "dedup 2");
  options.dedup = 0;
  options.chunks = 4;
  CHECK(moe_layer_set_ep_options(layer.get(), &options) == MOE_STATUS_INVALID_ARGUMENT,
        "chunks without dedup");
  options.dedup = 1;
  options.chunks = 65;
  CHECK(moe_layer_set_ep_options(layer.get(), &options) == MOE_STATUS_INVALID_ARGUMENT,
        "65 chunks");
  CHECK(layer.local_experts().size() == local.w1.size() / (d * F), "placement changed");

  // A ctx of the old placement is refused by backward after the change.
  std::vector<double> y_old(mine * d), dy(mine * d, 1.0), dx(mine * d);
  moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
  fa.x = moe::tensor(const_cast<double*>(x_mine.data()), MOE_DTYPE_F64, {mine, d});
  fa.y = moe::tensor(y_old.data(), MOE_DTYPE_F64, {mine, d});
  fa.train = 0;
  moe::Context stale = layer.forward(fa);

  // Ranks in different calls (rank 0 in backward, the others in forward) meet in the
  // check-in and all refuse with INVALID_STATE; the group stays usable.
  {
    std::vector<double> y2(mine * d), dy2(mine * d, 1.0), dx2(mine * d);
    Params<double> g2;
    g2.zeros_like(local);
    moe_backward_args_t b2 = MOE_BACKWARD_ARGS_INIT;
    b2.dy = moe::tensor(dy2.data(), MOE_DTYPE_F64, {mine, d});
    b2.dx = moe::tensor(dx2.data(), MOE_DTYPE_F64, {mine, d});
    b2.grads = g2.view(c, static_cast<int64_t>(layer.local_experts().size()));
    moe_forward_args_t f2 = fa;
    f2.y = moe::tensor(y2.data(), MOE_DTYPE_F64, {mine, d});
    moe_ctx_t ignored = nullptr;
    const moe_status_t got = g_rank == 0 ? moe_layer_backward(layer.get(), stale.get(), &b2)
                                         : moe_layer_forward(layer.get(), &f2, &ignored);
    CHECK(got == MOE_STATUS_INVALID_STATE, "forward against backward: %d", got);
    CHECK(std::string(moe_last_error()).find("out of step") != std::string::npos,
          "out-of-step message: %s", moe_last_error());
    if (ignored) moe_ctx_destroy(ignored);
    CHECK(moe_comm_barrier(comm) == MOE_STATUS_SUCCESS, "the group is still usable");
  }

  // Move every per-expert tensor, install, bind.
  Params<double> moved;
  moved.router = full.router;
  moved.w1 = layer.move_expert_tensor(table, local.w1, d * F);
  moved.w2 = layer.move_expert_tensor(table, local.w2, F * d);
  layer.set_placement(table);
  const std::vector<int32_t> now = layer.local_experts();
  const Params<double> expected = full.slice(now, c);
  CHECK(moved.w1 == expected.w1 && moved.w2 == expected.w2, "moved weights differ");
  layer.set_weights(moved.view(c, static_cast<int64_t>(now.size())));
  moe_backward_args_t ba = MOE_BACKWARD_ARGS_INIT;
  Params<double> grads;
  grads.zeros_like(moved);
  ba.dy = moe::tensor(dy.data(), MOE_DTYPE_F64, {mine, d});
  ba.dx = moe::tensor(dx.data(), MOE_DTYPE_F64, {mine, d});
  ba.grads = grads.view(c, static_cast<int64_t>(now.size()));
  CHECK(moe_layer_backward(layer.get(), stale.get(), &ba) == MOE_STATUS_INVALID_STATE,
        "a ctx of the old placement");

  // Training goes on, equal to the single process, and the replicas' load is shared.
  layer.traffic(true);
  const std::vector<double> y_ref = forward(reference, x, T);
  const std::vector<double> y = forward(layer, x_mine, mine);
  for (int64_t i = 0; i < mine * d; ++i)
    CHECK(std::abs(y[i] - y_ref[offset * d + i]) <= 1e-12 * (1 + std::abs(y_ref[offset * d + i])),
          "y[%lld] after the placement: %.17g vs %.17g", static_cast<long long>(i), y[i],
          y_ref[offset * d + i]);
  // The rows this rank's experts received, max over mean across ranks, against the
  // prediction for the window's load.
  const moe::Layer::Traffic traffic = layer.traffic();
  double received = static_cast<double>(traffic.totals.tokens_received), most = received,
         sum = received;
  MPI_Allreduce(MPI_IN_PLACE, &most, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  const double measured = most / (sum / g_world);
  CHECK(measured <= after + 0.25, "measured imbalance %g, predicted %g (before %g)", measured,
        after, before);
  if (g_rank == 0)
    std::printf("ok %s (rank load max/mean %.3f before, %.3f predicted, %.3f measured)\n",
                g_case.c_str(), before, after, measured);
  layer.set_comm(nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world);
  CHECK(g_world >= 2, "run under mpirun with at least 2 ranks (got %d)", g_world);
  moe_comm_t comm = nullptr;
  CHECK(moe_comm_create_mpi(MPI_COMM_WORLD, 60.0, &comm) == MOE_STATUS_SUCCESS, "create");
  uint64_t seed = 1;
  for (const Scenario& s : moe_test::ep_scenarios(g_world)) {
    run_scenario<float>(comm, s, seed);
    run_scenario<double>(comm, s, seed);
    run_scenario<moe::bfloat16>(comm, s, seed);
    ++seed;
  }
  for (const Scenario& s : moe_test::host_ep_scenarios(g_world)) {
    run_scenario<float>(comm, s, seed);
    run_scenario<double>(comm, s, seed);
    ++seed;
  }
  // The token path: each token once per rank, and replicated experts.
  seed = 1;
  for (const Scenario& s : moe_test::ep_scenarios(g_world)) {
    run_scenario<float>(comm, s, seed, Path::kDedup);
    run_scenario<double>(comm, s, seed, Path::kDedup);
    run_scenario<moe::bfloat16>(comm, s, seed, Path::kDedup);
    run_scenario<float>(comm, s, seed, Path::kChunked);
    run_scenario<double>(comm, s, seed, Path::kChunked);
    if (s.config.num_experts == 8) {
      run_scenario<float>(comm, s, seed, Path::kReplicated);
      run_scenario<double>(comm, s, seed, Path::kReplicated);
    }
    ++seed;
  }
  for (const Scenario& s : moe_test::host_ep_scenarios(g_world)) {
    run_scenario<float>(comm, s, seed, Path::kDedup);
    run_scenario<float>(comm, s, seed, Path::kReplicated);
    ++seed;
  }
  refusals(comm);
  placement_from_load_flow(comm);
  shared_communicator(comm);
  data_parallel_global_aux(comm);
  late_peer_profile(comm);
  long_run(comm);
  CHECK(moe_comm_destroy(comm) == MOE_STATUS_SUCCESS, "destroy");
  MPI_Finalize();
  return 0;
}
