// A std::vector whose resize leaves new elements uninitialized: the pipeline's
// activation buffers are written in full by the stage that fills them, and zeroing
// tens of megabytes first would cost as much as the stage itself.
#pragma once

#include <memory>
#include <vector>

namespace moe {

template <typename T>
struct default_init_allocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = default_init_allocator<U>;
  };
  default_init_allocator() = default;
  template <typename U>
  default_init_allocator(const default_init_allocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <typename T>
using host_buffer = std::vector<T, default_init_allocator<T>>;

}  // namespace moe
