// The only file that knows which backends are compiled in. Order = preference for
// "auto": accelerated backends first, the reference last.
#include <vector>

#include "backends/backend.hpp"
#include "backends/cpu_ref/cpu_ref_backend.hpp"
#ifdef MOE_WITH_CUDA
#include "backends/cuda/cuda_backend.hpp"
#endif
#ifdef MOE_WITH_ONEDNN
#include "backends/onednn/onednn_backend.hpp"
#endif
#include "core/error.hpp"

namespace moe {
namespace {

std::vector<Backend*>& registered() {
  static CpuRefBackend cpu_ref;
#ifdef MOE_WITH_CUDA
  static CudaBackend cuda;
#endif
#ifdef MOE_WITH_ONEDNN
  static OnednnBackend onednn;
#endif
  static std::vector<Backend*> list = {
  // Accelerated backends register here, each behind its CMake switch.
#ifdef MOE_WITH_CUDA
      &cuda,
#endif
#ifdef MOE_WITH_ONEDNN
      &onednn,
#endif
      &cpu_ref,
  };
  return list;
}

}  // namespace

int backend_count() {
  return static_cast<int>(registered().size());
}

Backend& backend_at(int index) {
  return *registered().at(static_cast<size_t>(index));
}

Backend& select_backend(const std::string& name, const LayerConfig& config) {
  std::string reasons;
  for (Backend* backend : registered()) {
    if (name == "auto") {
      if (!backend->selectable_by_auto()) continue;
      const std::string why = backend->unsupported_reason(config);
      if (why.empty()) return *backend;
      reasons += std::string(" ") + backend->name() + ": " + why + ";";
    } else if (name == backend->name()) {
      const std::string why = backend->unsupported_reason(config);
      require(why.empty(), MOE_STATUS_UNSUPPORTED,
              std::string("backend '") + backend->name() + "' does not support " + why);
      return *backend;
    }
  }
  std::string known;
  for (Backend* backend : registered()) known += std::string(" ") + backend->name();
  require(name != "auto", MOE_STATUS_UNSUPPORTED,
          "no compiled-in backend supports this config:" + reasons);
  throw Error(MOE_STATUS_UNSUPPORTED,
              "unknown or not compiled-in backend '" + name + "'; available:" + known);
}

}  // namespace moe
