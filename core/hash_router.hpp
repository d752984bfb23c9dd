// The hash router's expert choice: token ids through a fixed 64-bit mix, a balanced
// lookup table built from token-id frequencies, or a hash of the row's content.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/portable.hpp"
#include "core/random.hpp"

namespace moe {

// A balanced id -> k experts table (empty when none was built).
struct HashTable {
  int64_t vocab_size = 0;
  int64_t top_k = 0;
  std::vector<int32_t> experts;  // [vocab_size * top_k]
  bool empty() const { return vocab_size == 0; }
};

// k distinct experts for a 64-bit key: successive mixes, probing past repeats. Host and
// device share this definition, so the cuda backend picks the same experts.
MOE_HOST_DEVICE inline void hash_experts(uint64_t key, int64_t num_experts, int64_t top_k,
                                         int32_t* out) {
  uint64_t state = key;
  for (int64_t j = 0; j < top_k; ++j) {
    state = mix64(state);
    int64_t e = static_cast<int64_t>(state % static_cast<uint64_t>(num_experts));
    // Probe forward past experts this token already has: k distinct experts.
    for (int64_t i = 0; i < j; ++i) {
      if (out[i] != static_cast<int32_t>(e)) continue;
      e = (e + 1) % num_experts;
      i = -1;  // recheck against every earlier choice
    }
    out[j] = static_cast<int32_t>(e);
  }
}

// A 64-bit hash of a row's bytes: FNV-1a over little-endian 8-byte words, then mixed.
// Words are assembled byte by byte, so rows need no alignment.
MOE_HOST_DEVICE inline uint64_t hash_bytes(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ULL;
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t word = 0;
    for (int b = 0; b < 8; ++b) word |= static_cast<uint64_t>(p[i + b]) << (8 * b);
    h = (h ^ word) * 0x100000001b3ULL;
  }
  for (; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return mix64(h);
}

// Greedy longest-processing-time placement: ids by descending frequency, each onto
// the k least-loaded distinct experts (ties to the lower expert id). Ids never seen
// get the mixed choice, so the table covers the whole vocabulary.
HashTable build_hash_table(const int64_t* ids, int64_t n, int64_t vocab_size, int64_t num_experts,
                           int64_t top_k);

}  // namespace moe
