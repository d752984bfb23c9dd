// Row-major matrix products on cuBLAS (which is column-major): C = op(A) op(B) is
// computed as C^T = op(B)^T op(A)^T. Accumulation is always float32 (true float32
// for float32 data: TF32 stays off); C may be accumulated into (beta = 1).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "moe/moe.h"

namespace moe::cuda {

struct MatrixRef {
  const void* data;
  int64_t ld;  // row stride in elements
  bool transpose;
};

// C [M,N] (+)= op(A) [M,K] op(B) [K,N]. A and B have type `dtype`, C has `c_dtype`.
void gemm(cublasHandle_t handle, moe_dtype_t dtype, moe_dtype_t c_dtype, int64_t M, int64_t N,
          int64_t K, MatrixRef A, MatrixRef B, void* C, int64_t ldc, bool accumulate);

// An operand of a per-expert product: expert e's matrix starts at
// base + e * expert_stride (weights) or at base + offsets[e] * ld (row slices of the
// expert-grouped activation buffers).
struct ExpertOperand {
  const void* base;
  int64_t ld;
  bool transpose;
  int64_t expert_stride;
  bool by_rows;
};

// For each expert: C_e [M,N] (+)= op(A_e) op(B_e); a dimension given as kRows is that
// expert's row count.
struct GroupedProblem {
  static constexpr int64_t kRows = -1;
  int64_t M, N, K;
  ExpertOperand A, B, C;
  bool accumulate;
};

// Issues a GroupedProblem as one cublasGemmGroupedBatchedEx call over the experts that
// have rows, or as a loop of cublasGemmEx when MOE_CUDA_GEMM=loop is set or the grouped
// call is unsupported for the types. When overwriting weight-shaped outputs, experts
// without rows get zeros.
class GroupedGemm {
 public:
  GroupedGemm() = default;
  GroupedGemm(const GroupedGemm&) = delete;
  GroupedGemm& operator=(const GroupedGemm&) = delete;
  ~GroupedGemm();

  void run(cublasHandle_t handle, cudaStream_t stream, moe_dtype_t dtype,
           const std::vector<int64_t>& rows, const std::vector<int64_t>& offsets,
           const GroupedProblem& problem);

 private:
  void** device_pointers_ = nullptr;  // 3 pointers per expert, reused in stream order
  size_t capacity_ = 0;
};

}  // namespace moe::cuda
