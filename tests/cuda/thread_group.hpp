// Ranks as threads of one process, for expert parallelism on one GPU: NCCL refuses two
// ranks on one device, and the GPU machine has no MPI. The transport is a table of
// moe_comm_ops_t callbacks (as a caller's own would be) that moves host memory, as MPI
// does, or device memory, as NCCL does, with plain copies. Each collective is a
// rendezvous of every rank; a rank that does not arrive within the timeout fails the
// others' calls, as a peer that exited would.
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include "moe/moe.h"

namespace moe_test {

class ThreadGroup {
 public:
  ThreadGroup(int world, moe_device_t device)
      : world_(world), device_(device), posted_(world), sums_(world) {}
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;

  // Rank `rank`'s communicator (moe_comm_destroy it before the group goes).
  moe_status_t create(int rank, double timeout_s, moe_comm_t* comm) {
    moe_comm_ops_t ops;
    std::memset(&ops, 0, sizeof ops);
    ops.size = sizeof ops;
    ops.version = MOE_COMM_OPS_VERSION;
    ops.rank = rank;
    ops.world = world_;
    ops.device = device_;
    ops.state = &members_.at(rank);
    ops.all_to_all = &ThreadGroup::all_to_all;
    ops.all_reduce_sum = &ThreadGroup::all_reduce_sum;
    ops.barrier = &ThreadGroup::barrier;
    return moe_comm_create(&ops, timeout_s, comm);
  }

 private:
  struct Member {
    ThreadGroup* group;
    int rank;
  };
  struct Posted {
    const char* send = nullptr;
    const int64_t* send_bytes = nullptr;
    double* data = nullptr;
  };

  // Every rank arrives, or the group breaks: false after timeout_s (0: forever).
  bool arrive(double timeout_s) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken_) return false;
    const unsigned long generation = generation_;
    if (++arrived_ == world_) {
      arrived_ = 0;
      ++generation_;
      changed_.notify_all();
      return true;
    }
    auto passed = [&] { return generation_ != generation || broken_; };
    if (timeout_s > 0) {
      if (!changed_.wait_for(lock, std::chrono::duration<double>(timeout_s), passed)) {
        broken_ = true;
        changed_.notify_all();
      }
    } else {
      changed_.wait(lock, passed);
    }
    return generation_ != generation;
  }

  static int fail(char* err, size_t len, const char* what) {
    std::snprintf(err, len, "%s", what);
    return 1;
  }

  static int all_to_all(void* state, const void* send, const int64_t* send_bytes, void* recv,
                        const int64_t* recv_bytes, double timeout_s, char* err, size_t len) {
    const Member& m = *static_cast<Member*>(state);
    ThreadGroup& g = *m.group;
    g.posted_[m.rank].send = static_cast<const char*>(send);
    g.posted_[m.rank].send_bytes = send_bytes;
    if (!g.arrive(timeout_s)) return fail(err, len, "a peer did not arrive (all_to_all)");
    int64_t at = 0;
    bool agree = true;
    for (int p = 0; p < g.world_; ++p) {
      const Posted& from = g.posted_[p];
      int64_t offset = 0;
      for (int q = 0; q < m.rank; ++q) offset += from.send_bytes[q];
      agree = agree && from.send_bytes[m.rank] == recv_bytes[p];
      if (agree && recv_bytes[p] > 0) {
        if (g.device_ == MOE_DEVICE_CPU)
          std::memcpy(static_cast<char*>(recv) + at, from.send + offset, recv_bytes[p]);
        else
          cudaMemcpy(static_cast<char*>(recv) + at, from.send + offset, recv_bytes[p],
                     cudaMemcpyDeviceToDevice);
      }
      at += recv_bytes[p];
    }
    if (g.device_ != MOE_DEVICE_CPU && cudaDeviceSynchronize() != cudaSuccess) agree = false;
    if (!g.arrive(timeout_s)) return fail(err, len, "a peer did not arrive (all_to_all end)");
    return agree ? 0 : fail(err, len, "byte counts disagree with the senders'");
  }

  static int all_reduce_sum(void* state, double* data, int64_t count, double timeout_s, char* err,
                            size_t len) {
    const Member& m = *static_cast<Member*>(state);
    ThreadGroup& g = *m.group;
    g.posted_[m.rank].data = data;
    if (!g.arrive(timeout_s)) return fail(err, len, "a peer did not arrive (all_reduce_sum)");
    std::vector<double>& sum = g.sums_[m.rank];
    sum.assign(count, 0.0);
    for (int q = 0; q < g.world_; ++q)
      for (int64_t i = 0; i < count; ++i) sum[i] += g.posted_[q].data[i];
    if (!g.arrive(timeout_s)) return fail(err, len, "a peer did not arrive (all_reduce_sum end)");
    std::copy(sum.begin(), sum.end(), data);
    return 0;
  }

  static int barrier(void* state, double timeout_s, char* err, size_t len) {
    const Member& m = *static_cast<Member*>(state);
    return m.group->arrive(timeout_s) ? 0 : fail(err, len, "a peer did not arrive (barrier)");
  }

  const int world_;
  const moe_device_t device_;
  std::vector<Posted> posted_;
  std::vector<std::vector<double>> sums_;
  std::vector<Member> members_ = make_members();
  std::mutex mutex_;
  std::condition_variable changed_;
  int arrived_ = 0;
  unsigned long generation_ = 0;
  bool broken_ = false;

  std::vector<Member> make_members() {
    std::vector<Member> members;
    for (int r = 0; r < world_; ++r) members.push_back({this, r});
    return members;
  }
};

}  // namespace moe_test
