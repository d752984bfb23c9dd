// cpu_ref: the plain C++ reference backend, the oracle every other backend is tested
// against. It overrides nothing: the Backend base class's stages are the reference.
#pragma once

#include "backends/backend.hpp"

namespace moe {

class CpuRefBackend final : public Backend {
 public:
  const char* name() const override { return "cpu_ref"; }
  std::string unsupported_reason(const LayerConfig& config) const override {
    if (config.dtype == MOE_DTYPE_F32 || config.dtype == MOE_DTYPE_F64) return "";
    return std::string("dtype ") + dtype_name(config.dtype) + " (cpu_ref runs float32 and float64)";
  }
};

}  // namespace moe
