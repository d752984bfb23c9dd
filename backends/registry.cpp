// The only file that knows which backends are compiled in. Order = preference for
// "auto": accelerated backends first, the reference last.
#include <vector>

#include "backends/backend.hpp"
#include "backends/cpu_ref/cpu_ref_backend.hpp"
#include "core/error.hpp"

namespace moe {
namespace {

std::vector<Backend*>& registered() {
  static CpuRefBackend cpu_ref;
  static std::vector<Backend*> list = {
      // Accelerated backends register here, each behind its CMake switch.
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
  for (Backend* backend : registered()) {
    if (name == "auto" ? backend->supports(config) : name == backend->name()) {
      require(backend->supports(config), MOE_STATUS_UNSUPPORTED,
              std::string("backend '") + backend->name() + "' does not support dtype " +
                  dtype_name(config.dtype));
      return *backend;
    }
  }
  std::string known;
  for (Backend* backend : registered()) known += std::string(" ") + backend->name();
  require(name != "auto", MOE_STATUS_UNSUPPORTED,
          std::string("no compiled-in backend supports dtype ") + dtype_name(config.dtype));
  throw Error(MOE_STATUS_UNSUPPORTED,
              "unknown or not compiled-in backend '" + name + "'; available:" + known);
}

}  // namespace moe
