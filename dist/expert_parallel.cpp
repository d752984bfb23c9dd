#include "dist/expert_parallel.hpp"

#include <algorithm>
#include <numeric>

#include "core/error.hpp"
#include "core/stage_timer.hpp"

namespace moe::dist {

ExpertParallel::ExpertParallel(Communicator& c, Placement p, std::unique_ptr<DeviceMemory> memory)
    : comm(c),
      placement(std::move(p)),
      memory_(std::move(memory)),
      peers_(static_cast<size_t>(placement.world)) {
  comm.attach();
}

ExpertParallel::~ExpertParallel() {
  comm.detach();
}

namespace {

// A temporary buffer of the memory kind the communicator does not take as given:
// device memory from the pool, or the layer's pinned host staging buffer of `slot`.
class Staging {
 public:
  Staging(DeviceMemory& memory, bool on_device, int slot, size_t bytes)
      : memory_(memory), on_device_(on_device), bytes_(bytes) {
    if (bytes == 0) return;
    data_ = on_device ? memory.allocate(bytes) : memory.host_staging(slot, bytes);
  }
  ~Staging() {
    if (on_device_ && data_) memory_.release(data_);
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  void* data() { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  DeviceMemory& memory_;
  bool on_device_;
  size_t bytes_;
  void* data_ = nullptr;
};

size_t total(const std::vector<int64_t>& bytes) {
  return static_cast<size_t>(std::accumulate(bytes.begin(), bytes.end(), int64_t{0}));
}

}  // namespace

void ExpertParallel::exchange(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                              const std::vector<int64_t>& recv_bytes) {
  if (comm.device() == MOE_DEVICE_CPU)
    transfer(send, send_bytes, recv, recv_bytes);
  else
    staged(send, send_bytes, recv, recv_bytes, false);
}

void ExpertParallel::exchange_device(const void* send, const std::vector<int64_t>& send_bytes,
                                     void* recv, const std::vector<int64_t>& recv_bytes) {
  require(memory_ != nullptr, MOE_STATUS_INTERNAL_ERROR,
          "a device exchange on a layer without device memory");
  if (comm.device() != MOE_DEVICE_CPU)
    transfer(send, send_bytes, recv, recv_bytes);
  else
    staged(send, send_bytes, recv, recv_bytes, true);
}

void ExpertParallel::staged(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                            const std::vector<int64_t>& recv_bytes, bool send_on_device) {
  // Host data over a device communicator needs device temporaries, and the reverse.
  require(memory_ != nullptr, MOE_STATUS_UNSUPPORTED,
          "this communicator moves device memory, and this layer has none to stage through");
  Staging out(*memory_, !send_on_device, 0, total(send_bytes)),
      in(*memory_, !send_on_device, 1, total(recv_bytes));
  // The copies are part of the exchange's time.
  StageTimer timer;
  if (out.bytes()) {
    if (send_on_device)
      memory_->to_host(out.data(), send, out.bytes());
    else
      memory_->to_device(out.data(), send, out.bytes());
  }
  double copies = timer.lap();
  transfer(out.data(), send_bytes, in.data(), recv_bytes);
  timer.lap();
  if (in.bytes()) {
    if (send_on_device)
      memory_->to_device(recv, in.data(), in.bytes());
    else
      memory_->to_host(recv, in.data(), in.bytes());
  }
  copies += timer.lap();
  seconds_ += copies;
  untaken_seconds_ += copies;
}

void ExpertParallel::transfer(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                              const std::vector<int64_t>& recv_bytes) {
  StageTimer timer;
  comm.all_to_all(send, send_bytes.data(), recv, recv_bytes.data());
  count_exchange(timer.lap(), send_bytes, recv_bytes);
}

void ExpertParallel::count_exchange(double seconds, const std::vector<int64_t>& send_bytes,
                                    const std::vector<int64_t>& recv_bytes) {
  seconds_ += seconds;
  untaken_seconds_ += seconds;
  ++exchanges_;
  for (int p = 0; p < world(); ++p) {
    peers_[p].bytes_sent += send_bytes[p];
    peers_[p].bytes_received += recv_bytes[p];
  }
}

ExpertParallel::Started ExpertParallel::exchange_start(const void* send,
                                                       const std::vector<int64_t>& send_bytes,
                                                       void* recv,
                                                       const std::vector<int64_t>& recv_bytes) {
  Started started;
  if (comm.device() != MOE_DEVICE_CPU || !comm.can_start()) {
    exchange(send, send_bytes, recv, recv_bytes);
    return started;
  }
  StageTimer timer;
  started.request = comm.all_to_all_start(send, send_bytes.data(), recv, recv_bytes.data());
  started.pending = true;
  count_exchange(timer.lap(), send_bytes, recv_bytes);
  return started;
}

void ExpertParallel::exchange_wait(Started& started) {
  if (!started.pending) return;
  started.pending = false;
  StageTimer timer;
  comm.all_to_all_wait(started.request);
  const double seconds = timer.lap();
  seconds_ += seconds;
  untaken_seconds_ += seconds;
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
  totals.row_bytes_sent = row_bytes_sent_;
  totals.row_bytes_received = row_bytes_received_;
  totals.per_copy_row_bytes_sent = per_copy_bytes_sent_;
  totals.per_copy_row_bytes_received = per_copy_bytes_received_;
  if (peers) std::copy_n(peers_.begin(), std::min<int32_t>(count, world()), peers);
}

void ExpertParallel::reset_traffic() {
  std::fill(peers_.begin(), peers_.end(), moe_peer_traffic_t{});
  exchanges_ = 0;
  seconds_ = 0.0;
  row_bytes_sent_ = row_bytes_received_ = per_copy_bytes_sent_ = per_copy_bytes_received_ = 0;
}

}  // namespace moe::dist
