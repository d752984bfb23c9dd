// The hash router's expert choice: token ids through a fixed 64-bit mix, a balanced
// lookup table built from token-id frequencies, or a hash of the row's content.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moe {

// A balanced id -> k experts table (empty when none was built).
struct HashTable {
  int64_t vocab_size = 0;
  int64_t top_k = 0;
  std::vector<int32_t> experts;  // [vocab_size * top_k]
  bool empty() const { return vocab_size == 0; }
};

// k distinct experts for a 64-bit key: successive mixes, probing past repeats.
void hash_experts(uint64_t key, int64_t num_experts, int64_t top_k, int32_t* out);

// A 64-bit hash of a row's bytes.
uint64_t hash_bytes(const void* data, size_t bytes);

// Greedy longest-processing-time placement: ids by descending frequency, each onto
// the k least-loaded distinct experts (ties to the lower expert id). Ids never seen
// get the mixed choice, so the table covers the whole vocabulary.
HashTable build_hash_table(const int64_t* ids, int64_t n, int64_t vocab_size, int64_t num_experts,
                           int64_t top_k);

}  // namespace moe
