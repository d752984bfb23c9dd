// The MPI communicator (moe_mpi.h) under mpirun with 2 and 4 ranks: all-to-all with
// uneven and zero counts (every byte checked), all-reduce, barrier, 200 rounds without
// a hang, and refusal of bad arguments. Exits non-zero on the first failure.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "moe/moe_mpi.h"

namespace {

int g_rank = 0;

#define CHECK(cond, ...)                                                                     \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      std::fprintf(stderr, "rank %d: %s:%d: CHECK(%s) failed: ", g_rank, __FILE__, __LINE__, \
                   #cond);                                                                   \
      std::fprintf(stderr, __VA_ARGS__);                                                     \
      std::fprintf(stderr, " [%s]\n", moe_last_error());                                     \
      MPI_Abort(MPI_COMM_WORLD, 1);                                                          \
    }                                                                                        \
  } while (0)

// Bytes from rank `from` to rank `to` in round `round`: uneven, and zero for some pairs.
int64_t bytes_between(int from, int to, int round) {
  return ((from * 7 + to * 3 + round) % 4) * 37;
}

unsigned char payload(int from, int to, int round, int64_t i) {
  return static_cast<unsigned char>(from * 31 + to * 17 + round * 5 + i);
}

void exchange_round(moe_comm_t comm, int rank, int world, int round) {
  std::vector<int64_t> send_bytes(world), recv_bytes(world);
  std::vector<unsigned char> send, recv;
  for (int p = 0; p < world; ++p) {
    send_bytes[p] = bytes_between(rank, p, round);
    recv_bytes[p] = bytes_between(p, rank, round);
    for (int64_t i = 0; i < send_bytes[p]; ++i) send.push_back(payload(rank, p, round, i));
  }
  int64_t total = 0;
  for (int64_t b : recv_bytes) total += b;
  recv.assign(static_cast<size_t>(total), 0);
  CHECK(moe_comm_all_to_all(comm, send.data(), send_bytes.data(), recv.data(), recv_bytes.data()) ==
            MOE_STATUS_SUCCESS,
        "all_to_all round %d", round);
  size_t at = 0;
  for (int p = 0; p < world; ++p)
    for (int64_t i = 0; i < recv_bytes[p]; ++i, ++at)
      CHECK(recv[at] == payload(p, rank, round, i), "byte %lld from rank %d, round %d",
            static_cast<long long>(i), p, round);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  moe_comm_t comm = nullptr;
  CHECK(moe_comm_create_mpi(MPI_COMM_WORLD, 60.0, &comm) == MOE_STATUS_SUCCESS, "create");
  int32_t rank = -1, world = -1;
  CHECK(moe_comm_rank(comm, &rank, &world) == MOE_STATUS_SUCCESS, "rank");
  g_rank = rank;
  int mpi_rank = 0, mpi_world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &mpi_world);
  CHECK(rank == mpi_rank && world == mpi_world, "rank %d/%d vs MPI %d/%d", rank, world, mpi_rank,
        mpi_world);

  for (int round = 0; round < 200; ++round) exchange_round(comm, rank, world, round);

  std::vector<double> values(10);
  for (size_t i = 0; i < values.size(); ++i) values[i] = (rank + 1) * static_cast<double>(i);
  CHECK(moe_comm_all_reduce_sum(comm, values.data(), 10) == MOE_STATUS_SUCCESS, "all_reduce");
  const double ranks_sum = world * (world + 1) / 2.0;
  for (size_t i = 0; i < values.size(); ++i)
    CHECK(values[i] == ranks_sum * static_cast<double>(i), "sum[%zu] = %g", i, values[i]);
  CHECK(moe_comm_all_reduce_sum(comm, nullptr, 0) == MOE_STATUS_SUCCESS, "empty all_reduce");
  CHECK(moe_comm_barrier(comm) == MOE_STATUS_SUCCESS, "barrier");

  // Bad arguments are refused on every rank alike, before any traffic, and the
  // communicator stays usable.
  std::vector<int64_t> negative(world, -1), zero(world, 0);
  CHECK(moe_comm_all_to_all(comm, nullptr, negative.data(), nullptr, zero.data()) ==
            MOE_STATUS_INVALID_ARGUMENT,
        "negative counts");
  CHECK(
      moe_comm_all_to_all(comm, nullptr, nullptr, nullptr, zero.data()) == MOE_STATUS_NULL_POINTER,
      "null counts");
  CHECK(moe_comm_barrier(comm) == MOE_STATUS_SUCCESS, "usable after refusals");

  // Counts that do not pair up (rank 0 sends 8 bytes to the last rank, which expects
  // 4) are the caller's error, refused on every rank before any data moves; the
  // communicator stays usable, and the next exchange is intact.
  std::vector<int64_t> send_bytes(world, 0), recv_bytes(world, 0);
  if (rank == 0) send_bytes[world - 1] = 8;
  if (rank == world - 1) recv_bytes[0] = 4;
  std::vector<unsigned char> out(8, 1), in(8, 0);
  CHECK(moe_comm_all_to_all(comm, out.data(), send_bytes.data(), in.data(), recv_bytes.data()) ==
            MOE_STATUS_INVALID_ARGUMENT,
        "mismatched counts");
  CHECK(std::strstr(moe_last_error(), "do not pair up") != nullptr, "message: %s",
        moe_last_error());
  exchange_round(comm, rank, world, 7);
  CHECK(moe_comm_barrier(comm) == MOE_STATUS_SUCCESS, "usable after a caller's mismatch");

  // One rank alone refusing its own arguments (a negative count) fails the call on every
  // rank at once, instead of leaving the others in the transport until the timeout.
  std::vector<int64_t> own_send(world, 0), own_recv(world, 0);
  if (rank == 0) own_send[0] = -4;
  const moe_status_t alone =
      moe_comm_all_to_all(comm, out.data(), own_send.data(), in.data(), own_recv.data());
  CHECK(alone == MOE_STATUS_INVALID_ARGUMENT, "one rank's refusal: %s", moe_status_string(alone));
  CHECK(rank == 0 || std::strstr(moe_last_error(), "another rank refused") != nullptr,
        "message: %s", moe_last_error());
  exchange_round(comm, rank, world, 8);

  CHECK(moe_comm_destroy(comm) == MOE_STATUS_SUCCESS, "destroy");
  CHECK(moe_comm_barrier(comm) == MOE_STATUS_INVALID_HANDLE, "destroyed handle");
  if (rank == 0) std::printf("test_comm_mpi: %d ranks passed\n", world);
  MPI_Finalize();
  return 0;
}
