// A communicator: the caller's transport (MPI, NCCL, their own) behind the callback
// table of moe.h, with the checks, the timeout and the broken state in one place.
// The expert-parallel pipeline exchanges rows and sums counts through it.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "moe/moe.h"

namespace moe::dist {

class Communicator {
 public:
  Communicator(const moe_comm_ops_t& ops, double timeout_s);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return ops_.rank; }
  int world() const { return ops_.world; }
  moe_device_t device() const { return ops_.device; }

  // Each throws moe::Error(MOE_STATUS_COMM_ERROR) on failure or timeout, after which
  // the communicator is broken and every later call throws at once.
  void all_to_all(const void* send, const int64_t* send_bytes, void* recv,
                  const int64_t* recv_bytes);
  // all_to_all for callers' own counts (moe_comm_all_to_all): first checks, with one
  // small all-reduce, that no rank refused its own arguments and that every rank's counts
  // pair up (what p sends q is what q expects from p). Either is the caller's argument
  // error, not a transport failure: every rank gets a status, nothing moves, and the
  // communicator stays usable.
  void all_to_all_paired(const void* send, const int64_t* send_bytes, void* recv,
                         const int64_t* recv_bytes);
  // Whether the transport splits all_to_all into start and wait (moe_comm_ops_t v2).
  bool can_start() const { return ops_.all_to_all_start && ops_.all_to_all_wait; }
  // The two halves (can_start() must hold). Every started exchange is waited for.
  void* all_to_all_start(const void* send, const int64_t* send_bytes, void* recv,
                         const int64_t* recv_bytes);
  void all_to_all_wait(void* request);
  void all_reduce_sum(double* data, int64_t count);
  void barrier();

  // Layers holding this communicator; it may not be destroyed while any does.
  void attach() { ++attached_layers_; }
  void detach() { --attached_layers_; }
  int attached_layers() const { return attached_layers_; }

 private:
  template <typename Call>
  void run(const char* what, Call&& call);
  // The transport's all-to-all, once the arguments are checked.
  void transport_all_to_all(const void* send, const int64_t* send_bytes, void* recv,
                            const int64_t* recv_bytes);

  moe_comm_ops_t ops_;
  double timeout_s_;
  bool broken_ = false;
  std::string broken_reason_;
  std::atomic<int> attached_layers_{0};
};

}  // namespace moe::dist
