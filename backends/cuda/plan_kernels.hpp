// Drop decisions and buffer rows on the device. They run before forward's one read-back,
// so that the read-back (and the telemetry in it) already knows every drop; only the
// final row numbers wait for the buffer layout, which the host picks from the counts.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "backends/cuda/kernels.hpp"

namespace moe::cuda {

// rank[i] = place of item i within its group by descending key, equal keys in index
// order; -1 for items of no group (group_of[i] < 0). Keys must be >= 0 (probabilities,
// gates). One stable radix sort over (group, key): deterministic.
void rank_by_descending_key(int64_t items, int64_t groups, const int32_t* group_of,
                            const float* key, int64_t* rank, cudaStream_t stream);

// Probability drop policy: of the copies sent to an expert, those beyond the capacity
// with the lowest gates get dropped[c] = 1 (equal gates: the later token goes), as
// core/plan.cpp's drop_lowest_gates.
void drop_lowest_gates(int64_t copies, int64_t experts, const int32_t* expert_of,
                       const float* gates, const int64_t* summary, uint8_t* dropped,
                       cudaStream_t stream);

// row[c] = the rank of copy c among its expert's kept copies in token order; a copy
// ranked at or past the capacity is dropped (the position policy); -1 for unrouted and
// dropped copies. Copies already marked dropped are skipped.
void rank_kept_copies(int64_t copies, int64_t experts, const int32_t* expert_of,
                      const int64_t* summary, int64_t* row, uint8_t* dropped, cudaStream_t stream);

// Once the buffer layout is chosen (offsets [E + 1], device): row[c] = offsets[e] +
// row[c], and row_token[row[c]] = c / slots (row_token pre-filled with -1, which
// padding keeps).
void place_rows(int64_t copies, int64_t slots, const int32_t* expert_of, const int64_t* offsets,
                int64_t* row, int64_t* row_token, cudaStream_t stream);

}  // namespace moe::cuda
