// Expert placement: which rank owns each expert. Contiguous blocks by default
// (expert e on rank floor(e * world / E), so block sizes differ by at most one), or
// the caller's explicit expert-to-rank map.
#pragma once

#include <cstdint>
#include <vector>

namespace moe::dist {

struct Placement {
  int world = 1;
  int rank = 0;
  std::vector<int32_t> owner;          // [E] rank of each expert
  std::vector<int32_t> local_experts;  // this rank's experts, ascending: its weights' order
  std::vector<int32_t> send_order;     // [E] experts by (owner, id): the exchange's order
  std::vector<int32_t> experts_of_rank(int r) const;
};

// `owner` may be null (contiguous blocks); else [num_experts] ranks in [0, world).
Placement make_placement(int64_t num_experts, int world, int rank, const int32_t* owner);

}  // namespace moe::dist
