#include "dist/placement.hpp"

#include <algorithm>
#include <numeric>
#include <string>

#include "core/error.hpp"

namespace moe::dist {

std::vector<int32_t> Placement::experts_of_rank(int r) const {
  std::vector<int32_t> experts;
  for (size_t e = 0; e < owner.size(); ++e)
    if (owner[e] == r) experts.push_back(static_cast<int32_t>(e));
  return experts;
}

Placement make_placement(int64_t num_experts, int world, int rank, const int32_t* owner) {
  Placement p;
  p.world = world;
  p.rank = rank;
  p.owner.resize(num_experts);
  for (int64_t e = 0; e < num_experts; ++e) {
    if (owner) {
      require(owner[e] >= 0 && owner[e] < world, MOE_STATUS_INVALID_ARGUMENT,
              "expert_owner[" + std::to_string(e) + "] = " + std::to_string(owner[e]) +
                  " is not a rank in [0, " + std::to_string(world) + ")");
      p.owner[e] = owner[e];
    } else {
      p.owner[e] = static_cast<int32_t>(e * world / num_experts);
    }
  }
  p.local_experts = p.experts_of_rank(rank);
  p.send_order.resize(num_experts);
  std::iota(p.send_order.begin(), p.send_order.end(), 0);
  std::stable_sort(p.send_order.begin(), p.send_order.end(),
                   [&](int32_t a, int32_t b) { return p.owner[a] < p.owner[b]; });
  return p;
}

}  // namespace moe::dist
