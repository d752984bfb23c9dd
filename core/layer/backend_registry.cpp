// The only file that knows which backends exist: the host backends compiled into
// libmoe, in order of preference for "auto" (accelerated first, the reference last),
// and the cuda plugin when its file is beside libmoe (core/layer/cuda_plugin.hpp).
#include "core/layer/backend_registry.hpp"

#include <vector>

#include "backends/cpu_ref/cpu_ref_backend.hpp"
#ifdef MOE_WITH_ONEDNN
#include "backends/onednn/onednn_backend.hpp"
#endif
#include "core/error.hpp"
#include "core/layer/cuda_plugin.hpp"

namespace moe {
namespace {

const std::vector<Backend*>& compiled_in() {
  static CpuRefBackend cpu_ref;
#ifdef MOE_WITH_ONEDNN
  static OnednnBackend onednn;
#endif
  static const std::vector<Backend*> list = {
  // Accelerated host backends register here, each behind its CMake switch.
#ifdef MOE_WITH_ONEDNN
      &onednn,
#endif
      &cpu_ref,
  };
  return list;
}

bool cuda_listed() {
  return !cuda_plugin_path().empty();
}

Backend& checked(Backend& backend, const LayerConfig& config) {
  const std::string why = backend.unsupported_reason(config);
  require(why.empty(), MOE_STATUS_UNSUPPORTED,
          std::string("backend '") + backend.name() + "' does not support " + why);
  return backend;
}

}  // namespace

int backend_count() {
  return static_cast<int>(compiled_in().size()) + (cuda_listed() ? 1 : 0);
}

const char* backend_name(int index) {
  if (cuda_listed()) {
    if (index == 0) return kCudaBackendName;
    --index;
  }
  return compiled_in().at(static_cast<size_t>(index))->name();
}

Backend& select_backend(const std::string& name, const LayerConfig& config) {
  // The plugin is loaded by name only: "auto" picks host-memory backends, which the
  // plugin is not, so it never costs a process that did not ask for it.
  if (name == kCudaBackendName) return checked(cuda_plugin_backend(), config);
  std::string reasons;
  for (Backend* backend : compiled_in()) {
    if (name == "auto") {
      if (!backend->selectable_by_auto()) continue;
      const std::string why = backend->unsupported_reason(config);
      if (why.empty()) return *backend;
      reasons += std::string(" ") + backend->name() + ": " + why + ";";
    } else if (name == backend->name()) {
      return checked(*backend, config);
    }
  }
  std::string known;
  for (int i = 0; i < backend_count(); ++i) known += std::string(" ") + backend_name(i);
  require(name != "auto", MOE_STATUS_UNSUPPORTED,
          "no compiled-in backend supports this config:" + reasons);
  throw Error(MOE_STATUS_UNSUPPORTED,
              "unknown or not compiled-in backend '" + name + "'; available:" + known);
}

}  // namespace moe
