// The cuda backend as a plugin: libmoe_cuda.so, beside libmoe, opened with dlopen the
// first time a layer asks for backend "cuda" (backends/plugin.hpp is the contract).
// libmoe itself links no CUDA library, so one install loads on hosts with and
// without a GPU.
#pragma once

#include <string>

#include "backends/backend.hpp"

namespace moe {

constexpr const char* kCudaBackendName = "cuda";

// The plugin's path when its file is beside libmoe, else "" (nothing is loaded).
const std::string& cuda_plugin_path();

// The plugin's backend, loading it on the first call; throws MOE_STATUS_UNSUPPORTED
// saying why when there is no plugin or it cannot be loaded (every call says the same).
Backend& cuda_plugin_backend();

}  // namespace moe
