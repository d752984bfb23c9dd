#include "core/abi/handle_registry.hpp"

namespace moe {
namespace {

// Tokens start far from any heap address (on x86-64 and AArch64 they are not even
// canonical addresses), so a handle dereferenced by mistake faults at once instead of
// reading someone's memory; they step by 16 and are never reused.
constexpr uint64_t kTokenBase = sizeof(void*) == 8 ? 0x4d4f450000000000ull : 0x40000000ull;

const char* kind_name(HandleKind kind) {
  switch (kind) {
    case HandleKind::Layer: return "a layer";
    case HandleKind::Ctx: return "a ctx";
    case HandleKind::Group: return "a group";
    case HandleKind::Comm: return "a communicator";
  }
  return "another kind";
}

}  // namespace

HandleRegistry& HandleRegistry::instance() {
  static HandleRegistry registry;
  return registry;
}

const void* HandleRegistry::add(void* object, HandleKind kind) {
  std::lock_guard<std::mutex> lock(mutex_);
  const void* handle =
      reinterpret_cast<const void*>(static_cast<uintptr_t>(kTokenBase + 16 * ++issued_));
  live_[handle] = Entry{object, kind};
  return handle;
}

const HandleRegistry::Entry& HandleRegistry::entry(const void* handle, HandleKind kind,
                                                   const char* what) const {
  require(handle != nullptr, MOE_STATUS_NULL_POINTER, std::string(what) + " is NULL");
  auto it = live_.find(handle);
  require(it != live_.end(), MOE_STATUS_INVALID_HANDLE,
          std::string(what) + " is not a live handle (destroyed or never created)");
  require(it->second.kind == kind, MOE_STATUS_INVALID_HANDLE,
          std::string(what) + " is a handle of " + kind_name(it->second.kind) + ", not " +
              kind_name(kind));
  return it->second;
}

void* HandleRegistry::lookup(const void* handle, HandleKind kind, const char* what) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entry(handle, kind, what).object;
}

void* HandleRegistry::remove(const void* handle, HandleKind kind, const char* what) {
  std::lock_guard<std::mutex> lock(mutex_);
  void* object = entry(handle, kind, what).object;
  live_.erase(handle);
  return object;
}

}  // namespace moe
