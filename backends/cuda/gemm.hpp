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

// How the expert-grouped buffers are laid out: packed (expert e's rows start at
// offsets[e], rows[e] of them) or padded (every expert has the same row count, so
// that one strided-batched product serves all experts).
struct ExpertLayout {
  std::vector<int64_t> rows;     // rows the products use, per expert
  std::vector<int64_t> offsets;  // first buffer row per expert, E + 1 entries
  bool padded = false;
};

// How per-expert products are issued (MOE_CUDA_GEMM overrides "auto"):
//  batched  one cublasGemmStridedBatchedEx over the padded layout;
//  grouped  one cublasGemmGroupedBatchedEx over the experts that have rows;
//  loop     one cublasGemmEx per expert with rows.
// "auto" pads when padding costs at most 25% more rows, else loops: on an H100 with
// cuBLAS 13.0 the grouped call ran 2.1x slower than the loop at the benchmark shape
// (bench/results/gpu-h100.md).
enum class GemmMode { Auto, Batched, Grouped, Loop };
GemmMode gemm_mode_from_environment();

// Chooses the layout for served counts under `mode`; pad_rows >= 0 asks for every
// expert padded to that many rows (pad_to_capacity).
ExpertLayout choose_layout(const std::vector<int64_t>& served, GemmMode mode, int64_t pad_rows);

// Issues a GroupedProblem over `layout`. When overwriting weight-shaped outputs, experts
// without rows get zeros.
class GroupedGemm {
 public:
  GroupedGemm() = default;
  GroupedGemm(const GroupedGemm&) = delete;
  GroupedGemm& operator=(const GroupedGemm&) = delete;
  ~GroupedGemm();

  void run(cublasHandle_t handle, cudaStream_t stream, moe_dtype_t dtype,
           const ExpertLayout& layout, const GroupedProblem& problem);

 private:
  void run_batched(cublasHandle_t handle, moe_dtype_t dtype, const ExpertLayout& layout,
                   const GroupedProblem& p);
  void** device_pointers_ = nullptr;  // 3 pointers per expert, reused in stream order
  size_t capacity_ = 0;
  GemmMode mode_ = gemm_mode_from_environment();
};

}  // namespace moe::cuda
