// A layer's expert-parallel group: the attached communicator, the expert placement,
// and the traffic the layer's exchanges moved. Every exchange of the layer goes
// through here, so that the traffic and the time spent waiting are counted once.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dist/communicator.hpp"
#include "dist/device_memory.hpp"
#include "dist/placement.hpp"
#include "moe/moe.h"

namespace moe::dist {

class ExpertParallel {
 public:
  // `memory`: the layer's device memory, for a device backend's layer (else null).
  ExpertParallel(Communicator& comm, Placement placement, std::unique_ptr<DeviceMemory> memory);
  ~ExpertParallel();
  ExpertParallel(const ExpertParallel&) = delete;
  ExpertParallel& operator=(const ExpertParallel&) = delete;

  int world() const { return placement.world; }
  int rank() const { return placement.rank; }
  int64_t local_expert_count() const {
    return static_cast<int64_t>(placement.local_experts.size());
  }

  // All-to-all of packed per-peer blocks of the given byte counts ([world] each), in
  // host memory. Staged through device memory when the communicator moves that.
  void exchange(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                const std::vector<int64_t>& recv_bytes);
  // The same in the layer's device memory, staged through host memory when the
  // communicator moves that. The device work that wrote `send` must have completed.
  void exchange_device(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                       const std::vector<int64_t>& recv_bytes);
  // Token copies sent to and received from each peer's experts by one forward.
  void count_dispatch(const std::vector<int64_t>& rows_out, const std::vector<int64_t>& rows_in);

  // Every rank's `values` (the same length on every rank), concatenated in rank order.
  std::vector<double> all_gather(const std::vector<double>& values);

  // The layer's device memory (null for a host backend's layer).
  DeviceMemory* memory() const { return memory_.get(); }

  // Seconds spent in exchanges since the last call (for the stage profile).
  double take_exchange_seconds();

  void read_traffic(moe_comm_traffic_t& totals, moe_peer_traffic_t* peers, int32_t count) const;
  void reset_traffic();

  Communicator& comm;
  const Placement placement;
  int64_t forward_calls = 0;  // checked equal over the group on every forward (check_in)

 private:
  // The communicator's all-to-all, counted and timed.
  void transfer(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                const std::vector<int64_t>& recv_bytes);
  // Copies both ways through temporaries of the other memory kind.
  void staged(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
              const std::vector<int64_t>& recv_bytes, bool send_on_device);

  std::unique_ptr<DeviceMemory> memory_;
  std::vector<moe_peer_traffic_t> peers_;
  int64_t exchanges_ = 0;
  double seconds_ = 0.0;
  double untaken_seconds_ = 0.0;
};

}  // namespace moe::dist
