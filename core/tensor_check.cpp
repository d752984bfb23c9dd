#include "core/tensor_check.hpp"

#include <cstdint>
#include <vector>

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/raw_enum.hpp"

namespace moe {

std::string shape_string(const int64_t* shape, int64_t ndim) {
  std::string s = "[";
  for (int64_t i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void check_tensor(const moe_tensor_t& t, const char* name, moe_dtype_t dtype, moe_device_t device,
                  std::initializer_list<int64_t> shape) {
  const std::vector<int64_t> want(shape);
  const std::string expected = shape_string(want.data(), static_cast<int64_t>(want.size()));
  require(t.ndim >= 0 && t.ndim <= MOE_MAX_DIMS, MOE_STATUS_SHAPE_MISMATCH,
          std::string(name) + ".ndim is " + std::to_string(t.ndim) + ", expected " +
              std::to_string(want.size()));
  require(t.ndim == static_cast<int32_t>(want.size()), MOE_STATUS_SHAPE_MISMATCH,
          std::string(name) + " has rank " + std::to_string(t.ndim) + " " +
              shape_string(t.shape, t.ndim) + ", expected " + expected);
  int64_t elements = 1;
  for (size_t i = 0; i < want.size(); ++i) {
    require(t.shape[i] == want[i], MOE_STATUS_SHAPE_MISMATCH,
            std::string(name) + " has shape " + shape_string(t.shape, t.ndim) + ", expected " +
                expected);
    elements *= want[i];
  }
  // An int that is no enum value at all is an invalid argument; a valid dtype or device
  // that is not this layer's is a mismatch.
  require_enum(t.dtype, MOE_DTYPE_F32, MOE_DTYPE_BF16, std::string(name) + ".dtype", "moe_dtype_t");
  require_enum(t.device, MOE_DEVICE_CPU, MOE_DEVICE_CUDA, std::string(name) + ".device",
               "moe_device_t");
  require(raw_enum(t.dtype) == dtype, MOE_STATUS_SHAPE_MISMATCH,
          std::string(name) + " has dtype " + dtype_name(t.dtype) + " (" +
              std::to_string(raw_enum(t.dtype)) + "), the layer's is " + dtype_name(dtype) + " (" +
              std::to_string(dtype) + ")");
  require(raw_enum(t.device) == device, MOE_STATUS_UNSUPPORTED,
          std::string(name) + (device == MOE_DEVICE_CPU
                                   ? " is not in host memory; this layer's backend runs on the CPU"
                                   : " is not in CUDA device memory; this layer's backend runs "
                                     "on the GPU"));
  require(t.data != nullptr || elements == 0, MOE_STATUS_NULL_POINTER,
          std::string(name) + ".data is NULL");
  // The kernels load whole elements: a pointer into the middle of one is refused, not
  // read misaligned (undefined behaviour, a fault on some machines).
  require(reinterpret_cast<uintptr_t>(t.data) % dtype_size(dtype) == 0, MOE_STATUS_INVALID_ARGUMENT,
          std::string(name) + ".data is not aligned to its dtype's " +
              std::to_string(dtype_size(dtype)) + " bytes");
}

}  // namespace moe
