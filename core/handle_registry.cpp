#include "core/handle_registry.hpp"

namespace moe {

HandleRegistry& HandleRegistry::instance() {
  static HandleRegistry registry;
  return registry;
}

void HandleRegistry::add(const void* handle, HandleKind kind) {
  std::lock_guard<std::mutex> lock(mutex_);
  live_[handle] = kind;
}

void HandleRegistry::remove(const void* handle) {
  std::lock_guard<std::mutex> lock(mutex_);
  live_.erase(handle);
}

void HandleRegistry::check(const void* handle, HandleKind kind, const char* what) const {
  require(handle != nullptr, MOE_STATUS_NULL_POINTER, std::string(what) + " is NULL");
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(handle);
  require(it != live_.end(), MOE_STATUS_INVALID_HANDLE,
          std::string(what) + " is not a live handle (destroyed or never created)");
  require(it->second == kind, MOE_STATUS_INVALID_HANDLE,
          std::string(what) + " is a handle of another kind");
}

}  // namespace moe
