#include "core/hash_router.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <queue>

#include "core/random.hpp"

namespace moe {

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
