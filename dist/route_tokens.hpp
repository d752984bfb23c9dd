// Completing a token-path dispatch once the gates are final (after renormalisation):
// one message of per-copy metadata (token row, slot, local expert, gate) to each rank,
// from which every holder builds its expert rows in batch order.
#pragma once

#include <cstdint>
#include <vector>

#include "core/config.hpp"
#include "core/router.hpp"
#include "dist/dispatch.hpp"

namespace moe::dist {

// A plan over a holder's expert rows, grouped by local expert in the order given:
// demand[j] rows of expert j, unpadded, one slot each, every row its own "token";
// token_of_row is left for the caller (-1).
Plan expert_rows_plan(const std::vector<int64_t>& demand, int64_t capacity);

// Collective. `dropped` [T*k] are this rank's drop marks. Fills dispatch.routes,
// dispatch.local (the received copies grouped by local expert, batch order within each,
// each row's token_of_row the received token row it reads) and the row counts.
void route_tokens(ExpertParallel& ep, const LayerConfig& config, const Routing& routing,
                  const std::vector<uint8_t>& dropped, Dispatch& dispatch);

}  // namespace moe::dist
