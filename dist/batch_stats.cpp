#include "dist/batch_stats.hpp"

namespace moe::dist {

StepStats batch_step_stats(ExpertParallel& ep, const StepStats& local, double aux_loss,
                           double z_loss) {
  const std::vector<double> mine = local.to_values();
  const std::vector<double> all = ep.all_gather(mine);
  StepStats batch(local.experts);
  for (int q = 0; q < ep.world(); ++q)
    batch.add(StepStats::from_values(local.experts, &all[q * mine.size()]));
  // One call of the batch, whose capacity and losses every rank already shares.
  batch.steps = 1;
  batch.capacity_sum = local.capacity_sum;
  batch.aux_weighted = aux_loss * static_cast<double>(batch.valid_tokens);
  batch.z_weighted = z_loss * static_cast<double>(batch.valid_tokens);
  return batch;
}

}  // namespace moe::dist
