// The library-wide entry points: status names, the last message, the version, the
// compiled-in backends and the metric catalogue.
#include <string>

#include "backends/backend.hpp"
#include "core/abi/entry.hpp"
#include "core/raw_enum.hpp"
#include "core/telemetry/metrics.hpp"

using namespace moe::abi;  // guarded, the handle lookups, the shared checks (entry.hpp)

extern "C" {

const char* moe_status_string(moe_status_t status) {
  switch (moe::raw_enum(status)) {
    case MOE_STATUS_SUCCESS: return "MOE_STATUS_SUCCESS";
    case MOE_STATUS_NULL_POINTER: return "MOE_STATUS_NULL_POINTER";
    case MOE_STATUS_INVALID_ARGUMENT: return "MOE_STATUS_INVALID_ARGUMENT";
    case MOE_STATUS_SHAPE_MISMATCH: return "MOE_STATUS_SHAPE_MISMATCH";
    case MOE_STATUS_INVALID_HANDLE: return "MOE_STATUS_INVALID_HANDLE";
    case MOE_STATUS_INVALID_STATE: return "MOE_STATUS_INVALID_STATE";
    case MOE_STATUS_UNSUPPORTED: return "MOE_STATUS_UNSUPPORTED";
    case MOE_STATUS_OUT_OF_MEMORY: return "MOE_STATUS_OUT_OF_MEMORY";
    case MOE_STATUS_BACKEND_ERROR: return "MOE_STATUS_BACKEND_ERROR";
    case MOE_STATUS_COMM_ERROR: return "MOE_STATUS_COMM_ERROR";
    case MOE_STATUS_INTERNAL_ERROR: return "MOE_STATUS_INTERNAL_ERROR";
  }
  return "MOE_STATUS_UNKNOWN";
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
    *name = moe::backend_at(index).name();
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
