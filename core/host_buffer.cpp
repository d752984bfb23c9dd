#include "core/host_buffer.hpp"

#include <cstdlib>
#include <list>
#include <mutex>
#include <new>

namespace moe {
namespace {

constexpr size_t kStep = size_t{2} << 20;     // 2 MiB: also the huge-page size
constexpr size_t kSmall = size_t{256} << 10;  // smaller blocks go straight to malloc

size_t cache_limit() {
  static const size_t limit = [] {
    const char* env = std::getenv("MOE_HOST_CACHE_MB");
    const long long mb = env ? std::atoll(env) : 4096;
    return static_cast<size_t>(mb > 0 ? mb : 0) << 20;
  }();
  return limit;
}

struct Block {
  void* data;
  size_t bytes;
};

struct Cache {
  std::mutex mutex;
  std::list<Block> free;  // most recently freed first
  size_t bytes = 0;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: buffers may be freed at exit
  return *c;
}

}  // namespace

void* host_block_take(size_t bytes, size_t* granted) {
  if (bytes < kSmall) {
    *granted = bytes;
    void* p = std::malloc(bytes ? bytes : 1);
    if (!p) throw std::bad_alloc();
    return p;
  }
  const size_t want = (bytes + kStep - 1) / kStep * kStep;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    // Best fit among blocks no more than twice the request.
    auto best = c.free.end();
    for (auto it = c.free.begin(); it != c.free.end(); ++it)
      if (it->bytes >= want && it->bytes <= 2 * want &&
          (best == c.free.end() || it->bytes < best->bytes))
        best = it;
    if (best != c.free.end()) {
      void* p = best->data;
      *granted = best->bytes;
      c.bytes -= best->bytes;
      c.free.erase(best);
      return p;
    }
  }
  void* p = std::aligned_alloc(kStep, want);
  if (!p) throw std::bad_alloc();
  *granted = want;
  return p;
}

void host_block_give(void* block, size_t granted) {
  if (granted < kSmall) {
    std::free(block);
    return;
  }
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.free.push_front({block, granted});
  c.bytes += granted;
  while (c.bytes > cache_limit() && !c.free.empty()) {  // the oldest go back first
    std::free(c.free.back().data);
    c.bytes -= c.free.back().bytes;
    c.free.pop_back();
  }
}

}  // namespace moe
