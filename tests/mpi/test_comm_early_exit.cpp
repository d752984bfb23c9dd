// A rank that leaves without joining the exchange: the last rank finalizes at once;
// the others' all-to-all must return MOE_STATUS_COMM_ERROR within the timeout (2 s)
// instead of hanging, and the communicator must then refuse further use.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "moe/moe_mpi.h"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  moe_comm_t comm = nullptr;
  if (moe_comm_create_mpi(MPI_COMM_WORLD, 2.0, &comm) != MOE_STATUS_SUCCESS) return 1;
  int failures = 0;
  if (rank != world - 1) {
    std::vector<int64_t> bytes(world, 8);
    std::vector<char> send(8 * world, 1), recv(8 * world, 0);
    const auto start = std::chrono::steady_clock::now();
    const moe_status_t status =
        moe_comm_all_to_all(comm, send.data(), bytes.data(), recv.data(), bytes.data());
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (status != MOE_STATUS_COMM_ERROR || waited > 10.0 ||
        std::strstr(moe_last_error(), "timed out") == nullptr) {
      std::fprintf(stderr, "rank %d: status %d after %.1f s: %s\n", rank, status, waited,
                   moe_last_error());
      ++failures;
    }
    if (moe_comm_barrier(comm) != MOE_STATUS_COMM_ERROR) {
      std::fprintf(stderr, "rank %d: a broken communicator was used again\n", rank);
      ++failures;
    }
    if (failures == 0)
      std::printf("rank %d: all_to_all returned COMM_ERROR after %.1f s: %s\n", rank, waited,
                  moe_last_error());
  }
  // The abandoned exchange is still pending: leave without freeing the communicator.
  MPI_Finalize();
  return failures;
}
