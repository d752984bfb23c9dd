// The reference matrix product: row-major, double-precision accumulation, fixed
// summation order (deterministic, and accurate enough to be the oracle).
#pragma once

#include <cstdint>
#include <vector>

namespace moe {

// C[M,N] = (accumulate ? C : 0) + op(A)[M,K] op(B)[K,N] (+ bias[N] on every row, if
// given); op transposes when asked. Each element of C is rounded to S once.
template <typename S>
void reference_gemm(bool transpose_a, bool transpose_b, int64_t M, int64_t N, int64_t K, const S* A,
                    int64_t lda, const S* B, int64_t ldb, S* C, int64_t ldc, bool accumulate,
                    const S* bias = nullptr) {
  std::vector<double> acc(static_cast<size_t>(N));
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) acc[j] = bias ? static_cast<double>(bias[j]) : 0.0;
    for (int64_t p = 0; p < K; ++p) {
      const double a = transpose_a ? A[p * lda + i] : A[i * lda + p];
      if (transpose_b) {
        for (int64_t j = 0; j < N; ++j) acc[j] += a * static_cast<double>(B[j * ldb + p]);
      } else {
        const S* b = B + p * ldb;
        for (int64_t j = 0; j < N; ++j) acc[j] += a * static_cast<double>(b[j]);
      }
    }
    S* c = C + i * ldc;
    for (int64_t j = 0; j < N; ++j)
      c[j] = static_cast<S>((accumulate ? static_cast<double>(c[j]) : 0.0) + acc[j]);
  }
}

}  // namespace moe
