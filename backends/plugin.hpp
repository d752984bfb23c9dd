// The contract between libmoe and a backend plugin (libmoe_cuda.so), the way ggml's
// backend registry and PyTorch's libtorch_cuda split a device backend off the core
// library. The plugin exports one C function, moe_plugin_backend; what crosses is a
// C++ Backend (virtual calls only, so neither side needs the other's symbols), and
// the objects its calls take (LayerConfig, DeviceLayer, SavedState, dist::ExpertParallel)
// are laid out by the same headers on both sides. That holds only for a plugin built
// from the same tree by the same compiler, which this handshake checks.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "backends/backend.hpp"

namespace moe {

// Bumped whenever the Backend, DeviceLayer or SavedState interfaces, or a type they
// reach, change shape in a way the sizes below would not show.
constexpr uint32_t kPluginInterfaceRevision = 1;

struct PluginInterface {
  uint32_t
      struct_size;  // sizeof(PluginInterface) of the side that filled it; fields are only appended
  uint32_t revision;
  uint32_t version_major, version_minor, version_patch;
  uint32_t config_size, device_layer_size, saved_state_size, backend_size;
  const char* compiler;  // __VERSION__
};

inline PluginInterface this_plugin_interface() {
  return PluginInterface{static_cast<uint32_t>(sizeof(PluginInterface)),
                         kPluginInterfaceRevision,
                         MOE_VERSION_MAJOR,
                         MOE_VERSION_MINOR,
                         MOE_VERSION_PATCH,
                         static_cast<uint32_t>(sizeof(LayerConfig)),
                         static_cast<uint32_t>(sizeof(DeviceLayer)),
                         static_cast<uint32_t>(sizeof(SavedState)),
                         static_cast<uint32_t>(sizeof(Backend)),
                         __VERSION__};
}

inline bool same_plugin_interface(const PluginInterface& a, const PluginInterface& b) {
  return a.struct_size == b.struct_size && a.revision == b.revision &&
         a.version_major == b.version_major && a.version_minor == b.version_minor &&
         a.version_patch == b.version_patch && a.config_size == b.config_size &&
         a.device_layer_size == b.device_layer_size && a.saved_state_size == b.saved_state_size &&
         a.backend_size == b.backend_size && a.compiler != nullptr && b.compiler != nullptr &&
         std::strcmp(a.compiler, b.compiler) == 0;
}

// One line for messages: "moe 0.1.0, plugin interface 1, compiler 12.2.0, sizes a/b/c/d".
inline std::string describe(const PluginInterface& p) {
  return "moe " + std::to_string(p.version_major) + "." + std::to_string(p.version_minor) + "." +
         std::to_string(p.version_patch) + ", plugin interface " + std::to_string(p.revision) +
         ", compiler " + (p.compiler ? p.compiler : "?") + ", sizes " +
         std::to_string(p.config_size) + "/" + std::to_string(p.device_layer_size) + "/" +
         std::to_string(p.saved_state_size) + "/" + std::to_string(p.backend_size);
}

}  // namespace moe

// The plugin's entry point: its backend when `host` (libmoe's view of the contract)
// matches the plugin's own, else null; either way it writes its own view into `plugin`
// (when not null), so that a refusal can say what differs. The backend lives until the
// process exits.
extern "C" {
typedef moe::Backend* (*moe_plugin_backend_fn)(const moe::PluginInterface* host,
                                               moe::PluginInterface* plugin);
}
#define MOE_PLUGIN_ENTRY_POINT "moe_plugin_backend"
