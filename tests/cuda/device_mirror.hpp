// Support for the tests that need a GPU: finding one, random values, and host float
// arrays mirrored on the device in a layer's dtype.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <initializer_list>
#include <random>
#include <vector>

#include "core/bfloat16.hpp"
#include "moe/moe.h"

namespace moe_test {

inline bool have_gpu() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}

#define SKIP_WITHOUT_GPU()                                                      \
  do {                                                                          \
    if (!moe_test::have_gpu()) GTEST_SKIP() << "no CUDA device found: not run"; \
  } while (0)

// n normal values of standard deviation `scale`, as float.
inline std::vector<float> randn(size_t n, double scale, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(normal(rng));
  return v;
}

// A host float array mirrored on the device in the layer's dtype.
struct Mirror {
  moe_dtype_t dtype;
  std::vector<float> host;  // values exactly representable in dtype
  void* device = nullptr;
  Mirror(moe_dtype_t t, std::vector<float> values) : dtype(t), host(std::move(values)) {
    if (dtype == MOE_DTYPE_BF16)
      for (float& v : host) v = moe::bfloat16(v);
    cudaMalloc(&device, bytes() ? bytes() : 1);
    upload();
  }
  Mirror(const Mirror&) = delete;
  Mirror& operator=(const Mirror&) = delete;
  ~Mirror() { cudaFree(device); }
  size_t element() const { return dtype == MOE_DTYPE_BF16 ? 2 : 4; }
  size_t bytes() const { return host.size() * element(); }
  void upload() {
    if (dtype == MOE_DTYPE_BF16) {
      const std::vector<moe::bfloat16> h(host.begin(), host.end());
      cudaMemcpy(device, h.data(), bytes(), cudaMemcpyHostToDevice);
    } else {
      cudaMemcpy(device, host.data(), bytes(), cudaMemcpyHostToDevice);
    }
  }
  std::vector<float> download() const {
    std::vector<float> out(host.size());
    cudaDeviceSynchronize();
    if (dtype == MOE_DTYPE_BF16) {
      std::vector<moe::bfloat16> h(host.size());
      cudaMemcpy(h.data(), device, bytes(), cudaMemcpyDeviceToHost);
      out.assign(h.begin(), h.end());
    } else {
      cudaMemcpy(out.data(), device, bytes(), cudaMemcpyDeviceToHost);
    }
    return out;
  }
  moe_tensor_t tensor(std::initializer_list<int64_t> shape) const {
    moe_tensor_t t = MOE_TENSOR_EMPTY;
    t.data = device;
    t.dtype = dtype;
    t.device = MOE_DEVICE_CUDA;
    for (int64_t s : shape) t.shape[t.ndim++] = s;
    return t;
  }
};

}  // namespace moe_test
