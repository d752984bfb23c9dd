#include "tools/moe-bench/expert_parallel.hpp"

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/bfloat16.hpp"
#include "moe/moe.hpp"
#include "moe/moe_mpi.h"
#include "tools/moe-bench/layer_problem.hpp"
#include "tools/moe-bench/shapes.hpp"

namespace moe::bench {
namespace {

double max_over_ranks(double value) {
  double out = 0.0;
  MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

double mean_over_ranks(double value, int world) {
  double out = 0.0;
  MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return out / world;
}

// The slowest rank's time of one call, after a barrier; the median over `reps`.
template <typename Call>
double timed_collective_ms(int reps, Call&& call) {
  std::vector<double> times;
  for (int i = 0; i < reps + 2; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = Clock::now();
    call();
    const double ms = max_over_ranks(ms_since(start));
    if (i >= 2) times.push_back(ms);  // two untimed rounds first
  }
  return median(times);
}

// The layer's dispatch (bytes per peer of one forward's row exchange) through the
// moe communicator and through a bare MPI_Alltoallv.
nlohmann::json exchange_comparison(moe::Comm& comm, const std::vector<int64_t>& send_bytes,
                                   const std::vector<int64_t>& recv_bytes, int reps, int world) {
  std::vector<int> sc(world), sd(world), rc(world), rd(world);
  int64_t send_total = 0, recv_total = 0;
  for (int p = 0; p < world; ++p) {
    sc[p] = static_cast<int>(send_bytes[p]);
    rc[p] = static_cast<int>(recv_bytes[p]);
    sd[p] = static_cast<int>(send_total);
    rd[p] = static_cast<int>(recv_total);
    send_total += send_bytes[p];
    recv_total += recv_bytes[p];
  }
  std::vector<char> send(static_cast<size_t>(send_total), 1), recv(static_cast<size_t>(recv_total));
  MPI_Comm bare;
  MPI_Comm_dup(MPI_COMM_WORLD, &bare);
  const double moe_ms = timed_collective_ms(
      reps, [&] { comm.all_to_all(send.data(), send_bytes, recv.data(), recv_bytes); });
  const double mpi_ms = timed_collective_ms(reps, [&] {
    MPI_Alltoallv(send.data(), sc.data(), sd.data(), MPI_BYTE, recv.data(), rc.data(), rd.data(),
                  MPI_BYTE, bare);
  });
  MPI_Comm_free(&bare);
  // nccl-tests' alltoall: algBw = bytes a rank sends (all peers, itself included) / time;
  // busBw = algBw * (n-1)/n. Uneven counts: the mean over ranks of the bytes sent.
  const double bytes = mean_over_ranks(static_cast<double>(send_total), world);
  const double bus = world > 1 ? static_cast<double>(world - 1) / world : 1.0;
  const double moe_alg = bytes / (moe_ms * 1e-3) / 1e9, mpi_alg = bytes / (mpi_ms * 1e-3) / 1e9;
  return {{"dispatch_bytes_per_rank", bytes}, {"moe_alltoall_ms", moe_ms},
          {"moe_algbw_gbs", moe_alg},         {"moe_busbw_gbs", moe_alg * bus},
          {"mpi_alltoallv_ms", mpi_ms},       {"mpi_algbw_gbs", mpi_alg},
          {"mpi_busbw_gbs", mpi_alg * bus},   {"moe_vs_mpi", mpi_ms / moe_ms}};
}

// The token copies each rank's experts received since the last traffic reset, max over
// mean across ranks: the expert compute imbalance.
double received_imbalance(moe::Layer& layer, int world) {
  const double mine = static_cast<double>(layer.traffic().totals.tokens_received);
  const double mean = mean_over_ranks(mine, world);
  return mean > 0 ? max_over_ranks(mine) / mean : 1.0;
}

template <typename S>
nlohmann::json run_shape(const Options& o, const Shape& s, moe_dtype_t dtype, moe::Comm& comm,
                         int world) {
  LayerProblem<S> problem(s, dtype, o.backend, comm.get(), o.ep_skew);
  moe::Layer& layer = problem.layer;
  if (o.ep_dedup) layer.set_dedup(true, o.ep_chunks);
  nlohmann::json placement = nullptr;
  if (o.ep_redundant >= 0) {
    // The load window: a few training steps on the default placement; then the rows
    // each rank's experts received there, max over mean, and the slot table.
    layer.traffic(true);
    layer.expert_load(true);
    for (int i = 0; i < std::max(o.warmup, 2); ++i) problem.backward(problem.forward());
    const double measured_before = received_imbalance(layer, world);
    const std::vector<double> load = layer.expert_load(true);
    const int64_t E = s.experts;
    const int64_t slots = (E + o.ep_redundant + world - 1) / world * world;
    std::vector<int32_t> table(static_cast<size_t>(slots));
    double before = 0, after = 0;
    moe::check(
        moe_placement_from_load(load.data(), E, world, slots, 1, table.data(), &before, &after));
    problem.set_placement(table);
    placement = {{"slots", slots},
                 {"predicted_imbalance_before", before},
                 {"predicted_imbalance_after", after},
                 {"measured_imbalance_before", measured_before}};
  }
  const Timings t = time_pairs(
      o, [&] { return problem.forward(); }, [&](moe::Context& ctx) { problem.backward(ctx); },
      [&] {
        layer.stage_profile(true);
        layer.traffic(true);
      },
      [] { MPI_Barrier(MPI_COMM_WORLD); });
  const moe_stage_profile_t p = layer.stage_profile();
  const moe::Layer::Traffic traffic = layer.traffic();
  const double calls = static_cast<double>(p.forward_calls);
  std::vector<int64_t> send_bytes(world), recv_bytes(world);
  const int64_t row_bytes = s.d_model * static_cast<int64_t>(sizeof(S));
  for (int q = 0; q < world; ++q) {
    send_bytes[q] = static_cast<int64_t>(traffic.peers[q].tokens_sent / calls) * row_bytes;
    recv_bytes[q] = static_cast<int64_t>(traffic.peers[q].tokens_received / calls) * row_bytes;
  }
  // The received counts must mirror the peers' sent counts after the rounding above.
  MPI_Alltoall(send_bytes.data(), 1, MPI_INT64_T, recv_bytes.data(), 1, MPI_INT64_T,
               MPI_COMM_WORLD);
  const double train_ms = max_over_ranks(t.train_ms);
  nlohmann::json j = {
      {"shape", s.name},
      {"ranks", world},
      {"tokens_per_rank", s.tokens},
      {"E", s.experts},
      {"experts_per_rank", s.experts / world},
      {"backend", layer.config().backend},
      {"dtype", o.dtype},
      {"forward_ms", max_over_ranks(t.forward_ms)},
      {"backward_ms", max_over_ranks(t.backward_ms)},
      {"train_ms", train_ms},
      {"tokens_per_s_per_rank", s.tokens / (train_ms * 1e-3)},
      {"train_gflops_per_rank", (s.forward_flops() + s.backward_flops()) / train_ms / 1e6},
      {"exchange_share_forward", mean_over_ranks(p.exchange / p.forward_total, world)},
      {"exchange_share_backward", mean_over_ranks(p.exchange_backward / p.backward_total, world)}};
  // The token rows the layer moved per training call (forward and backward), and what
  // one row per token copy would have moved, mean over ranks.
  j["row_bytes_per_call"] =
      mean_over_ranks(static_cast<double>(traffic.totals.row_bytes_sent), world) / calls;
  j["per_copy_row_bytes_per_call"] =
      mean_over_ranks(static_cast<double>(traffic.totals.per_copy_row_bytes_sent), world) / calls;
  j["dedup"] = o.ep_dedup;
  j["chunks"] = o.ep_dedup ? o.ep_chunks : 1;
  j["received_imbalance"] = received_imbalance(layer, world);
  if (!placement.is_null()) {
    placement["measured_imbalance_after"] = j["received_imbalance"];
    j["placement"] = placement;
  }
  // The bare all-to-all comparison replays one row per copy: without dedup or replicas,
  // the layer's own dispatch.
  if (!o.ep_dedup && o.ep_redundant < 0)
    j.update(exchange_comparison(comm, send_bytes, recv_bytes, std::max(o.iters, 10), world));
  return j;
}

void print_row(FILE* out, const nlohmann::json& j) {
  std::fprintf(
      out,
      "%-14s %d ranks %-6s %-4s | fwd %8.2f ms bwd %8.2f ms | %9.0f tok/s/rank %6.1f GFLOP/s/rank "
      "| exchange %4.1f%% of fwd, %4.1f%% of bwd\n",
      j["shape"].get<std::string>().c_str(), j["ranks"].get<int>(),
      j["backend"].get<std::string>().c_str(), j["dtype"].get<std::string>().c_str(),
      j["forward_ms"].get<double>(), j["backward_ms"].get<double>(),
      j["tokens_per_s_per_rank"].get<double>(), j["train_gflops_per_rank"].get<double>(),
      100 * j["exchange_share_forward"].get<double>(),
      100 * j["exchange_share_backward"].get<double>());
  std::fprintf(out,
               "    token rows %.2f MB/rank/call (one row per copy: %.2f MB) | rows received "
               "max/mean %.3f\n",
               j["row_bytes_per_call"].get<double>() / 1e6,
               j["per_copy_row_bytes_per_call"].get<double>() / 1e6,
               j["received_imbalance"].get<double>());
  if (j.contains("placement"))
    std::fprintf(out,
                 "    placement from load, %lld slots: predicted max/mean %.3f -> %.3f, "
                 "measured %.3f -> %.3f\n",
                 static_cast<long long>(j["placement"]["slots"].get<int64_t>()),
                 j["placement"]["predicted_imbalance_before"].get<double>(),
                 j["placement"]["predicted_imbalance_after"].get<double>(),
                 j["placement"]["measured_imbalance_before"].get<double>(),
                 j["placement"]["measured_imbalance_after"].get<double>());
  if (!j.contains("moe_alltoall_ms")) {
    std::fflush(out);
    return;
  }
  std::fprintf(
      out,
      "    dispatch %.2f MB/rank: moe %.3f ms (algBw %.2f GB/s, busBw %.2f GB/s) | MPI_Alltoallv "
      "%.3f ms (algBw %.2f GB/s, busBw %.2f GB/s) | moe/MPI %.2fx\n",
      j["dispatch_bytes_per_rank"].get<double>() / 1e6, j["moe_alltoall_ms"].get<double>(),
      j["moe_algbw_gbs"].get<double>(), j["moe_busbw_gbs"].get<double>(),
      j["mpi_alltoallv_ms"].get<double>(), j["mpi_algbw_gbs"].get<double>(),
      j["mpi_busbw_gbs"].get<double>(), j["moe_vs_mpi"].get<double>());
  std::fflush(out);
}

}  // namespace

int run_expert_parallel(const Options& o) {
  MPI_Init(nullptr, nullptr);
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  moe_comm_t handle = nullptr;
  int status = 0;
  if (moe_comm_create_mpi(MPI_COMM_WORLD, 600.0, &handle) != MOE_STATUS_SUCCESS) {
    std::cerr << "moe-bench: rank " << rank << ": " << moe_last_error() << "\n";
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  std::optional<moe::Comm> comm = moe::Comm::adopt(handle);
  nlohmann::json results = nlohmann::json::array();
  try {
    for (const Shape& s : standard_shapes()) {
      if (std::find(o.shapes.begin(), o.shapes.end(), s.name) == o.shapes.end()) continue;
      nlohmann::json j = o.dtype == "bf16"
                             ? run_shape<moe::bfloat16>(o, s, MOE_DTYPE_BF16, *comm, world)
                             : run_shape<float>(o, s, MOE_DTYPE_F32, *comm, world);
      if (rank == 0) print_row(o.json ? stderr : stdout, j);
      results.push_back(j);
    }
  } catch (const std::exception& e) {
    std::cerr << "moe-bench: rank " << rank << ": " << e.what() << "\n";
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  if (rank == 0 && o.json) std::cout << results.dump(2) << "\n";
  comm.reset();  // before MPI goes
  MPI_Finalize();
  return status;
}

}  // namespace moe::bench
