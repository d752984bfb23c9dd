// A stand-in for a cuda plugin built by another libmoe: it has the entry point, says it
// was built for moe 9.9.9 by another compiler, and refuses the handshake as such a
// plugin does (backends/plugin.hpp; the struct is written out here, as another tree
// would have it).
#include <cstdint>

namespace {
struct OtherInterface {
  uint32_t struct_size, revision, version_major, version_minor, version_patch;
  uint32_t config_size, device_layer_size, saved_state_size, backend_size;
  const char* compiler;
};
}  // namespace

extern "C" __attribute__((visibility("default"))) void* moe_plugin_backend(const void* /*host*/,
                                                                           void* plugin) {
  if (plugin != nullptr)
    *static_cast<OtherInterface*>(plugin) =
        OtherInterface{sizeof(OtherInterface), 1, 9, 9, 9, 1, 2, 3, 8, "another compiler"};
  return nullptr;
}
