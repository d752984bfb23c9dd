#include "core/plan.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace moe {

int64_t Plan::dropped_total() const {
  int64_t total = 0;
  for (size_t e = 0; e < demand.size(); ++e) total += demand[e] - served[e];
  return total;
}

int64_t capacity_for(double capacity_factor, int64_t tokens, int64_t top_k, int64_t num_experts) {
  const double c = std::ceil(capacity_factor * static_cast<double>(tokens * top_k) /
                             static_cast<double>(num_experts));
  const double limit = static_cast<double>(int64_t{1} << 62);
  return c >= limit ? (int64_t{1} << 62) : static_cast<int64_t>(c);
}

namespace {

// Marks which copies each expert keeps, by the configured drop policy.
void decide_drops(const LayerConfig& config, const std::vector<int32_t>& expert,
                  const std::vector<double>& gate_rank, Plan& plan) {
  const int64_t E = config.num_experts;
  const int64_t copies = static_cast<int64_t>(expert.size());
  if (config.drop_policy == MOE_DROP_POSITION) {
    // Copies are visited in token order, so each expert keeps its earliest tokens.
    std::vector<int64_t> taken(E, 0);
    for (int64_t c = 0; c < copies; ++c) {
      const int32_t e = expert[c];
      if (e < 0) continue;
      if (taken[e] < plan.capacity) {
        ++taken[e];
      } else {
        plan.dropped[c] = 1;
      }
    }
    return;
  }
  // Probability policy: per expert, the highest gates win; ties go to the lower token.
  std::vector<std::vector<int64_t>> by_expert(E);
  for (int64_t c = 0; c < copies; ++c)
    if (expert[c] >= 0) by_expert[expert[c]].push_back(c);
  for (int64_t e = 0; e < E; ++e) {
    auto& list = by_expert[e];
    if (static_cast<int64_t>(list.size()) <= plan.capacity) continue;
    std::stable_sort(list.begin(), list.end(),
                     [&](int64_t a, int64_t b) { return gate_rank[a] > gate_rank[b]; });
    for (size_t i = static_cast<size_t>(plan.capacity); i < list.size(); ++i)
      plan.dropped[list[i]] = 1;
  }
}

}  // namespace

Plan make_plan(const LayerConfig& config, int64_t tokens, const std::vector<int32_t>& expert,
               const std::vector<double>& gate_rank, int64_t fixed_capacity) {
  const int64_t E = config.num_experts;
  Plan plan;
  plan.tokens = tokens;
  plan.slots = config.slots();
  const int64_t copies = tokens * plan.slots;
  plan.demand.assign(E, 0);
  plan.served.assign(E, 0);
  plan.dropped.assign(copies, 0);
  plan.row.assign(copies, -1);

  for (int64_t c = 0; c < copies; ++c)
    if (expert[c] >= 0) ++plan.demand[expert[c]];

  if (fixed_capacity >= 0) {
    plan.capacity = fixed_capacity;
  } else if (config.dropless()) {
    plan.capacity = E > 0 ? *std::max_element(plan.demand.begin(), plan.demand.end()) : 0;
  } else {
    plan.capacity = capacity_for(config.capacity_factor, tokens, config.top_k, E);
  }

  decide_drops(config, expert, gate_rank, plan);
  for (int64_t e = 0; e < E; ++e) plan.served[e] = std::min(plan.demand[e], plan.capacity);

  // An expert never receives more than one copy per token, so padding beyond T rows
  // would only waste memory.
  const int64_t padded_rows = std::min(plan.capacity, tokens);
  plan.offset.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e)
    plan.offset[e + 1] = plan.offset[e] + (config.pad_to_capacity ? padded_rows : plan.served[e]);
  plan.rows = plan.offset[E];
  plan.token_of_row.assign(plan.rows, -1);

  std::vector<int64_t> fill(plan.offset.begin(), plan.offset.end() - 1);
  for (int64_t c = 0; c < copies; ++c) {
    const int32_t e = expert[c];
    if (e < 0 || plan.dropped[c]) continue;
    const int64_t r = fill[e]++;
    plan.row[c] = r;
    plan.token_of_row[r] = c / plan.slots;
  }
  return plan;
}

}  // namespace moe
