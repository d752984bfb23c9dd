// A rank that leaves without joining the exchange: the last rank finalizes at once;
// the others must get MOE_STATUS_COMM_ERROR within the timeout (2 s) instead of
// hanging, and the communicator must then refuse further use. With the argument
// "layer", the exchange the others wait in is an expert-parallel layer's forward.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "moe/moe.hpp"
#include "moe/moe_mpi.h"

namespace {

moe_layer_t attached_layer(moe_comm_t comm) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = 4;
  c.d_ff = 4;
  c.num_experts = 4;
  c.backend = "cpu_ref";
  moe_layer_t layer = nullptr;
  if (moe_layer_create(&c, &layer) != MOE_STATUS_SUCCESS ||
      moe_layer_set_comm(layer, comm, nullptr, 0) != MOE_STATUS_SUCCESS)
    return nullptr;
  return layer;
}

// The first exchange of a forward call on an attached layer.
moe_status_t layer_forward(moe_layer_t layer) {
  int64_t held = 0;
  moe_layer_local_experts(layer, nullptr, 0, &held);
  static float router[16], w1[64], w2[64], x[8], y[8];
  moe_weights_t w = MOE_WEIGHTS_INIT;
  w.router = moe::tensor(router, MOE_DTYPE_F32, {4, 4});
  w.w1 = moe::tensor(w1, MOE_DTYPE_F32, {held, 4, 4});
  w.w2 = moe::tensor(w2, MOE_DTYPE_F32, {held, 4, 4});
  if (moe_layer_set_weights(layer, &w) != MOE_STATUS_SUCCESS) return MOE_STATUS_INTERNAL_ERROR;
  moe_forward_args_t args = MOE_FORWARD_ARGS_INIT;
  args.x = moe::tensor(x, MOE_DTYPE_F32, {2, 4});
  args.y = moe::tensor(y, MOE_DTYPE_F32, {2, 4});
  moe_ctx_t ctx = nullptr;
  return moe_layer_forward(layer, &args, &ctx);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const bool through_layer = argc > 1 && std::strcmp(argv[1], "layer") == 0;
  int rank = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  moe_comm_t comm = nullptr;
  if (moe_comm_create_mpi(MPI_COMM_WORLD, 2.0, &comm) != MOE_STATUS_SUCCESS) return 1;
  moe_layer_t layer = through_layer ? attached_layer(comm) : nullptr;
  if (through_layer && layer == nullptr) {
    std::fprintf(stderr, "rank %d: could not attach: %s\n", rank, moe_last_error());
    return 1;
  }
  int failures = 0;
  if (rank != world - 1) {
    std::vector<int64_t> bytes(world, 8);
    std::vector<char> send(8 * world, 1), recv(8 * world, 0);
    const auto start = std::chrono::steady_clock::now();
    const moe_status_t status = through_layer ? layer_forward(layer)
                                              : moe_comm_all_to_all(comm, send.data(), bytes.data(),
                                                                    recv.data(), bytes.data());
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
    if (through_layer && layer_forward(layer) != MOE_STATUS_COMM_ERROR) {
      std::fprintf(stderr, "rank %d: the layer used a broken communicator\n", rank);
      ++failures;
    }
    if (failures == 0)
      std::printf("rank %d: %s returned COMM_ERROR after %.1f s: %s\n", rank,
                  through_layer ? "forward" : "all_to_all", waited, moe_last_error());
  }
  // The abandoned exchange is still pending: leave without freeing the communicator.
  MPI_Finalize();
  return failures;
}
