// The set of live handles. Every handle that crosses the ABI is looked up here before
// it is dereferenced, so a destroyed, forged or wrongly-typed handle gets
// MOE_STATUS_INVALID_HANDLE instead of a crash.
#pragma once

#include <mutex>
#include <string>
#include <unordered_map>

#include "core/error.hpp"

namespace moe {

enum class HandleKind { Layer, Ctx, Group, Comm };

class HandleRegistry {
 public:
  static HandleRegistry& instance();

  void add(const void* handle, HandleKind kind);
  void remove(const void* handle);
  // Throws MOE_STATUS_INVALID_HANDLE unless `handle` is live and of `kind`.
  void check(const void* handle, HandleKind kind, const char* what) const;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<const void*, HandleKind> live_;
};

}  // namespace moe
