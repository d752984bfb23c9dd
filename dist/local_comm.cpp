#include "dist/local_comm.hpp"

#include <cstdio>
#include <cstring>

namespace moe::dist {
namespace {

int local_all_to_all(void*, const void* send, const int64_t* send_bytes, void* recv,
                     const int64_t* recv_bytes, double, char* err, size_t errlen) {
  if (send_bytes[0] != recv_bytes[0]) {
    std::snprintf(err, errlen, "one rank sends %lld bytes to itself but expects %lld",
                  static_cast<long long>(send_bytes[0]), static_cast<long long>(recv_bytes[0]));
    return 1;
  }
  if (send_bytes[0] > 0) std::memcpy(recv, send, static_cast<size_t>(send_bytes[0]));
  return 0;
}

// One rank: the exchange is a copy, done when it starts.
int local_all_to_all_start(void* state, const void* send, const int64_t* send_bytes, void* recv,
                           const int64_t* recv_bytes, void** request, char* err, size_t errlen) {
  *request = nullptr;
  return local_all_to_all(state, send, send_bytes, recv, recv_bytes, 0.0, err, errlen);
}

int local_all_to_all_wait(void*, void*, double, char*, size_t) {
  return 0;
}

int local_all_reduce_sum(void*, double*, int64_t, double, char*, size_t) {
  return 0;  // one rank: the sum is the value
}

int local_barrier(void*, double, char*, size_t) {
  return 0;
}

}  // namespace

moe_comm_ops_t local_comm_ops() {
  moe_comm_ops_t ops{};
  ops.size = sizeof ops;
  ops.version = MOE_COMM_OPS_VERSION;
  ops.rank = 0;
  ops.world = 1;
  ops.device = MOE_DEVICE_CPU;
  ops.all_to_all = local_all_to_all;
  ops.all_reduce_sum = local_all_reduce_sum;
  ops.barrier = local_barrier;
  ops.all_to_all_start = local_all_to_all_start;
  ops.all_to_all_wait = local_all_to_all_wait;
  return ops;
}

}  // namespace moe::dist
