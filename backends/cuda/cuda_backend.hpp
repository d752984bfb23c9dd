// cuda: the whole layer on an NVIDIA GPU. Router logits and expert products through
// cuBLAS (grouped GEMM, one call per matrix), routing, planning, permute, combine and
// the elementwise work as CUDA kernels; float32 or bfloat16 with float32 accumulation.
// Forward reads the per-expert counts back to the host once (they size the grouped
// products and are the step's routing telemetry); backward does not synchronise.
// Under expert parallelism rows travel through the layer's communicator in between
// (backends/cuda/expert_parallel.hpp).
#pragma once

#include "backends/backend.hpp"

namespace moe {

class CudaBackend final : public Backend, public DevicePipeline {
 public:
  const char* name() const override { return "cuda"; }
  std::string unsupported_reason(const LayerConfig& config) const override;
  moe_device_t device() const override { return MOE_DEVICE_CUDA; }
  std::unique_ptr<BackendState> create_state(const LayerConfig& config) override;
  DevicePipeline* device_pipeline() override { return this; }
  std::unique_ptr<DeviceMemory> device_memory(void* const& stream) override;
  void read_to_host(const moe_tensor_t& tensor, void* host, size_t bytes) override;

  std::unique_ptr<SavedState> forward(const DeviceLayer& layer, const moe_forward_args_t& args,
                                      const dist::ForwardCheckIn& group) override;
  void backward(const DeviceLayer& layer, const SavedState& saved,
                const moe_backward_args_t& args) override;
};

}  // namespace moe
