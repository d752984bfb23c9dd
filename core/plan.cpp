#include "core/plan.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

namespace moe {

int64_t Plan::dropped_total() const {
  int64_t total = 0;
  for (size_t e = 0; e < demand.size(); ++e) total += demand[e] - served[e];
  return total;
}

int64_t capacity_for(double capacity_factor, int64_t tokens, int64_t top_k, int64_t num_experts) {
  const int64_t copies = tokens * top_k;
  const double exact =
      capacity_factor * static_cast<double>(copies) / static_cast<double>(num_experts);
  // A factor such as 1.1 is not a double: 1.1 * 25 * 2 / 5 evaluates to 11.000000000000002,
  // and its ceiling to 12. A value within a few ulps of an integer is that integer, the
  // capacity the caller's decimal factor meant.
  const double nearest = std::nearbyint(exact);
  const bool integral =
      std::fabs(exact - nearest) <= 8 * std::numeric_limits<double>::epsilon() * nearest;
  const double c = integral ? nearest : std::ceil(exact);
  // No expert can hold more than every copy of the batch: a larger capacity would only
  // size buffers and sums past what can ever be used.
  return c >= static_cast<double>(copies) ? copies : static_cast<int64_t>(c);
}

std::vector<int64_t> demand_of(const std::vector<int32_t>& expert, int64_t num_experts) {
  std::vector<int64_t> demand(num_experts, 0);
  for (int32_t e : expert)
    if (e >= 0) ++demand[e];
  return demand;
}

int64_t configured_capacity(const LayerConfig& config, int64_t tokens,
                            const std::vector<int64_t>& demand) {
  if (!config.dropless())
    return std::max(config.min_capacity,
                    capacity_for(config.capacity_factor, tokens, config.top_k, config.num_experts));
  return demand.empty() ? 0 : *std::max_element(demand.begin(), demand.end());
}

namespace {

// Copies claim their expert's capacity in `visit` order (index order when empty): each
// expert keeps the first copies it meets, up to `capacity` with `taken[e]` already
// claimed (on lower ranks).
std::vector<uint8_t> claim_capacity(const std::vector<int32_t>& expert,
                                    const std::vector<int64_t>& visit, int64_t capacity,
                                    std::vector<int64_t> taken) {
  std::vector<uint8_t> dropped(expert.size(), 0);
  const size_t n = visit.empty() ? expert.size() : visit.size();
  for (size_t i = 0; i < n; ++i) {
    const size_t c = visit.empty() ? i : static_cast<size_t>(visit[i]);
    const int32_t e = expert[c];
    if (e < 0) continue;
    if (taken[e] < capacity)
      ++taken[e];
    else
      dropped[c] = 1;
  }
  return dropped;
}

}  // namespace

std::vector<uint8_t> ordered_position_drops(const LayerConfig& config,
                                            const std::vector<int32_t>& expert, int64_t slots,
                                            const std::vector<double>& priority, int64_t capacity,
                                            std::vector<int64_t> ahead) {
  const int64_t copies = static_cast<int64_t>(expert.size());
  const int64_t tokens = slots > 0 ? copies / slots : 0;
  // The order copies claim capacity in (none: token order): slot-major visits every
  // first choice (tokens in order, or by falling top-1 probability when
  // batch-prioritized) before any second; random visits copies by falling draw, so each
  // expert keeps a uniform subset.
  std::vector<int64_t> visit;
  if (config.capacity_order == MOE_CAPACITY_RANDOM) {
    visit.resize(copies);
    std::iota(visit.begin(), visit.end(), int64_t{0});
    std::stable_sort(visit.begin(), visit.end(),
                     [&](int64_t a, int64_t b) { return priority[a] > priority[b]; });
  } else if (config.capacity_order != MOE_CAPACITY_TOKEN_ORDER) {
    std::vector<int64_t> by_token(tokens);
    std::iota(by_token.begin(), by_token.end(), int64_t{0});
    if (config.capacity_order == MOE_CAPACITY_BATCH_PRIORITIZED)
      std::stable_sort(by_token.begin(), by_token.end(),
                       [&](int64_t a, int64_t b) { return priority[a] > priority[b]; });
    visit.reserve(copies);
    for (int64_t j = 0; j < slots; ++j)
      for (int64_t t : by_token) visit.push_back(t * slots + j);
  }
  return claim_capacity(expert, visit, capacity, std::move(ahead));
}

void drop_lowest_gates(const std::vector<double>& gates, int64_t capacity, uint8_t* dropped) {
  const int64_t n = static_cast<int64_t>(gates.size());
  if (n <= capacity) return;
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return gates[a] > gates[b]; });
  for (int64_t i = capacity; i < n; ++i) dropped[order[i]] = 1;
}

namespace {

std::vector<uint8_t> probability_drops(const std::vector<int32_t>& expert,
                                       const std::vector<double>& gate_rank, int64_t E,
                                       int64_t capacity) {
  std::vector<std::vector<int64_t>> copies_of(E);
  for (size_t c = 0; c < expert.size(); ++c)
    if (expert[c] >= 0) copies_of[expert[c]].push_back(static_cast<int64_t>(c));
  std::vector<uint8_t> dropped(expert.size(), 0);
  for (const auto& copies : copies_of) {
    if (static_cast<int64_t>(copies.size()) <= capacity) continue;
    std::vector<double> gates;
    for (int64_t c : copies) gates.push_back(gate_rank[c]);
    std::vector<uint8_t> marks(copies.size(), 0);
    drop_lowest_gates(gates, capacity, marks.data());
    for (size_t i = 0; i < copies.size(); ++i) dropped[copies[i]] = marks[i];
  }
  return dropped;
}

// Served counts, buffer offsets and row assignment from decided drops.
void assign_rows(const LayerConfig& config, const std::vector<int32_t>& expert, bool pad,
                 Plan& plan) {
  const int64_t E = config.num_experts;
  const int64_t copies = static_cast<int64_t>(expert.size());
  plan.served.assign(E, 0);
  for (int64_t c = 0; c < copies; ++c)
    if (expert[c] >= 0 && !plan.dropped[c]) ++plan.served[expert[c]];
  // An expert never receives more than one copy per token, so padding beyond T rows
  // would only waste memory.
  const int64_t padded_rows = std::min(plan.capacity, plan.tokens);
  std::vector<int64_t> first(E, 0);
  plan.offset.assign(E + 1, 0);
  for (int64_t i = 0; i < E; ++i) {
    const int32_t e = plan.order[i];
    first[e] = plan.offset[i];
    plan.offset[i + 1] = plan.offset[i] + (pad ? padded_rows : plan.served[e]);
  }
  plan.rows = plan.offset[E];
  plan.token_of_row.assign(plan.rows, -1);
  plan.row.assign(copies, -1);
  for (int64_t c = 0; c < copies; ++c) {
    const int32_t e = expert[c];
    if (e < 0 || plan.dropped[c]) continue;
    const int64_t r = first[e]++;
    plan.row[c] = r;
    plan.token_of_row[r] = c / plan.slots;
  }
}

Plan empty_plan(const LayerConfig& config, int64_t tokens, const std::vector<int32_t>& expert) {
  Plan plan;
  plan.tokens = tokens;
  plan.slots = config.slots();
  plan.demand = demand_of(expert, config.num_experts);
  return plan;
}

}  // namespace

Plan make_plan(const LayerConfig& config, int64_t tokens, const std::vector<int32_t>& expert,
               const std::vector<double>& gate_rank, const std::vector<double>& fill_priority,
               int64_t fixed_capacity) {
  const int64_t E = config.num_experts;
  Plan plan = empty_plan(config, tokens, expert);
  plan.capacity =
      fixed_capacity >= 0 ? fixed_capacity : configured_capacity(config, tokens, plan.demand);
  if (config.drop_policy == MOE_DROP_PROBABILITY)
    plan.dropped = probability_drops(expert, gate_rank, E, plan.capacity);
  else
    plan.dropped = ordered_position_drops(config, expert, plan.slots, fill_priority, plan.capacity,
                                          std::vector<int64_t>(E, 0));
  plan.order.resize(E);
  std::iota(plan.order.begin(), plan.order.end(), 0);
  assign_rows(config, expert, config.pad_to_capacity, plan);
  return plan;
}

Plan plan_from_drops(const LayerConfig& config, int64_t tokens, const std::vector<int32_t>& expert,
                     std::vector<uint8_t> dropped, int64_t capacity,
                     const std::vector<int32_t>& order) {
  Plan plan = empty_plan(config, tokens, expert);
  plan.capacity = capacity;
  plan.dropped = std::move(dropped);
  plan.order = order;
  assign_rows(config, expert, false, plan);
  return plan;
}

}  // namespace moe
