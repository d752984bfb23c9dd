#include "backends/cuda/gemm.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backends/cuda/cuda_check.hpp"
#include "core/config.hpp"

namespace moe::cuda {
namespace {

cudaDataType_t cuda_type(moe_dtype_t dtype) {
  return dtype == MOE_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

cublasOperation_t op(bool transpose) {
  return transpose ? CUBLAS_OP_T : CUBLAS_OP_N;
}

const void* operand_pointer(const ExpertOperand& o, int64_t e, const std::vector<int64_t>& offsets,
                            size_t element) {
  const int64_t elements = o.by_rows ? offsets[e] * o.ld : e * o.expert_stride;
  return static_cast<const char*>(o.base) + elements * static_cast<int64_t>(element);
}

}  // namespace

GemmMode gemm_mode_from_environment() {
  const char* mode = std::getenv("MOE_CUDA_GEMM");
  if (mode == nullptr) return GemmMode::Auto;
  if (std::strcmp(mode, "batched") == 0) return GemmMode::Batched;
  if (std::strcmp(mode, "grouped") == 0) return GemmMode::Grouped;
  if (std::strcmp(mode, "loop") == 0) return GemmMode::Loop;
  return GemmMode::Auto;
}

ExpertLayout choose_layout(const std::vector<int64_t>& served, GemmMode mode, int64_t pad_rows) {
  const int64_t E = static_cast<int64_t>(served.size());
  int64_t total = 0, most = 0;
  for (int64_t s : served) {
    total += s;
    most = std::max(most, s);
  }
  ExpertLayout layout;
  if (pad_rows >= 0) most = std::max(most, pad_rows);
  layout.padded = pad_rows >= 0 || mode == GemmMode::Batched ||
                  (mode == GemmMode::Auto && total > 0 && 4 * E * most <= 5 * total);
  layout.offsets.assign(E + 1, 0);
  layout.rows = layout.padded ? std::vector<int64_t>(E, most) : served;
  for (int64_t e = 0; e < E; ++e) layout.offsets[e + 1] = layout.offsets[e] + layout.rows[e];
  return layout;
}

void gemm(cublasHandle_t handle, moe_dtype_t dtype, moe_dtype_t c_dtype, int64_t M, int64_t N,
          int64_t K, MatrixRef A, MatrixRef B, void* C, int64_t ldc, bool accumulate) {
  if (M == 0 || N == 0) return;
  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  check(cublasGemmEx_64(handle, op(B.transpose), op(A.transpose), N, M, K, &alpha, B.data,
                        cuda_type(dtype), B.ld, A.data, cuda_type(dtype), A.ld, &beta, C,
                        cuda_type(c_dtype), ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

GroupedGemm::~GroupedGemm() {
  if (device_pointers_) cudaFree(device_pointers_);
}

void GroupedGemm::run_batched(cublasHandle_t handle, moe_dtype_t dtype, const ExpertLayout& layout,
                              const GroupedProblem& p) {
  const int64_t E = static_cast<int64_t>(layout.rows.size());
  const int64_t m = layout.rows.empty() ? 0 : layout.rows[0];
  auto dim = [&](int64_t d) { return d == GroupedProblem::kRows ? m : d; };
  auto stride = [&](const ExpertOperand& o) { return o.by_rows ? m * o.ld : o.expert_stride; };
  const float alpha = 1.f, beta = p.accumulate ? 1.f : 0.f;
  const cudaDataType_t type = cuda_type(dtype);
  check(cublasGemmStridedBatchedEx_64(handle, op(p.B.transpose), op(p.A.transpose), dim(p.N),
                                      dim(p.M), dim(p.K), &alpha, p.B.base, type, p.B.ld,
                                      stride(p.B), p.A.base, type, p.A.ld, stride(p.A), &beta,
                                      const_cast<void*>(p.C.base), type, p.C.ld, stride(p.C), E,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmStridedBatchedEx");
}

void GroupedGemm::run(cublasHandle_t handle, cudaStream_t stream, moe_dtype_t dtype,
                      const ExpertLayout& layout, const GroupedProblem& p) {
  const std::vector<int64_t>& rows = layout.rows;
  const std::vector<int64_t>& offsets = layout.offsets;
  const int64_t E = static_cast<int64_t>(rows.size());
  if (layout.padded && E > 0 && rows[0] > 0) {
    run_batched(handle, dtype, layout, p);
    return;
  }
  const size_t element = dtype_size(dtype);
  auto dim = [&](int64_t d, int64_t e) { return d == GroupedProblem::kRows ? rows[e] : d; };

  std::vector<int64_t> active;
  for (int64_t e = 0; e < E; ++e) {
    if (rows[e] > 0) {
      active.push_back(e);
    } else if (!p.accumulate && !p.C.by_rows) {
      // No rows: the product is zero, and an overwritten gradient must say so.
      const size_t bytes = static_cast<size_t>(dim(p.M, e) * p.C.ld) * element;
      check(cudaMemsetAsync(const_cast<void*>(operand_pointer(p.C, e, offsets, element)), 0, bytes,
                            stream),
            "cudaMemsetAsync");
    }
  }
  if (active.empty()) return;

  const int groups = static_cast<int>(active.size());
  std::vector<cublasOperation_t> trans_a(groups, op(p.B.transpose)),
      trans_b(groups, op(p.A.transpose));
  std::vector<int> m(groups), n(groups), k(groups), lda(groups, static_cast<int>(p.B.ld)),
      ldb(groups, static_cast<int>(p.A.ld)), ldc(groups, static_cast<int>(p.C.ld)),
      group_size(groups, 1);
  std::vector<float> alpha(groups, 1.f), beta(groups, p.accumulate ? 1.f : 0.f);
  std::vector<const void*> pointers(3 * groups);
  for (int g = 0; g < groups; ++g) {
    const int64_t e = active[g];
    m[g] = static_cast<int>(dim(p.N, e));
    n[g] = static_cast<int>(dim(p.M, e));
    k[g] = static_cast<int>(dim(p.K, e));
    pointers[g] = operand_pointer(p.B, e, offsets, element);
    pointers[groups + g] = operand_pointer(p.A, e, offsets, element);
    pointers[2 * groups + g] = operand_pointer(p.C, e, offsets, element);
  }

  if (mode_ == GemmMode::Grouped) {
    if (capacity_ < pointers.size()) {
      if (device_pointers_) check(cudaFree(device_pointers_), "cudaFree");
      device_pointers_ = nullptr;
      check(
          cudaMalloc(reinterpret_cast<void**>(&device_pointers_), pointers.size() * sizeof(void*)),
          "cudaMalloc");
      capacity_ = pointers.size();
    }
    // From pageable memory: the call returns once the pointers are staged, so the
    // host vector may go; the device copy is consumed in stream order.
    check(cudaMemcpyAsync(device_pointers_, pointers.data(), pointers.size() * sizeof(void*),
                          cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");
    const cudaDataType_t type = cuda_type(dtype);
    const cublasStatus_t status = cublasGemmGroupedBatchedEx(
        handle, trans_a.data(), trans_b.data(), m.data(), n.data(), k.data(), alpha.data(),
        const_cast<const void* const*>(device_pointers_), type, lda.data(),
        const_cast<const void* const*>(device_pointers_ + groups), type, ldb.data(), beta.data(),
        device_pointers_ + 2 * groups, type, ldc.data(), groups, group_size.data(),
        CUBLAS_COMPUTE_32F);
    if (status != CUBLAS_STATUS_NOT_SUPPORTED) {
      check(status, "cublasGemmGroupedBatchedEx");
      return;
    }
  }
  for (int g = 0; g < groups; ++g) {
    const int64_t e = active[g];
    gemm(handle, dtype, dtype, dim(p.M, e), dim(p.N, e), dim(p.K, e),
         {pointers[groups + g], p.A.ld, p.A.transpose}, {pointers[g], p.B.ld, p.B.transpose},
         const_cast<void*>(pointers[2 * groups + g]), p.C.ld, p.accumulate);
  }
}

}  // namespace moe::cuda
