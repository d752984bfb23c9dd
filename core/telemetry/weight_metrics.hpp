// Weight metrics (docs/metrics.md, weights), on request: how orthogonal the router's expert
// directions are, and how similar the experts' first matrices are.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/moe.h"

namespace moe {

// router: [d, E] row-major (empty for the hash router); w1: [E, d*F].
moe_weight_metrics_t weight_metrics(const std::vector<double>& router, int64_t d, int64_t E,
                                    const std::vector<double>& w1);

}  // namespace moe
