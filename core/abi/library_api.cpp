// The library-wide entry points: status names, the last message, the version, the
// compiled-in backends and the metric catalogue.
#include <string>

#include "core/abi/entry.hpp"
#include "core/layer/backend_registry.hpp"
#include "core/raw_enum.hpp"
#include "core/status_name.hpp"
#include "core/telemetry/metrics.hpp"

using namespace moe::abi;  // guarded, the handle lookups, the shared checks (entry.hpp)

extern "C" {

const char* moe_status_string(moe_status_t status) {
  return moe::status_name(status);
}

const char* moe_last_error(void) {
  return last_error().c_str();
}

moe_status_t moe_version(int32_t* major, int32_t* minor, int32_t* patch) {
  if (major) *major = MOE_VERSION_MAJOR;
  if (minor) *minor = MOE_VERSION_MINOR;
  if (patch) *patch = MOE_VERSION_PATCH;
  last_error().clear();
  return MOE_STATUS_SUCCESS;
}

moe_status_t moe_backend_count(int32_t* count) {
  return guarded(__func__, [&] {
    require_pointer(count, "count");
    *count = moe::backend_count();
  });
}

moe_status_t moe_backend_name(int32_t index, const char** name) {
  return guarded(__func__, [&] {
    require_pointer(name, "name");
    moe::require(index >= 0 && index < moe::backend_count(), MOE_STATUS_INVALID_ARGUMENT,
                 "backend index " + std::to_string(index) + " is out of range [0, " +
                     std::to_string(moe::backend_count()) + ")");
    *name = moe::backend_name(index);
  });
}

moe_status_t moe_metric_count(int32_t* count) {
  return guarded(__func__, [&] {
    require_pointer(count, "count");
    *count = static_cast<int32_t>(moe::catalogue().size());
  });
}

moe_status_t moe_metric_info(int32_t index, const char** name, moe_metric_shape_t* shape,
                             const char** help) {
  return guarded(__func__, [&] {
    const auto& list = moe::catalogue();
    moe::require(index >= 0 && index < static_cast<int32_t>(list.size()),
                 MOE_STATUS_INVALID_ARGUMENT,
                 "metric index " + std::to_string(index) + " is out of range [0, " +
                     std::to_string(list.size()) + ")");
    if (name) *name = list[index].name;
    if (shape) *shape = list[index].shape;
    if (help) *help = list[index].help;
  });
}

}  // extern "C"
