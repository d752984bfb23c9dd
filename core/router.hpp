// Stage "router": scores, top-k (or expert-choice) selection, gate values, the aux
// loss and z-loss, and the backward pass from gate gradients to logit gradients.
// Routing quantities are O(T*E) and are kept in double precision whatever the dtype.
#pragma once

#include <cstdint>
#include <vector>

#include "core/config.hpp"
#include "core/hash_router.hpp"

namespace moe {

// The layer state that routing reads.
struct RouterState {
  const std::vector<double>* selection_bias = nullptr;  // [E]
  const HashTable* hash_table = nullptr;
  int64_t step = 0;  // training steps so far (schedules)
  bool train = false;
  // Index of this call's first token in the global batch (expert parallelism), so
  // that selection noise, drawn per (step, token, expert), matches a single process.
  int64_t token_offset = 0;
  // T bytes, 0 = padding (routed nowhere, in no loss or metric); null: no mask.
  const uint8_t* token_mask = nullptr;
  // Tokens per sequence (the sequence-wise aux loss's scope); 0 = unknown.
  int64_t seq_len = 0;
};

constexpr uint8_t kMasked = 2;  // Routing::nonfinite's mark of a masked token

struct Routing {
  int64_t tokens = 0;
  int64_t slots = 0;  // k, or E for expert choice
  int64_t experts = 0;
  double temperature = 1.0;
  std::vector<int32_t> expert;  // [T*slots] chosen expert, -1 none
  std::vector<double> gate;     // [T*slots] gate value (after renormalisation)
  std::vector<double> prob;     // [T*E] P[t,e] as docs/metrics.md defines it
  std::vector<double> sigmoid;  // [T*E] sigmoid(z/tau) (sigmoid router only)
  std::vector<double> logits;   // [T*E] raw logits z (learned routers)
  std::vector<double> lse;      // [T] logsumexp of the raw logits
  // [T] 1: logits (or the row) hold NaN/Inf; kMasked: padding. Either way the token is
  // routed nowhere and takes part in no loss; only the first counts as non-finite.
  std::vector<uint8_t> nonfinite;
  // The aux loss (core/aux_loss.hpp): the copies it counts when they are not `expert`
  // (aux_loss_unbiased_topk: each token's top-k of P) [T*slots], and its gradient
  // d(aux_loss)/dP[t,e] = aux_scale * aux_weight[(t / aux_span) * E + e], constant over
  // each scope of aux_span tokens (the batch, or a sequence).
  std::vector<int32_t> aux_expert;
  int64_t aux_span = 0;
  std::vector<double> aux_weight;
  double aux_scale = 1.0;
  double sequence_aux_sum = 0.0;  // sequence scope: this call's sequences' losses, summed
  int64_t sequences = 0;          // and how many hold a valid token
  // What the capacity order reads (core/plan.hpp): each token's top-1 probability
  // [T] (batch-prioritized), each copy's uniform draw [T*slots] (random), else empty.
  std::vector<double> fill_priority;
  int64_t nonfinite_rows = 0;
  int64_t masked_rows = 0;
  int64_t valid_tokens = 0;  // neither non-finite nor masked
  // The batch the losses average over: these tokens, or under expert parallelism the
  // whole group's (dist/batch_routing.cpp makes them global).
  int64_t batch_valid_tokens = 0;
  std::vector<double> prob_sum;           // [E] sum over valid tokens of P[t,e]
  std::vector<double> batch_prob_sum;     // [E] the same over the batch the losses average
  std::vector<int64_t> batch_aux_demand;  // [E] the copies the aux loss counted there
  double lse_sq_sum = 0.0;                // sum over valid tokens of lse_t^2
  int64_t fixed_capacity = -1;            // C for expert choice, else -1
  double aux_loss = 0.0;
  double z_loss = 0.0;
};

// `logits` is [T,E] for learned routers (null for hash); `x` [T,d] is read by the
// hash router (content mode, and to find non-finite rows); `token_ids` may be null.
template <typename S>
Routing route(const LayerConfig& config, const RouterState& state, const S* x, const S* logits,
              const int64_t* token_ids, int64_t tokens);

// dgate [T*slots] -> dlogits [T*E], including the scaled aux-loss and z-loss terms,
// each times the caller's gradient of its scaled loss (moe_backward_args_t).
void route_backward(const LayerConfig& config, const Routing& routing,
                    const std::vector<double>& dgate, double aux_loss_grad, double z_loss_grad,
                    std::vector<double>& dlogits);

// DeepSpeed's renormalisation after drops: each token's gates over the copies it kept
// (dropped[T*slots]), dropped copies' gates 0, times routed_scaling_factor. The
// backward needs nothing else: a gate of 0 takes no part in the renormalised formula.
void renormalize_kept_gates(const LayerConfig& config, const std::vector<uint8_t>& dropped,
                            Routing& routing);

// Aux-loss-free balancing: nudges each expert's selection bias toward equal load.
void update_selection_bias(const LayerConfig& config, const std::vector<int64_t>& demand,
                           std::vector<double>& bias);

}  // namespace moe
