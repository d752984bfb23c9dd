// The live handles. A handle that crosses the ABI is not an address but a token: a value
// handed out once and never again, looked up here before anything is touched. So a
// destroyed, forged or wrongly-typed handle gets MOE_STATUS_INVALID_HANDLE instead of a
// crash, and a destroyed handle stays refused even when the allocator puts a new object
// at the address the old one had (keyed by address, a stale handle used to reach it).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/error.hpp"

namespace moe {

enum class HandleKind { Layer, Ctx, Group, Comm };

class HandleRegistry {
 public:
  static HandleRegistry& instance();

  // Registers `object` and returns its new handle.
  const void* add(void* object, HandleKind kind);
  // The object behind a live handle of `kind`; throws MOE_STATUS_NULL_POINTER or
  // MOE_STATUS_INVALID_HANDLE otherwise.
  void* lookup(const void* handle, HandleKind kind, const char* what) const;
  // Retires a live handle of `kind` (never handed out again) and returns its object.
  void* remove(const void* handle, HandleKind kind, const char* what);

 private:
  struct Entry {
    void* object;
    HandleKind kind;
  };
  const Entry& entry(const void* handle, HandleKind kind, const char* what) const;

  mutable std::mutex mutex_;
  uint64_t issued_ = 0;
  std::unordered_map<const void*, Entry> live_;
};

template <typename Object>
Object& handle_object(const void* handle, HandleKind kind, const char* what) {
  return *static_cast<Object*>(HandleRegistry::instance().lookup(handle, kind, what));
}

}  // namespace moe
