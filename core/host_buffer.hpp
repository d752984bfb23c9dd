// Host buffers for the pipeline's activations and gradients, drawn from a process-wide
// cache of freed blocks. A layer call needs tens of megabytes of fresh buffers at
// T = 4096; taken from the system each time, they arrive as new pages that the kernel
// zeroes and maps on first touch, which cost a quarter of an onednn forward. Reusing
// blocks (as PyTorch's CUDA caching allocator does for device memory) removes that.
// Contents start uninitialized: every stage writes the rows it owns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>

namespace moe {

// The cache: blocks are sized in 2 MiB steps so that calls whose row counts differ a
// little share blocks; at most MOE_HOST_CACHE_MB (default 4096) MiB stay cached.
void* host_block_take(size_t bytes, size_t* granted);
void host_block_give(void* block, size_t granted);

template <typename T>
class host_buffer {
 public:
  host_buffer() = default;
  explicit host_buffer(size_t count) { resize(count); }
  template <typename It, typename = typename std::iterator_traits<It>::iterator_category>
  host_buffer(It first, It last) {
    assign(first, last);
  }
  host_buffer(const host_buffer&) = delete;
  host_buffer& operator=(const host_buffer&) = delete;
  host_buffer(host_buffer&& o) noexcept { swap(o); }
  host_buffer& operator=(host_buffer&& o) noexcept {
    swap(o);
    return *this;
  }
  ~host_buffer() { release(); }

  // New contents are uninitialized; old contents are not kept.
  void resize(size_t count) {
    if (count * sizeof(T) > granted_) {
      release();
      data_ = static_cast<T*>(host_block_take(count * sizeof(T), &granted_));
    }
    size_ = count;
  }
  template <typename It>
  void assign(It first, It last) {
    resize(static_cast<size_t>(std::distance(first, last)));
    for (size_t i = 0; first != last; ++first, ++i) data_[i] = T(*first);
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }

 private:
  void release() {
    if (data_) host_block_give(data_, granted_);
    data_ = nullptr;
    granted_ = size_ = 0;
  }
  void swap(host_buffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(granted_, o.granted_);
  }

  T* data_ = nullptr;
  size_t size_ = 0;
  size_t granted_ = 0;
};

}  // namespace moe
