// Every CUDA and cuBLAS call is checked; a failure becomes moe::Error with
// MOE_STATUS_BACKEND_ERROR (or OUT_OF_MEMORY) and a message naming the call.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <string>

#include "core/error.hpp"

namespace moe::cuda {

inline void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  const moe_status_t code =
      status == cudaErrorMemoryAllocation ? MOE_STATUS_OUT_OF_MEMORY : MOE_STATUS_BACKEND_ERROR;
  throw Error(code, std::string(what) + ": " + cudaGetErrorName(status) + " (" +
                        cudaGetErrorString(status) + ")");
}

inline void check(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const moe_status_t code =
      status == CUBLAS_STATUS_ALLOC_FAILED ? MOE_STATUS_OUT_OF_MEMORY : MOE_STATUS_BACKEND_ERROR;
  throw Error(code, std::string(what) + ": " + cublasGetStatusName(status) + " (" +
                        cublasGetStatusString(status) + ")");
}

// After a kernel launch: configuration errors surface here, not later.
inline void check_launch(const char* kernel) {
  check(cudaGetLastError(), kernel);
}

}  // namespace moe::cuda
