// moe-bench --ep: the expert-parallel layer under mpirun (each rank its own tokens of
// the shape and E/world experts), and its exchange beside a bare MPI_Alltoallv of the
// same bytes in the same run, as algBw and busBw (nccl-tests' definitions).
#pragma once

#include "tools/moe-bench/timing.hpp"

namespace moe::bench {

// Runs under mpirun (MPI_Init inside); rank 0 prints and writes --json. Exit status.
int run_expert_parallel(const Options& options);

}  // namespace moe::bench
