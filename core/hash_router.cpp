#include "core/hash_router.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <queue>

#include "core/random.hpp"

namespace moe {

void hash_experts(uint64_t key, int64_t num_experts, int64_t top_k, int32_t* out) {
  uint64_t state = key;
  for (int64_t j = 0; j < top_k; ++j) {
    state = mix64(state);
    int64_t e = static_cast<int64_t>(state % static_cast<uint64_t>(num_experts));
    // Probe forward past experts this token already has: k distinct experts.
    while (std::find(out, out + j, static_cast<int32_t>(e)) != out + j) e = (e + 1) % num_experts;
    out[j] = static_cast<int32_t>(e);
  }
}

uint64_t hash_bytes(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a over 8-byte words, then mixed
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t word;
    std::memcpy(&word, p + i, 8);
    h = (h ^ word) * 0x100000001b3ULL;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return mix64(h);
}

HashTable build_hash_table(const int64_t* ids, int64_t n, int64_t vocab_size, int64_t num_experts,
                           int64_t top_k) {
  std::vector<int64_t> frequency(vocab_size, 0);
  for (int64_t i = 0; i < n; ++i) ++frequency[ids[i]];

  std::vector<int64_t> order(vocab_size);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return frequency[a] > frequency[b]; });

  HashTable table;
  table.vocab_size = vocab_size;
  table.top_k = top_k;
  table.experts.assign(vocab_size * top_k, -1);
  std::vector<int64_t> load(num_experts, 0);
  std::vector<int64_t> by_load(num_experts);
  for (int64_t id : order) {
    int32_t* slot = &table.experts[id * top_k];
    if (frequency[id] == 0) {
      hash_experts(static_cast<uint64_t>(id), num_experts, top_k, slot);
      continue;
    }
    std::iota(by_load.begin(), by_load.end(), 0);
    std::partial_sort(
        by_load.begin(), by_load.begin() + top_k, by_load.end(),
        [&](int64_t a, int64_t b) { return load[a] != load[b] ? load[a] < load[b] : a < b; });
    for (int64_t j = 0; j < top_k; ++j) {
      slot[j] = static_cast<int32_t>(by_load[j]);
      load[by_load[j]] += frequency[id];
    }
  }
  return table;
}

}  // namespace moe
