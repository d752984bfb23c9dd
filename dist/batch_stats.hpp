// Global telemetry under expert parallelism: every rank's routing statistics summed
// over the group (in rank order), so that every rank derives the same metrics, the
// ones a single process would report for the whole batch.
#pragma once

#include "core/telemetry/step_stats.hpp"
#include "dist/expert_parallel.hpp"

namespace moe::dist {

// Collective. `local` was collected against the batch's capacity and losses;
// `copies_computed` is the expert copies this rank's experts ran, which the result's
// rank_load holds for every rank.
StepStats batch_step_stats(ExpertParallel& ep, const StepStats& local, double aux_loss,
                           double z_loss, int64_t copies_computed);

}  // namespace moe::dist
