// moe_comm_t over a caller's callback table, on one rank (no MPI needed): the
// collectives reach the callbacks with the caller's buffers, failures become
// MOE_STATUS_COMM_ERROR and break the communicator, bad tables are refused, and
// destroy hands the state back. (tests/mpi runs moe_mpi.h under mpirun.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "moe/moe.h"

namespace {

struct LoopbackState {
  int all_to_all_calls = 0;
  bool fail_next = false;
  bool destroyed = false;
  double last_timeout = -1.0;
};

int loopback_all_to_all(void* state, const void* send, const int64_t* send_bytes, void* recv,
                        const int64_t* recv_bytes, double timeout_s, char* err, size_t errlen) {
  auto* s = static_cast<LoopbackState*>(state);
  ++s->all_to_all_calls;
  s->last_timeout = timeout_s;
  if (s->fail_next) {
    std::snprintf(err, errlen, "peer 3 is gone");
    return 1;
  }
  if (send_bytes[0] != recv_bytes[0]) return 1;
  if (send_bytes[0] > 0) std::memcpy(recv, send, static_cast<size_t>(send_bytes[0]));
  return 0;
}

int loopback_all_reduce(void*, double*, int64_t, double, char*, size_t) {
  return 0;  // one rank: the sum is the value
}

int loopback_barrier(void*, double, char*, size_t) {
  return 0;
}

void loopback_destroy(void* state) {
  static_cast<LoopbackState*>(state)->destroyed = true;
}

moe_comm_ops_t loopback_ops(LoopbackState* state) {
  moe_comm_ops_t ops{};
  ops.size = sizeof ops;
  ops.version = MOE_COMM_OPS_VERSION;
  ops.rank = 0;
  ops.world = 1;
  ops.device = MOE_DEVICE_CPU;
  ops.state = state;
  ops.all_to_all = loopback_all_to_all;
  ops.all_reduce_sum = loopback_all_reduce;
  ops.barrier = loopback_barrier;
  ops.destroy = loopback_destroy;
  return ops;
}

TEST(Comm, CollectivesReachTheCallbacks) {
  LoopbackState state;
  const moe_comm_ops_t ops = loopback_ops(&state);
  moe_comm_t comm = nullptr;
  ASSERT_EQ(moe_comm_create(&ops, 7.5, &comm), MOE_STATUS_SUCCESS) << moe_last_error();
  int32_t rank = -1, world = -1;
  ASSERT_EQ(moe_comm_rank(comm, &rank, &world), MOE_STATUS_SUCCESS);
  EXPECT_EQ(rank, 0);
  EXPECT_EQ(world, 1);
  const std::string message = "routed rows";
  std::vector<char> recv(message.size(), 0);
  const int64_t bytes[1] = {static_cast<int64_t>(message.size())};
  ASSERT_EQ(moe_comm_all_to_all(comm, message.data(), bytes, recv.data(), bytes),
            MOE_STATUS_SUCCESS);
  EXPECT_EQ(std::string(recv.begin(), recv.end()), message);
  EXPECT_EQ(state.last_timeout, 7.5);
  double values[3] = {1, 2, 3};
  EXPECT_EQ(moe_comm_all_reduce_sum(comm, values, 3), MOE_STATUS_SUCCESS);
  EXPECT_EQ(values[2], 3.0);
  EXPECT_EQ(moe_comm_barrier(comm), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_comm_destroy(comm), MOE_STATUS_SUCCESS);
  EXPECT_TRUE(state.destroyed);
  EXPECT_EQ(moe_comm_barrier(comm), MOE_STATUS_INVALID_HANDLE);
}

TEST(Comm, AFailedCollectiveBreaksTheCommunicator) {
  LoopbackState state;
  const moe_comm_ops_t ops = loopback_ops(&state);
  moe_comm_t comm = nullptr;
  ASSERT_EQ(moe_comm_create(&ops, 0.0, &comm), MOE_STATUS_SUCCESS);
  const int64_t bytes[1] = {0};
  // Refused before any traffic: the communicator stays usable.
  const int64_t negative[1] = {-4};
  EXPECT_EQ(moe_comm_all_to_all(comm, nullptr, negative, nullptr, bytes),
            MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_comm_all_reduce_sum(comm, nullptr, 2), MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(moe_comm_all_to_all(comm, nullptr, bytes, nullptr, bytes), MOE_STATUS_SUCCESS);
  state.fail_next = true;
  EXPECT_EQ(moe_comm_all_to_all(comm, nullptr, bytes, nullptr, bytes), MOE_STATUS_COMM_ERROR);
  EXPECT_NE(std::string(moe_last_error()).find("peer 3 is gone"), std::string::npos)
      << moe_last_error();
  const int calls = state.all_to_all_calls;
  state.fail_next = false;
  EXPECT_EQ(moe_comm_barrier(comm), MOE_STATUS_COMM_ERROR);
  EXPECT_EQ(moe_comm_all_to_all(comm, nullptr, bytes, nullptr, bytes), MOE_STATUS_COMM_ERROR);
  EXPECT_EQ(state.all_to_all_calls, calls) << "a broken communicator must not call out again";
  EXPECT_EQ(moe_comm_destroy(comm), MOE_STATUS_SUCCESS);
}

// NULL buffers with bytes to move are the caller's error: refused before the transport
// touches them (it used to crash), and the communicator stays usable.
TEST(Comm, NullBuffersWithBytesAreRefused) {
  LoopbackState state;
  const moe_comm_ops_t ops = loopback_ops(&state);
  moe_comm_t comm = nullptr;
  ASSERT_EQ(moe_comm_create(&ops, 0.0, &comm), MOE_STATUS_SUCCESS);
  const int64_t eight[1] = {8}, none[1] = {0};
  char sent[8] = {}, received[8] = {};
  EXPECT_EQ(moe_comm_all_to_all(comm, nullptr, eight, received, eight), MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(moe_comm_all_to_all(comm, sent, eight, nullptr, eight), MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(state.all_to_all_calls, 0);
  EXPECT_EQ(moe_comm_all_to_all(comm, nullptr, none, nullptr, none), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_comm_all_to_all(comm, sent, eight, received, eight), MOE_STATUS_SUCCESS);
  EXPECT_EQ(moe_comm_destroy(comm), MOE_STATUS_SUCCESS);
}

TEST(Comm, BadTablesAreRefused) {
  LoopbackState state;
  moe_comm_t comm = nullptr;
  moe_comm_ops_t ops = loopback_ops(&state);
  ops.rank = 1;  // not in [0, world)
  EXPECT_EQ(moe_comm_create(&ops, 0.0, &comm), MOE_STATUS_INVALID_ARGUMENT);
  ops = loopback_ops(&state);
  ops.barrier = nullptr;
  EXPECT_EQ(moe_comm_create(&ops, 0.0, &comm), MOE_STATUS_NULL_POINTER);
  ops = loopback_ops(&state);
  EXPECT_EQ(moe_comm_create(&ops, -1.0, &comm), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_comm_create(&ops, INFINITY, &comm), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_comm_create(&ops, NAN, &comm), MOE_STATUS_INVALID_ARGUMENT);
  const int junk_device = 9;
  std::memcpy(&ops.device, &junk_device, sizeof junk_device);
  EXPECT_EQ(moe_comm_create(&ops, 0.0, &comm), MOE_STATUS_INVALID_ARGUMENT);
  ops = loopback_ops(&state);
  ops.world = INT32_MAX;
  EXPECT_EQ(moe_comm_create(&ops, 0.0, &comm), MOE_STATUS_INVALID_ARGUMENT);
  ops = loopback_ops(&state);
  ops.size = 0;
  EXPECT_EQ(moe_comm_create(&ops, 0.0, &comm), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(moe_comm_create(nullptr, 0.0, &comm), MOE_STATUS_NULL_POINTER);
  EXPECT_EQ(comm, nullptr);
  EXPECT_FALSE(state.destroyed) << "a refused table's state stays the caller's";
  EXPECT_EQ(moe_comm_destroy(nullptr), MOE_STATUS_SUCCESS);
}

}  // namespace
