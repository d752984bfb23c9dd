#include "core/aux_loss.hpp"

#include <algorithm>
#include <numeric>

#include "core/plan.hpp"

namespace moe {
namespace {

const std::vector<int32_t>& counted_copies(const Routing& r) {
  return r.aux_expert.empty() ? r.expert : r.aux_expert;
}

// One scope's loss, E * sum_e f_e * prob_sum_e / valid with f_e = counts_e / sum(counts),
// and its gradient weight[e] = d(loss)/dP[t,e] = E * f_e / valid for the scope's tokens.
double scope_aux(int64_t E, const double* counts, const double* prob_sum, int64_t valid,
                 double* weight) {
  const double total = std::accumulate(counts, counts + E, 0.0);
  std::fill_n(weight, E, 0.0);
  if (valid == 0 || total == 0.0) return 0.0;
  double aux = 0.0;
  for (int64_t e = 0; e < E; ++e) {
    weight[e] = static_cast<double>(E) * (counts[e] / total) / static_cast<double>(valid);
    aux += weight[e] * prob_sum[e];
  }
  return aux;
}

}  // namespace

void BatchSums::add(const BatchSums& other) {
  if (aux_demand.empty()) {
    aux_demand.assign(other.aux_demand.size(), 0);
    prob_sum.assign(other.prob_sum.size(), 0.0);
  }
  for (size_t e = 0; e < aux_demand.size(); ++e) {
    aux_demand[e] += other.aux_demand[e];
    prob_sum[e] += other.prob_sum[e];
  }
  lse_sq_sum += other.lse_sq_sum;
  valid_tokens += other.valid_tokens;
  sequence_aux_sum += other.sequence_aux_sum;
  sequences += other.sequences;
}

void select_unbiased_topk(const LayerConfig& config, Routing& r) {
  const int64_t E = config.num_experts, k = r.slots;
  r.aux_expert.assign(r.tokens * k, -1);
  std::vector<int32_t> ids(E);
  for (int64_t t = 0; t < r.tokens; ++t) {
    if (r.nonfinite[t]) continue;
    const double* p = &r.prob[t * E];
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                      [&](int32_t a, int32_t b) { return p[a] != p[b] ? p[a] > p[b] : a < b; });
    std::copy_n(ids.begin(), k, &r.aux_expert[t * k]);
  }
}

BatchSums local_sums(const LayerConfig& config, int64_t seq_len, Routing& r) {
  const int64_t E = config.num_experts, T = r.tokens, slots = r.slots;
  const std::vector<int32_t>& copies = counted_copies(r);
  r.prob_sum.assign(E, 0.0);
  r.lse_sq_sum = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    if (r.nonfinite[t]) continue;
    for (int64_t e = 0; e < E; ++e) r.prob_sum[e] += r.prob[t * E + e];
    r.lse_sq_sum += r.lse[t] * r.lse[t];
  }
  r.aux_scale = 1.0;
  r.sequence_aux_sum = 0.0;
  r.sequences = 0;
  if (config.aux_loss_scope != MOE_AUX_LOSS_SEQUENCE) {
    r.aux_span = T;
    r.aux_weight.assign(E, 0.0);
    return sums_of(config, r);
  }
  // Sequences of seq_len consecutive tokens (the whole call when the length is unknown).
  r.aux_span = seq_len > 0 ? seq_len : std::max<int64_t>(T, 1);
  const int64_t count = (T + r.aux_span - 1) / r.aux_span;
  r.aux_weight.assign(count * E, 0.0);
  std::vector<double> counts(E), prob_sum(E);
  for (int64_t q = 0; q < count; ++q) {
    std::fill(counts.begin(), counts.end(), 0.0);
    std::fill(prob_sum.begin(), prob_sum.end(), 0.0);
    int64_t valid = 0;
    for (int64_t t = q * r.aux_span; t < std::min(T, (q + 1) * r.aux_span); ++t) {
      if (r.nonfinite[t]) continue;
      ++valid;
      for (int64_t e = 0; e < E; ++e) prob_sum[e] += r.prob[t * E + e];
      for (int64_t j = 0; j < slots; ++j)
        if (copies[t * slots + j] >= 0) counts[copies[t * slots + j]] += 1.0;
    }
    if (valid == 0) continue;  // all padding: not a sequence of the average
    r.sequence_aux_sum += scope_aux(E, counts.data(), prob_sum.data(), valid, &r.aux_weight[q * E]);
    ++r.sequences;
  }
  return sums_of(config, r);
}

BatchSums sums_of(const LayerConfig& config, const Routing& r) {
  BatchSums s;
  s.aux_demand = demand_of(counted_copies(r), config.num_experts);
  s.prob_sum = r.prob_sum;
  s.lse_sq_sum = r.lse_sq_sum;
  s.valid_tokens = r.valid_tokens;
  s.sequence_aux_sum = r.sequence_aux_sum;
  s.sequences = r.sequences;
  return s;
}

void set_batch_losses(const LayerConfig& config, const BatchSums& b, Routing& r) {
  r.batch_valid_tokens = b.valid_tokens;
  r.batch_prob_sum = b.prob_sum;
  r.batch_aux_demand = b.aux_demand;
  r.z_loss = config.learned_router() && b.valid_tokens > 0
                 ? b.lse_sq_sum / static_cast<double>(b.valid_tokens)
                 : 0.0;
  if (config.aux_loss_scope == MOE_AUX_LOSS_SEQUENCE) {
    r.aux_scale = b.sequences > 0 ? 1.0 / static_cast<double>(b.sequences) : 0.0;
    r.aux_loss = b.sequence_aux_sum * r.aux_scale;
    return;
  }
  set_global_counts(config, std::vector<double>(b.aux_demand.begin(), b.aux_demand.end()), r);
}

void set_global_counts(const LayerConfig& config, const std::vector<double>& counts, Routing& r) {
  const int64_t E = config.num_experts;
  r.aux_span = r.tokens;
  r.aux_scale = 1.0;
  r.aux_weight.assign(E, 0.0);
  r.aux_loss = scope_aux(E, counts.data(), r.batch_prob_sum.data(), r.batch_valid_tokens,
                         r.aux_weight.data());
}

}  // namespace moe
