#include "dist/balanced_placement.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/error.hpp"

namespace moe::dist {
namespace {

// EPLB's replicate_experts: each extra slot goes to the expert of largest load per
// replica (ties to the lower id), never past `max_replicas`. Returns replicas per expert.
std::vector<int64_t> replicate(const std::vector<double>& load, int64_t slots,
                               int64_t max_replicas) {
  const int64_t n = static_cast<int64_t>(load.size());
  std::vector<int64_t> replicas(n, 1);
  for (int64_t extra = n; extra < slots; ++extra) {
    int64_t best = -1;
    for (int64_t e = 0; e < n; ++e) {
      if (replicas[e] >= max_replicas) continue;
      if (best < 0 || load[e] / replicas[e] > load[best] / replicas[best]) best = e;
    }
    require(best >= 0, MOE_STATUS_INVALID_ARGUMENT,
            std::to_string(slots) +
                " slots cannot be filled: every expert already has a "
                "replica on each of the " +
                std::to_string(max_replicas) + " ranks it may use");
    ++replicas[best];
  }
  return replicas;
}

struct Item {
  int32_t expert;
  double weight;
};

// EPLB's balanced_packing with the one-replica-per-rank rule: items heaviest first (ties
// to the lower expert id) to the least-loaded bin (ties to the lower bin) that has room
// and does not hold the item's expert. When no bin qualifies, an item of a full bin is
// moved to a bin with room, freeing a place. Returns each bin's experts.
std::vector<std::vector<int32_t>> pack(std::vector<Item> items, int bins, int64_t per_bin) {
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.weight != b.weight ? a.weight > b.weight : a.expert < b.expert;
  });
  std::vector<std::vector<Item>> bin(bins);
  std::vector<double> weight(bins, 0.0);
  auto holds = [&](int b, int32_t e) {
    return std::any_of(bin[b].begin(), bin[b].end(), [&](const Item& i) { return i.expert == e; });
  };
  for (const Item& item : items) {
    int best = -1;
    for (int b = 0; b < bins; ++b)
      if (static_cast<int64_t>(bin[b].size()) < per_bin && !holds(b, item.expert) &&
          (best < 0 || weight[b] < weight[best]))
        best = b;
    if (best < 0) {
      // Every bin with room holds this expert: move another expert from a full bin
      // there, and take its place.
      for (int full = 0; full < bins && best < 0; ++full) {
        if (static_cast<int64_t>(bin[full].size()) < per_bin || holds(full, item.expert)) continue;
        for (int room = 0; room < bins && best < 0; ++room) {
          if (static_cast<int64_t>(bin[room].size()) >= per_bin) continue;
          for (size_t i = 0; i < bin[full].size(); ++i) {
            if (holds(room, bin[full][i].expert)) continue;
            weight[full] -= bin[full][i].weight;
            weight[room] += bin[full][i].weight;
            bin[room].push_back(bin[full][i]);
            bin[full].erase(bin[full].begin() + static_cast<std::ptrdiff_t>(i));
            best = full;
            break;
          }
        }
      }
      require(best >= 0, MOE_STATUS_INTERNAL_ERROR, "placement packing found no rank");
    }
    bin[best].push_back(item);
    weight[best] += item.weight;
  }
  std::vector<std::vector<int32_t>> experts(bins);
  for (int b = 0; b < bins; ++b) {
    for (const Item& i : bin[b]) experts[b].push_back(i.expert);
    std::sort(experts[b].begin(), experts[b].end());
  }
  return experts;
}

// Replicates `experts` (with their loads) into ranks * per_rank slots and packs them.
std::vector<std::vector<int32_t>> place(const std::vector<double>& load,
                                        const std::vector<int32_t>& experts, int ranks,
                                        int64_t per_rank) {
  std::vector<double> sub;
  for (int32_t e : experts) sub.push_back(load[e]);
  const std::vector<int64_t> replicas = replicate(sub, ranks * per_rank, ranks);
  std::vector<Item> items;
  for (size_t i = 0; i < experts.size(); ++i)
    for (int64_t r = 0; r < replicas[i]; ++r)
      items.push_back({experts[i], sub[i] / static_cast<double>(replicas[i])});
  return pack(items, ranks, per_rank);
}

}  // namespace

namespace {

// Loads scaled to a largest of 1, so that sums of huge loads do not overflow (max/mean
// does not depend on the scale).
std::vector<double> scaled(const std::vector<double>& load) {
  const double top = load.empty() ? 0.0 : *std::max_element(load.begin(), load.end());
  std::vector<double> out(load);
  if (top > 0.0)
    for (double& l : out) l /= top;
  return out;
}

}  // namespace

double rank_imbalance(const std::vector<double>& unscaled, const std::vector<int32_t>& slot_expert,
                      int world) {
  const std::vector<double> load = scaled(unscaled);
  std::vector<int64_t> replicas(load.size(), 0);
  for (int32_t e : slot_expert)
    if (e >= 0) ++replicas[e];
  const int64_t per_rank = static_cast<int64_t>(slot_expert.size()) / world;
  std::vector<double> rank_load(world, 0.0);
  for (size_t i = 0; i < slot_expert.size(); ++i) {
    const int32_t e = slot_expert[i];
    if (e >= 0) rank_load[i / per_rank] += load[e] / static_cast<double>(replicas[e]);
  }
  const double total = std::accumulate(rank_load.begin(), rank_load.end(), 0.0);
  if (total <= 0.0) return 1.0;
  return *std::max_element(rank_load.begin(), rank_load.end()) / (total / world);
}

BalancedPlacement balanced_placement(const std::vector<double>& load, int world, int64_t num_slots,
                                     int num_nodes) {
  const int64_t E = static_cast<int64_t>(load.size());
  require(world >= 1, MOE_STATUS_INVALID_ARGUMENT, "world must be >= 1");
  require(E >= 1, MOE_STATUS_INVALID_ARGUMENT, "num_experts must be >= 1");
  for (int64_t e = 0; e < E; ++e)
    require(std::isfinite(load[e]) && load[e] >= 0.0, MOE_STATUS_INVALID_ARGUMENT,
            "load[" + std::to_string(e) + "] = " + std::to_string(load[e]) +
                " is not a finite, non-negative load");
  require(num_slots >= E && num_slots % world == 0, MOE_STATUS_INVALID_ARGUMENT,
          "num_slots = " + std::to_string(num_slots) + " must be at least num_experts (" +
              std::to_string(E) + ") and a multiple of the world size (" + std::to_string(world) +
              ")");
  require(
      num_nodes >= 1 && world % num_nodes == 0 && E % num_nodes == 0 && num_slots % num_nodes == 0,
      MOE_STATUS_INVALID_ARGUMENT,
      "num_nodes = " + std::to_string(num_nodes) +
          " must divide the world size, num_experts and num_slots");
  const int64_t per_rank = num_slots / world;
  const int ranks_per_node = world / num_nodes;
  // Whole experts onto nodes, balanced (EPLB's first step; one node: all of them).
  std::vector<Item> experts;
  for (int64_t e = 0; e < E; ++e) experts.push_back({static_cast<int32_t>(e), load[e]});
  const std::vector<std::vector<int32_t>> nodes = pack(experts, num_nodes, E / num_nodes);
  BalancedPlacement out;
  out.slot_expert.assign(num_slots, -1);
  for (int n = 0; n < num_nodes; ++n) {
    const auto ranks = place(load, nodes[n], ranks_per_node, per_rank);
    for (int r = 0; r < ranks_per_node; ++r)
      for (size_t i = 0; i < ranks[r].size(); ++i)
        out.slot_expert[(n * ranks_per_node + r) * per_rank + static_cast<int64_t>(i)] =
            ranks[r][i];
  }
  // Contiguous blocks: expert e on rank e * world / E.
  const std::vector<double> unit = scaled(load);
  std::vector<double> block_load(world, 0.0);
  for (int64_t e = 0; e < E; ++e) block_load[e * world / E] += unit[e];
  const double total = std::accumulate(unit.begin(), unit.end(), 0.0);
  out.imbalance_before =
      total > 0.0 ? *std::max_element(block_load.begin(), block_load.end()) / (total / world) : 1.0;
  out.imbalance_after = rank_imbalance(load, out.slot_expert, world);
  return out;
}

}  // namespace moe::dist
