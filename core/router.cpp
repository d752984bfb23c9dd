#include "core/router.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "core/activation.hpp"
#include "core/aux_loss.hpp"
#include "core/bfloat16.hpp"
#include "core/error.hpp"
#include "core/parallel_threshold.hpp"
#include "core/plan.hpp"
#include "core/random.hpp"

namespace moe {
namespace {

double selection_noise(const LayerConfig& config, double std_dev, int64_t step, int64_t token,
                       int64_t expert) {
  if (std_dev <= 0.0) return 0.0;
  const double draw = config.noise_type == MOE_NOISE_GUMBEL
                          ? standard_gumbel(config.seed, step, token, expert)
                          : standard_normal(config.seed, step, token, expert);
  return std_dev * draw;
}

// Indices of the k largest keys, largest first. Equal keys go to the larger score (the
// sigmoid router's keys saturate: sigmoid is exactly 1 above about 37 and 0 below about
// -745), then to the lower index.
void top_k_indices(const double* key, const double* score, int64_t n, int64_t k, int32_t* out) {
  for (int64_t j = 0; j < k; ++j) {
    int64_t best = -1;
    for (int64_t e = 0; e < n; ++e) {
      if (std::find(out, out + j, static_cast<int32_t>(e)) != out + j) continue;
      if (best < 0 || key[e] > key[best] || (key[e] == key[best] && score[e] > score[best]))
        best = e;
    }
    out[j] = static_cast<int32_t>(best);
  }
}

void softmax_row(const double* u, int64_t n, double* p) {
  const double m = *std::max_element(u, u + n);
  double sum = 0.0;
  for (int64_t e = 0; e < n; ++e) sum += (p[e] = std::exp(u[e] - m));
  for (int64_t e = 0; e < n; ++e) p[e] /= sum;
}

// out[i] = sigmoid(u[i]) / sum_j sigmoid(u[j]), as a softmax of log sigmoid: the plain
// ratio is 0/0 when every score is below about -745.
void normalized_sigmoids(const double* u, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = log_sigmoid(u[i]);
  softmax_row(out, n, out);
}

// Renormalised gates over n chosen experts from their scores: g_j = a_j / sum_i a_i,
// computed as a softmax of the scores (of log sigmoid for the sigmoid router), which
// stays finite where every a_i underflows to 0.
void renormalized_gates(bool sigmoid_router, const double* scores, int64_t n, double* gates) {
  if (sigmoid_router)
    normalized_sigmoids(scores, n, gates);
  else
    softmax_row(scores, n, gates);
}

// Gates 1/k on a hash-routed token's experts, and P's mass with them.
void set_hash_gates(int64_t E, int64_t k, int64_t t, Routing& r) {
  for (int64_t j = 0; j < k; ++j) {
    r.gate[t * k + j] = 1.0 / static_cast<double>(k);
    r.prob[t * E + r.expert[t * k + j]] = 1.0 / static_cast<double>(k);
  }
}

// Balanced hashing, the way BASE layers balance by score: the call's finite tokens in
// order of their key (the mixed id, else the row's hash; ties by index) are cut into E
// runs of equal length (within one), run q going to expert q + offset and each further
// slot j to the next expert, q + offset + j, all mod E. Every slot's per-expert counts
// are then within 1 of each other; equal keys are neighbours, so a repeated token
// stays with one expert unless a run ends among its copies. The offset, the smallest
// key mod E, makes a call of few tokens start at a hashed expert, not always at 0.
template <typename S>
void route_hash_balanced(const LayerConfig& config, const S* x, const int64_t* token_ids,
                         Routing& r) {
  const int64_t E = config.num_experts, k = config.top_k, d = config.d_model;
  std::vector<std::pair<uint64_t, int64_t>> order;  // (key, token)
  order.reserve(static_cast<size_t>(r.tokens));
  for (int64_t t = 0; t < r.tokens; ++t) {
    if (r.nonfinite[t]) continue;
    const uint64_t key = token_ids ? mix64(static_cast<uint64_t>(token_ids[t]))
                                   : hash_bytes(x + t * d, sizeof(S) * d);
    order.emplace_back(key, t);
  }
  std::sort(order.begin(), order.end());
  const auto n = static_cast<int64_t>(order.size());
  if (n == 0) return;
  const int64_t offset = static_cast<int64_t>(order[0].first % static_cast<uint64_t>(E));
  for (int64_t rank = 0; rank < n; ++rank) {
    const int64_t t = order[rank].second;
    const int64_t run = rank * E / n;  // < E; rank * E fits: tokens and experts are bounded
    for (int64_t j = 0; j < k; ++j)
      r.expert[t * k + j] = static_cast<int32_t>((run + offset + j) % E);
    set_hash_gates(E, k, t, r);
  }
}

template <typename S>
void route_hash(const LayerConfig& config, const RouterState& state, const S* x,
                const int64_t* token_ids, Routing& r) {
  const int64_t E = config.num_experts, k = config.top_k, d = config.d_model;
  moe_hash_mode_t mode = config.hash_mode;
  if (mode == MOE_HASH_AUTO) {
    mode = token_ids == nullptr                               ? MOE_HASH_CONTENT
           : (state.hash_table && !state.hash_table->empty()) ? MOE_HASH_TABLE
                                                              : MOE_HASH_MIX;
  }
  require(mode == MOE_HASH_CONTENT || mode == MOE_HASH_BALANCED || token_ids != nullptr,
          MOE_STATUS_INVALID_ARGUMENT, "the hash router in mode mix/table needs token_ids");
  for (int64_t t = 0; t < r.tokens; ++t) {
    const S* row = x + t * d;
    if (r.nonfinite[t] != kMasked &&
        !std::all_of(row, row + d, [](S v) { return std::isfinite(static_cast<double>(v)); }))
      r.nonfinite[t] = 1;
  }
  if (mode == MOE_HASH_BALANCED) {
    route_hash_balanced(config, x, token_ids, r);
    return;
  }
  for (int64_t t = 0; t < r.tokens; ++t) {
    if (r.nonfinite[t]) continue;
    const S* row = x + t * d;
    int32_t* chosen = &r.expert[t * k];
    const bool in_table = mode == MOE_HASH_TABLE && state.hash_table &&
                          !state.hash_table->empty() && token_ids[t] >= 0 &&
                          token_ids[t] < state.hash_table->vocab_size;
    if (in_table) {
      std::copy_n(&state.hash_table->experts[token_ids[t] * k], k, chosen);
    } else if (mode == MOE_HASH_CONTENT) {
      hash_experts(hash_bytes(row, sizeof(S) * d), E, k, chosen);
    } else {
      hash_experts(static_cast<uint64_t>(token_ids[t]), E, k, chosen);
    }
    set_hash_gates(E, k, t, r);
  }
}

void count_excluded(Routing& r) {
  r.nonfinite_rows = std::count(r.nonfinite.begin(), r.nonfinite.end(), 1);
  r.masked_rows = std::count(r.nonfinite.begin(), r.nonfinite.end(), kMasked);
  r.valid_tokens = r.tokens - r.nonfinite_rows - r.masked_rows;
}

// Scores of the learned routers; marks rows with non-finite logits (masked rows are
// left as they are: padding may hold anything).
void score_rows(const LayerConfig& config, Routing& r, std::vector<double>& u) {
  const int64_t E = config.num_experts;
  u.assign(r.tokens * E, 0.0);
  // Tokens are independent: each thread writes only its tokens' rows.
#pragma omp parallel for schedule(static) if (worth_threads(r.tokens * E))
  for (int64_t t = 0; t < r.tokens; ++t) {
    if (r.nonfinite[t] == kMasked) continue;
    const double* z = &r.logits[t * E];
    if (!std::all_of(z, z + E, [](double v) { return std::isfinite(v); })) {
      r.nonfinite[t] = 1;
      continue;
    }
    const double m = *std::max_element(z, z + E);
    double sum = 0.0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(z[e] - m);
    r.lse[t] = m + std::log(sum);
    for (int64_t e = 0; e < E; ++e) u[t * E + e] = z[e] / r.temperature;
    // Finite logits of a double input can still overflow once divided by a small
    // temperature, or once squared by the z-loss (past about 1e154); such a row has no
    // scores, and is counted as non-finite.
    if (!std::isfinite(r.lse[t] * r.lse[t]) ||
        !std::all_of(&u[t * E], &u[t * E] + E, [](double v) { return std::isfinite(v); })) {
      r.lse[t] = 0.0;
      r.nonfinite[t] = 1;
      continue;
    }
    double* p = &r.prob[t * E];
    if (config.router == MOE_ROUTER_SIGMOID) {
      for (int64_t e = 0; e < E; ++e) r.sigmoid[t * E + e] = sigmoid(u[t * E + e]);
      normalized_sigmoids(&u[t * E], E, p);
    } else {
      softmax_row(&u[t * E], E, p);
    }
  }
}

// DeepSeek-V3's group-limited routing: the experts form n_group groups of consecutive
// ids; a group's score is the sum of its two best selection keys (its one key when it
// has one expert), the token keeps its topk_group best groups (ties to the lower
// group), and the experts of the other groups leave the race (key -inf).
void keep_best_groups(const LayerConfig& config, double* key, std::vector<double>& group_score,
                      std::vector<int32_t>& kept) {
  const int64_t groups = config.n_group, size = config.num_experts / groups;
  for (int64_t g = 0; g < groups; ++g) {
    const double* s = key + g * size;
    const int64_t best = std::max_element(s, s + size) - s;
    double second = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < size; ++i)
      if (i != best) second = std::max(second, s[i]);
    group_score[g] = size > 1 ? s[best] + second : s[best];
  }
  top_k_indices(group_score.data(), group_score.data(), groups, config.topk_group, kept.data());
  for (int64_t g = 0; g < groups; ++g) {
    if (std::find(kept.begin(), kept.end(), static_cast<int32_t>(g)) != kept.end()) continue;
    std::fill(key + g * size, key + (g + 1) * size, -std::numeric_limits<double>::infinity());
  }
}

void select_token_choice(const LayerConfig& config, const RouterState& state,
                         const std::vector<double>& u, double noise_std, Routing& r) {
  const int64_t E = config.num_experts, k = config.top_k;
  const bool sigmoid_router = config.router == MOE_ROUTER_SIGMOID;
#pragma omp parallel if (worth_threads(r.tokens * E * k))
  {
    std::vector<double> key(E), noisy(E), chosen_scores(k);
    std::vector<double> group_score(config.n_group);
    std::vector<int32_t> kept_groups(config.topk_group);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < r.tokens; ++t) {
      if (r.nonfinite[t]) continue;
      for (int64_t e = 0; e < E; ++e) {
        noisy[e] = u[t * E + e] +
                   selection_noise(config, noise_std, state.step, state.token_offset + t, e);
        key[e] = (sigmoid_router ? sigmoid(noisy[e]) : noisy[e]) + (*state.selection_bias)[e];
      }
      // Groups are scored on the selection keys: for the sigmoid router sigmoid plus
      // bias (DeepSeek-V3's scores_for_choice), for the softmax router its scores plus
      // bias (Megatron-Core's grouped top-k on logits).
      if (config.group_limited()) keep_best_groups(config, key.data(), group_score, kept_groups);
      int32_t* chosen = &r.expert[t * k];
      double* gate = &r.gate[t * k];
      top_k_indices(key.data(), noisy.data(), E, k, chosen);
      if (!config.renormalize) {
        const std::vector<double>& base = sigmoid_router ? r.sigmoid : r.prob;
        for (int64_t j = 0; j < k; ++j) gate[j] = base[t * E + chosen[j]];
      } else {
        for (int64_t j = 0; j < k; ++j) chosen_scores[j] = u[t * E + chosen[j]];
        renormalized_gates(sigmoid_router, chosen_scores.data(), k, gate);
      }
    }
  }
}

void select_expert_choice(const LayerConfig& config, const RouterState& state,
                          const std::vector<double>& u, double noise_std, Routing& r) {
  const int64_t E = config.num_experts, T = r.tokens;
  const double factor = config.capacity_factor > 0.0 ? config.capacity_factor : 1.0;
  const int64_t C = std::min(r.valid_tokens, capacity_for(factor, T, config.top_k, E));
  r.fixed_capacity = C;

  // Selection keys: P itself, or the softmax of noisy scores in noisy training calls.
  std::vector<double> key = r.prob;
  if (noise_std > 0.0) {
    std::vector<double> noisy(E);
    for (int64_t t = 0; t < T; ++t) {
      if (r.nonfinite[t]) continue;
      for (int64_t e = 0; e < E; ++e)
        noisy[e] = u[t * E + e] +
                   selection_noise(config, noise_std, state.step, state.token_offset + t, e);
      softmax_row(noisy.data(), E, &key[t * E]);
    }
  }
  std::vector<int64_t> candidates;
  for (int64_t t = 0; t < T; ++t)
    if (!r.nonfinite[t]) candidates.push_back(t);
  for (int64_t e = 0; e < E; ++e) {
    std::vector<int64_t> order = candidates;
    std::partial_sort(order.begin(), order.begin() + C, order.end(), [&](int64_t a, int64_t b) {
      const double ka = key[a * E + e], kb = key[b * E + e];
      return ka != kb ? ka > kb : a < b;
    });
    for (int64_t i = 0; i < C; ++i) {
      const int64_t t = order[i];
      r.expert[t * E + e] = static_cast<int32_t>(e);
      r.gate[t * E + e] = r.prob[t * E + e];
    }
  }
}

// What the capacity order reads: each token's top-1 probability (batch-prioritized),
// or a uniform draw per copy, keyed by the batch token and slot (random).
void set_fill_priority(const LayerConfig& config, const RouterState& state, Routing& r) {
  const int64_t E = config.num_experts, T = r.tokens, k = r.slots;
  if (config.capacity_order == MOE_CAPACITY_BATCH_PRIORITIZED) {
    r.fill_priority.assign(T, 0.0);
    for (int64_t t = 0; t < T; ++t)
      if (!r.nonfinite[t])
        r.fill_priority[t] = *std::max_element(&r.prob[t * E], &r.prob[t * E] + E);
  } else if (config.capacity_order == MOE_CAPACITY_RANDOM) {
    r.fill_priority.assign(T * k, 0.0);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < k; ++j)
        r.fill_priority[t * k + j] =
            uniform_open(draw_bits(config.seed, state.step, state.token_offset + t, j, 4));
  }
}

void compute_losses(const LayerConfig& config, const RouterState& state, Routing& r) {
  if (config.aux_loss_unbiased_topk) select_unbiased_topk(config, r);
  set_batch_losses(config, local_sums(config, state.seq_len, r), r);
}

}  // namespace

template <typename S>
Routing route(const LayerConfig& config, const RouterState& state, const S* x, const S* logits,
              const int64_t* token_ids, int64_t tokens) {
  const int64_t E = config.num_experts;
  Routing r;
  r.tokens = tokens;
  r.slots = config.slots();
  r.experts = E;
  r.temperature = config.temperature(state.step);
  r.expert.assign(tokens * r.slots, -1);
  r.gate.assign(tokens * r.slots, 0.0);
  r.prob.assign(tokens * E, 0.0);
  r.lse.assign(tokens, 0.0);
  r.nonfinite.assign(tokens, 0);
  if (state.token_mask)
    for (int64_t t = 0; t < tokens; ++t)
      if (state.token_mask[t] == 0) r.nonfinite[t] = kMasked;

  if (config.router == MOE_ROUTER_HASH) {
    route_hash(config, state, x, token_ids, r);
  } else {
    r.logits.assign(logits, logits + tokens * E);
    if (config.router == MOE_ROUTER_SIGMOID) r.sigmoid.assign(tokens * E, 0.0);
    std::vector<double> u;
    score_rows(config, r, u);
    count_excluded(r);
    const double noise_std = state.train ? config.noise_std(state.step) : 0.0;
    if (config.router == MOE_ROUTER_EXPERT_CHOICE) {
      select_expert_choice(config, state, u, noise_std, r);
    } else {
      select_token_choice(config, state, u, noise_std, r);
    }
  }
  // DeepSeek-V3's routed_scaling_factor: the gates, renormalised or not, times f.
  if (config.routed_scaling_factor != 1.0)
    for (double& g : r.gate) g *= config.routed_scaling_factor;
  count_excluded(r);
  compute_losses(config, state, r);
  set_fill_priority(config, state, r);
  return r;
}

template Routing route<float>(const LayerConfig&, const RouterState&, const float*, const float*,
                              const int64_t*, int64_t);
template Routing route<double>(const LayerConfig&, const RouterState&, const double*, const double*,
                               const int64_t*, int64_t);
template Routing route<bfloat16>(const LayerConfig&, const RouterState&, const bfloat16*,
                                 const bfloat16*, const int64_t*, int64_t);

void route_backward(const LayerConfig& config, const Routing& r, const std::vector<double>& dgate,
                    double aux_loss_grad, double z_loss_grad, std::vector<double>& dlogits) {
  const int64_t E = config.num_experts, slots = r.slots, T = r.tokens;
  dlogits.assign(T * E, 0.0);
  if (!config.learned_router() || r.valid_tokens == 0) return;
  const double inv_valid = 1.0 / static_cast<double>(r.batch_valid_tokens);
  const double tau = r.temperature;
  const bool sigmoid_router = config.router == MOE_ROUTER_SIGMOID;
  const bool token_choice = config.router != MOE_ROUTER_EXPERT_CHOICE;
  const double gate_scale = token_choice ? config.routed_scaling_factor : 1.0;

#pragma omp parallel if (worth_threads(T * E))
  {
    std::vector<double> d_base(E), d_prob(E);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      if (r.nonfinite[t]) continue;
      const double* p = &r.prob[t * E];
      double* dz = &dlogits[t * E];
      // d(loss)/d(gate base): P for softmax and expert choice, sigmoid(u) for sigmoid.
      std::fill(d_base.begin(), d_base.end(), 0.0);
      const int32_t* chosen = &r.expert[t * slots];
      const double* g = &r.gate[t * slots];
      const double* dg = &dgate[t * slots];
      // Held as base * d(loss)/d(base): with g_j = base_j / sum_chosen(base) that is
      // (dg_j - dg.g) g_j, with no division by a sum that can underflow to 0. Gates
      // scaled by f (g = f g0) give (f dg_j - f dg.g0) g0_j = (dg_j - dg.g / f) g_j.
      if (token_choice && config.renormalize) {
        double dg_dot_g = 0.0;
        for (int64_t j = 0; j < slots; ++j) dg_dot_g += dg[j] * g[j];
        dg_dot_g /= gate_scale;
        for (int64_t j = 0; j < slots; ++j) d_base[chosen[j]] += (dg[j] - dg_dot_g) * g[j];
      } else {
        const std::vector<double>& base = sigmoid_router ? r.sigmoid : r.prob;
        for (int64_t j = 0; j < slots; ++j)
          if (chosen[j] >= 0) d_base[chosen[j]] += dg[j] * gate_scale * base[t * E + chosen[j]];
      }
      // The aux loss reaches P: alpha * d(aux)/dP[t,e], constant over t's scope.
      const double* aux_weight = &r.aux_weight[(r.aux_span > 0 ? t / r.aux_span : 0) * E];
      for (int64_t e = 0; e < E; ++e)
        d_prob[e] = aux_loss_grad * config.load_balance_alpha * r.aux_scale * aux_weight[e];
      double dot = 0.0;
      for (int64_t e = 0; e < E; ++e) dot += d_prob[e] * p[e];

      if (sigmoid_router) {
        // ds_e s_e = d_base_e + (d_prob_e - dot) P_e (P_e = s_e / sum(s)), and
        // dsigmoid/du = s (1 - s).
        const double* s = &r.sigmoid[t * E];
        for (int64_t e = 0; e < E; ++e)
          dz[e] = (d_base[e] + (d_prob[e] - dot) * p[e]) * (1.0 - s[e]) / tau;
      } else {
        // With base = P: dz = P (d_prob - P.d_prob) + d_base - P sum(d_base), over tau.
        double base_total = 0.0;
        for (int64_t e = 0; e < E; ++e) base_total += d_base[e];
        for (int64_t e = 0; e < E; ++e)
          dz[e] = (p[e] * (d_prob[e] - dot) + d_base[e] - p[e] * base_total) / tau;
      }
      // z-loss: d(coef * mean_t lse_t^2)/dz = coef * 2 lse_t softmax(z_t) / T_valid.
      if (config.z_loss_coef > 0.0 && z_loss_grad != 0.0) {
        const double scale = z_loss_grad * config.z_loss_coef * 2.0 * r.lse[t] * inv_valid;
        for (int64_t e = 0; e < E; ++e) dz[e] += scale * std::exp(r.logits[t * E + e] - r.lse[t]);
      }
    }
  }
}

void renormalize_kept_gates(const LayerConfig& config, const std::vector<uint8_t>& dropped,
                            Routing& r) {
  const int64_t E = config.num_experts, k = r.slots;
  const bool sigmoid_router = config.router == MOE_ROUTER_SIGMOID;
  std::vector<double> kept_scores, kept_gates;
  for (int64_t t = 0; t < r.tokens; ++t) {
    if (r.nonfinite[t]) continue;
    const int32_t* chosen = &r.expert[t * k];
    const uint8_t* drop = &dropped[t * k];
    if (std::none_of(drop, drop + k, [](uint8_t v) { return v != 0; })) continue;
    kept_scores.clear();
    for (int64_t j = 0; j < k; ++j)
      if (!drop[j]) kept_scores.push_back(r.logits[t * E + chosen[j]] / r.temperature);
    kept_gates.resize(kept_scores.size());
    if (!kept_scores.empty())
      renormalized_gates(sigmoid_router, kept_scores.data(),
                         static_cast<int64_t>(kept_scores.size()), kept_gates.data());
    size_t next = 0;
    for (int64_t j = 0; j < k; ++j)
      r.gate[t * k + j] = drop[j] ? 0.0 : kept_gates[next++] * config.routed_scaling_factor;
  }
}

void update_selection_bias(const LayerConfig& config, const std::vector<int64_t>& demand,
                           std::vector<double>& bias) {
  if (config.bias_update_rate <= 0.0 || !config.learned_router()) return;
  const int64_t E = config.num_experts;
  const double mean =
      static_cast<double>(std::accumulate(demand.begin(), demand.end(), int64_t{0})) /
      static_cast<double>(E);
  for (int64_t e = 0; e < E; ++e) {
    const double gap = mean - static_cast<double>(demand[e]);
    bias[e] += config.bias_update_rate * static_cast<double>((gap > 0) - (gap < 0));
  }
}

}  // namespace moe
