// Lets the small math helpers (randomness, activations) compile for the host and for
// CUDA devices from one definition, so the CUDA backend makes the same choices.
#pragma once

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif
