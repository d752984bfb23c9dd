#include "dist/batch_stats.hpp"

namespace moe::dist {

StepStats batch_step_stats(ExpertParallel& ep, const StepStats& local, double aux_loss,
                           double z_loss, int64_t copies_computed) {
  std::vector<double> mine = local.to_values();
  mine.push_back(static_cast<double>(copies_computed));  // exact below 2^53 copies
  const std::vector<double> all = ep.all_gather(mine);
  StepStats batch(local.experts);
  batch.rank_load.resize(ep.world());
  batch.rank_steps = 1;
  for (int q = 0; q < ep.world(); ++q) {
    const double* values = &all[q * mine.size()];
    batch.add(StepStats::from_values(local.experts, values));
    batch.rank_load[q] = static_cast<int64_t>(values[mine.size() - 1]);
  }
  // One call of the batch, whose capacity and losses every rank already shares.
  batch.steps = 1;
  batch.capacity_sum = local.capacity_sum;
  batch.aux_weighted = aux_loss * static_cast<double>(batch.valid_tokens);
  batch.z_weighted = z_loss * static_cast<double>(batch.valid_tokens);
  return batch;
}

}  // namespace moe::dist
