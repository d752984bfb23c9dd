// The load-balancing (aux) loss, E * sum_e f_e * Pbar_e, over its three scopes
// (docs/routing.md): the batch (Switch), each sequence averaged over the batch's
// sequences (DeepSeek-V3's complementary sequence-wise loss), and the global batch, whose
// f_e comes from counts accumulated over micro-batches and data-parallel ranks (Qwen3).
// f_e is a fraction of the copies counted, Pbar_e a mean of P over the scope's valid
// tokens; f carries no gradient, so backward needs only the constant d(aux)/dP of each
// token's scope (Routing::aux_weight).
#pragma once

#include <cstdint>
#include <vector>

#include "core/config.hpp"
#include "core/router.hpp"

namespace moe {

// What the batch losses sum: this call's, or a whole expert-parallel group's.
struct BatchSums {
  std::vector<int64_t> aux_demand;  // [E] copies the aux loss counts
  std::vector<double> prob_sum;     // [E] P summed over valid tokens
  double lse_sq_sum = 0.0;
  int64_t valid_tokens = 0;
  double sequence_aux_sum = 0.0;  // sequence scope: the sum of the sequences' losses
  int64_t sequences = 0;          // sequence scope: sequences holding a valid token

  void add(const BatchSums& other);
};

// aux_loss_unbiased_topk: each valid token's top-k of P (ties to the lower id), the
// copies the aux loss counts, into routing.aux_expert.
void select_unbiased_topk(const LayerConfig& config, Routing& routing);

// Sums this call's P, lse^2 and, in the sequence scope, each sequence's loss and
// aux_weight (in units of 1/sequences: set_batch_losses divides once the batch's count
// is known) into `routing`; returns sums_of it.
BatchSums local_sums(const LayerConfig& config, int64_t seq_len, Routing& routing);

// The sums a routing already holds (a device backend's, read back).
BatchSums sums_of(const LayerConfig& config, const Routing& routing);

// aux_loss, z_loss and their gradient's scale from the batch's sums (the batch and
// global scopes read f from the batch's counts here; the layer may then call
// set_global_counts with the accumulated ones).
void set_batch_losses(const LayerConfig& config, const BatchSums& batch, Routing& routing);

// The global scope: f from `counts` [E] (accumulated over calls and replicas), Pbar
// from the batch.
void set_global_counts(const LayerConfig& config, const std::vector<double>& counts,
                       Routing& routing);

}  // namespace moe
