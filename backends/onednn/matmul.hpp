// Matrix products through oneDNN's matmul primitive. Every dimension is a runtime
// dimension, so one primitive serves every expert's row count: a primitive is made once
// per (dtype, transposes, accumulate, bias) and cached for the life of the process.
#pragma once

#include <cstdint>

#include "core/bfloat16.hpp"

namespace moe::onednn {

// C[M,N] = (accumulate ? C : 0) + op(A)[M,K] op(B)[K,N] (+ bias[N] on every row).
// All operands dense row-major; op(A) reads A stored as [K,M] when transpose_a (same
// for B as [N,K]). Accumulation is float32 (bfloat16 operands included). Throws
// moe::Error(MOE_STATUS_BACKEND_ERROR) if oneDNN fails.
template <typename S>
void matmul(bool transpose_a, bool transpose_b, int64_t M, int64_t N, int64_t K, const S* A,
            const S* B, S* C, bool accumulate, const S* bias = nullptr);

extern template void matmul<float>(bool, bool, int64_t, int64_t, int64_t, const float*,
                                   const float*, float*, bool, const float*);
extern template void matmul<bfloat16>(bool, bool, int64_t, int64_t, int64_t, const bfloat16*,
                                      const bfloat16*, bfloat16*, bool, const bfloat16*);

}  // namespace moe::onednn
