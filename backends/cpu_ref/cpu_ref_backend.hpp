// cpu_ref: the plain C++ reference backend, the oracle every other backend is tested
// against. It overrides nothing: the Backend base class's stages are the reference.
#pragma once

#include "backends/backend.hpp"

namespace moe {

class CpuRefBackend final : public Backend {
 public:
  const char* name() const override { return "cpu_ref"; }
  // Every config and dtype: float32, float64 (for finite differences), and bfloat16
  // (double accumulation, rounded where a tensor is stored: the bf16 oracle).
  std::string unsupported_reason(const LayerConfig&) const override { return ""; }
};

}  // namespace moe
