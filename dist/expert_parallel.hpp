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
  // An exchange started in host memory, to be waited for once: split by the transport
  // when it can (moe_comm_ops_t v2), else already done when exchange_start returns.
  struct Started {
    void* request = nullptr;
    bool pending = false;
  };
  Started exchange_start(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                         const std::vector<int64_t>& recv_bytes);
  void exchange_wait(Started& started);
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
  Placement placement;          // replaced only by moe_layer_set_placement, between calls
  int64_t placement_epoch = 0;  // counts the replacements: a ctx of an older one is refused
  int64_t forward_calls = 0;    // checked equal over the group on every forward (check_in)
  // moe_ep_options_t, the same on every rank (checked when set).
  bool dedup = false;  // each token travels at most once to each rank
  int64_t chunks = 1;  // the token path's forward pipelined in this many chunks
  // The token path: one row per (token, destination rank), with per-copy metadata.
  bool token_path() const { return dedup || placement.replicated(); }
  // Counts one token-row exchange: the bytes it moved, and those it would have moved
  // with one row per token copy (moe_comm_traffic_t's comparison).
  void count_rows(int64_t sent, int64_t received, int64_t per_copy_sent,
                  int64_t per_copy_received) {
    row_bytes_sent_ += sent;
    row_bytes_received_ += received;
    per_copy_bytes_sent_ += per_copy_sent;
    per_copy_bytes_received_ += per_copy_received;
  }

 private:
  // The communicator's all-to-all, counted and timed.
  void transfer(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                const std::vector<int64_t>& recv_bytes);
  // Adds one exchange's time and bytes to the traffic.
  void count_exchange(double seconds, const std::vector<int64_t>& send_bytes,
                      const std::vector<int64_t>& recv_bytes);
  // Copies both ways through temporaries of the other memory kind.
  void staged(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
              const std::vector<int64_t>& recv_bytes, bool send_on_device);

  std::unique_ptr<DeviceMemory> memory_;
  std::vector<moe_peer_traffic_t> peers_;
  int64_t exchanges_ = 0;
  int64_t row_bytes_sent_ = 0, row_bytes_received_ = 0;  // token rows, results and gradients
  int64_t per_copy_bytes_sent_ = 0, per_copy_bytes_received_ = 0;
  double seconds_ = 0.0;
  double untaken_seconds_ = 0.0;
};

}  // namespace moe::dist
