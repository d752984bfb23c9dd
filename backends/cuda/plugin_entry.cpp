// libmoe_cuda.so's one export (backends/plugin.hpp).
#include <type_traits>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/plugin.hpp"

extern "C" __attribute__((visibility("default"))) moe::Backend* moe_plugin_backend(
    const moe::PluginInterface* host, moe::PluginInterface* plugin) {
  const moe::PluginInterface own = moe::this_plugin_interface();
  if (plugin != nullptr) *plugin = own;
  if (host == nullptr || !moe::same_plugin_interface(*host, own)) return nullptr;
  static moe::CudaBackend backend;
  return &backend;
}

static_assert(std::is_same<decltype(&moe_plugin_backend), moe_plugin_backend_fn>::value,
              "the entry point's signature is the one libmoe looks up");
