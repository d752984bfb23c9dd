/* moe_cuda.h: CUDA entry points of moe-runtime (optional; needs the CUDA runtime
 * headers). The layer's tensors live in device memory (moe_tensor_t.device =
 * MOE_DEVICE_CUDA) on the current device; weights and gradients stay caller-owned. */
#ifndef MOE_MOE_CUDA_H
#define MOE_MOE_CUDA_H

#include <cuda_runtime_api.h>

#include "moe/moe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Enqueue the layer's later calls on `stream` (NULL: the default stream). Contexts
 * free their device memory in stream order: destroy them before their stream. */
static inline moe_status_t moe_layer_set_cuda_stream(moe_layer_t layer, cudaStream_t stream) {
  return moe_layer_set_stream(layer, (void *)stream);
}

#ifdef __cplusplus
}
#endif

#endif /* MOE_MOE_CUDA_H */
