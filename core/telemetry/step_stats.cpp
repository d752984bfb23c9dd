#include "core/telemetry/step_stats.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/config.hpp"
#include "core/plan.hpp"
#include "core/router.hpp"

namespace moe {

StepStats::StepStats(int64_t num_experts, bool with_coactivation)
    : experts(num_experts),
      demand(num_experts, 0),
      served(num_experts, 0),
      coactivation(
          with_coactivation && keeps_coactivation(num_experts) ? num_experts * num_experts : 0, 0),
      importance(num_experts, 0.0) {}

void StepStats::add(const StepStats& o) {
  steps += o.steps;
  tokens += o.tokens;
  valid_tokens += o.valid_tokens;
  nominal_copies += o.nominal_copies;
  nonfinite_rows += o.nonfinite_rows;
  tokens_fully_dropped += o.tokens_fully_dropped;
  capacity_sum += o.capacity_sum;
  for (size_t e = 0; e < demand.size(); ++e) {
    demand[e] += o.demand[e];
    served[e] += o.served[e];
    importance[e] += o.importance[e];
  }
  for (size_t i = 0; i < coactivation.size(); ++i) coactivation[i] += o.coactivation[i];
  entropy_sum += o.entropy_sum;
  top1_sum += o.top1_sum;
  topk_mass_sum += o.topk_mass_sum;
  margin_sum += o.margin_sum;
  logit_max_abs = std::max(logit_max_abs, o.logit_max_abs);
  aux_weighted += o.aux_weighted;
  z_weighted += o.z_weighted;
  seq_pairs += o.seq_pairs;
  seq_same_top1 += o.seq_same_top1;
  seq_overlap_sum += o.seq_overlap_sum;
  seq_cosine_sum += o.seq_cosine_sum;
  if (o.rank_load.empty()) return;
  if (rank_load.size() != o.rank_load.size()) {
    rank_load = o.rank_load;
    rank_steps = o.rank_steps;
    return;
  }
  for (size_t r = 0; r < rank_load.size(); ++r) rank_load[r] += o.rank_load[r];
  rank_steps += o.rank_steps;
}

namespace {

// One visitor over every field, so that packing and unpacking cannot drift apart.
template <typename Stats, typename Visit>
void visit_fields(Stats& s, Visit&& visit) {
  visit(s.steps);
  visit(s.tokens);
  visit(s.valid_tokens);
  visit(s.nominal_copies);
  visit(s.nonfinite_rows);
  visit(s.tokens_fully_dropped);
  visit(s.capacity_sum);
  for (auto& v : s.demand) visit(v);
  for (auto& v : s.served) visit(v);
  for (auto& v : s.coactivation) visit(v);
  for (auto& v : s.importance) visit(v);
  visit(s.entropy_sum);
  visit(s.top1_sum);
  visit(s.topk_mass_sum);
  visit(s.margin_sum);
  visit(s.logit_max_abs);
  visit(s.aux_weighted);
  visit(s.z_weighted);
  visit(s.seq_pairs);
  visit(s.seq_same_top1);
  visit(s.seq_overlap_sum);
  visit(s.seq_cosine_sum);
}

}  // namespace

std::vector<double> StepStats::to_values() const {
  std::vector<double> values;
  visit_fields(*this, [&](auto v) { values.push_back(static_cast<double>(v)); });
  return values;
}

StepStats StepStats::from_values(int64_t num_experts, const double* values) {
  StepStats s(num_experts);
  size_t i = 0;
  visit_fields(
      s, [&](auto& v) { v = static_cast<std::remove_reference_t<decltype(v)>>(values[i++]); });
  return s;
}

StepStats count_step_stats(const LayerConfig& config, const Routing& r, const Plan& plan) {
  StepStats s(config.num_experts);
  s.steps = 1;
  // Masked tokens (padding) are in no metric: they are not counted as tokens at all.
  s.tokens = r.tokens - r.masked_rows;
  s.valid_tokens = r.valid_tokens;
  s.nominal_copies = s.tokens * config.top_k;
  s.nonfinite_rows = r.nonfinite_rows;
  s.capacity_sum = plan.capacity;
  s.demand = plan.demand;
  s.served = plan.served;
  s.aux_weighted = r.aux_loss * static_cast<double>(r.valid_tokens);
  s.z_weighted = r.z_loss * static_cast<double>(r.valid_tokens);
  return s;
}

StepStats collect_step_stats(const LayerConfig& config, const Routing& r, const Plan& plan,
                             int64_t seq_len) {
  const int64_t E = config.num_experts, T = r.tokens, slots = r.slots;
  const bool expert_choice = config.router == MOE_ROUTER_EXPERT_CHOICE;
  StepStats s = count_step_stats(config, r, plan);

  for (int64_t t = 0; t < T; ++t) {
    if (r.nonfinite[t]) continue;
    const double* p = &r.prob[t * E];
    double entropy = 0, first = -1, second = -1, mass = 0;
    for (int64_t e = 0; e < E; ++e) {
      if (p[e] > 0) entropy -= p[e] * std::log(p[e]);
      s.importance[e] += p[e];
      if (p[e] > first) {
        second = first;
        first = p[e];
      } else if (p[e] > second) {
        second = p[e];
      }
    }
    s.entropy_sum += entropy;
    s.top1_sum += first;
    s.margin_sum += E > 1 ? first - second : first;
    const int32_t* chosen = &r.expert[t * slots];
    int64_t picked = 0, dropped = 0;
    for (int64_t i = 0; i < slots; ++i) {
      if (chosen[i] < 0) continue;
      ++picked;
      dropped += plan.dropped[t * slots + i];
      mass += p[chosen[i]];
      if (s.coactivation.empty()) continue;
      for (int64_t j = 0; j < slots; ++j)
        if (chosen[j] >= 0) ++s.coactivation[chosen[i] * E + chosen[j]];
    }
    s.topk_mass_sum += mass;
    if (picked > 0 && dropped == picked) ++s.tokens_fully_dropped;
    if (!r.logits.empty())
      for (int64_t e = 0; e < E; ++e)
        s.logit_max_abs = std::max(s.logit_max_abs, std::abs(r.logits[t * E + e]));
  }

  if (seq_len > 0) {
    for (int64_t t = 0; t + 1 < T; ++t) {
      if ((t + 1) % seq_len == 0 || r.nonfinite[t] || r.nonfinite[t + 1]) continue;
      ++s.seq_pairs;
      s.seq_same_top1 +=
          first_choice(&r.expert[t * slots], &r.gate[t * slots], slots, expert_choice) ==
          first_choice(&r.expert[(t + 1) * slots], &r.gate[(t + 1) * slots], slots, expert_choice);
      int64_t shared = 0;
      for (int64_t i = 0; i < slots; ++i)
        for (int64_t j = 0; j < slots; ++j)
          shared += r.expert[t * slots + i] >= 0 &&
                    r.expert[t * slots + i] == r.expert[(t + 1) * slots + j];
      s.seq_overlap_sum += static_cast<double>(shared) / static_cast<double>(config.top_k);
      double dot = 0, na = 0, nb = 0;
      for (int64_t e = 0; e < E; ++e) {
        const double a = r.prob[t * E + e], b = r.prob[(t + 1) * E + e];
        dot += a * b;
        na += a * a;
        nb += b * b;
      }
      s.seq_cosine_sum += na > 0 && nb > 0 ? dot / std::sqrt(na * nb) : 0.0;
    }
  }
  return s;
}

}  // namespace moe
