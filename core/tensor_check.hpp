// Validation of the tensors that cross the ABI, with messages that name the argument,
// the expected and the actual shape.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "moe/moe.h"

namespace moe {

// Throws unless `t` is a tensor of `dtype` on `device` with exactly `shape`. A tensor
// whose shape holds no element may have data == NULL.
void check_tensor(const moe_tensor_t& t, const char* name, moe_dtype_t dtype, moe_device_t device,
                  std::initializer_list<int64_t> shape);

// A tensor the caller left out: data NULL, ndim 0.
inline bool tensor_is_empty(const moe_tensor_t& t) {
  return t.data == nullptr && t.ndim == 0;
}

std::string shape_string(const int64_t* shape, int64_t ndim);

}  // namespace moe
