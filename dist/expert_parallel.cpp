#include "dist/expert_parallel.hpp"

#include <algorithm>

#include "core/stage_timer.hpp"

namespace moe::dist {

ExpertParallel::ExpertParallel(Communicator& c, Placement p)
    : comm(c), placement(std::move(p)), peers_(static_cast<size_t>(placement.world)) {
  comm.attach();
}

ExpertParallel::~ExpertParallel() {
  comm.detach();
}

void ExpertParallel::exchange(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                              const std::vector<int64_t>& recv_bytes) {
  StageTimer timer;
  comm.all_to_all(send, send_bytes.data(), recv, recv_bytes.data());
  const double seconds = timer.lap();
  seconds_ += seconds;
  untaken_seconds_ += seconds;
  ++exchanges_;
  for (int p = 0; p < world(); ++p) {
    peers_[p].bytes_sent += send_bytes[p];
    peers_[p].bytes_received += recv_bytes[p];
  }
}

void ExpertParallel::count_dispatch(const std::vector<int64_t>& rows_out,
                                    const std::vector<int64_t>& rows_in) {
  for (int p = 0; p < world(); ++p) {
    peers_[p].tokens_sent += rows_out[p];
    peers_[p].tokens_received += rows_in[p];
  }
}

std::vector<double> ExpertParallel::all_gather(const std::vector<double>& values) {
  const int64_t n = static_cast<int64_t>(values.size());
  std::vector<double> send(n * world()), gathered(n * world());
  for (int p = 0; p < world(); ++p) std::copy(values.begin(), values.end(), &send[p * n]);
  const std::vector<int64_t> bytes(world(), n * static_cast<int64_t>(sizeof(double)));
  exchange(send.data(), bytes, gathered.data(), bytes);
  return gathered;
}

double ExpertParallel::take_exchange_seconds() {
  const double seconds = untaken_seconds_;
  untaken_seconds_ = 0.0;
  return seconds;
}

void ExpertParallel::read_traffic(moe_comm_traffic_t& totals, moe_peer_traffic_t* peers,
                                  int32_t count) const {
  totals.rank = rank();
  totals.world = world();
  totals.exchanges = exchanges_;
  totals.exchange_seconds = seconds_;
  totals.tokens_sent = totals.tokens_received = totals.bytes_sent = totals.bytes_received = 0;
  for (const moe_peer_traffic_t& p : peers_) {
    totals.tokens_sent += p.tokens_sent;
    totals.tokens_received += p.tokens_received;
    totals.bytes_sent += p.bytes_sent;
    totals.bytes_received += p.bytes_received;
  }
  if (peers) std::copy_n(peers_.begin(), std::min<int32_t>(count, world()), peers);
}

void ExpertParallel::reset_traffic() {
  std::fill(peers_.begin(), peers_.end(), moe_peer_traffic_t{});
  exchanges_ = 0;
  seconds_ = 0.0;
}

}  // namespace moe::dist
