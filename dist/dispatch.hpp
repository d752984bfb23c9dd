// The expert-parallel dispatch decision of one forward call: the group's counts are
// gathered so that every rank derives the batch's capacity, drops and losses exactly
// as a single process would for the ranks' tokens concatenated in rank order. Then
// each rank knows, without further messages, how many rows it sends to and receives
// from every peer and where each received row goes.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "core/config.hpp"
#include "core/plan.hpp"
#include "core/router.hpp"
#include "dist/expert_parallel.hpp"
#include "dist/token_routes.hpp"

namespace moe::dist {

struct Dispatch {
  LayerConfig local_config;           // num_experts: this rank's experts
  Plan local;                         // see make_dispatch
  std::vector<int64_t> send_rows;     // [world] rows this rank sends to each peer
  std::vector<int64_t> recv_rows;     // [world] rows each peer sends to this rank
  std::vector<int64_t> batch_demand;  // [E] the group's pre-drop demand
  int64_t batch_tokens = 0;           // the group's tokens
  int64_t forward_call = 0;           // the group's number for this forward (check_in.hpp)
  int64_t capacity = 0;               // the batch's C
  int64_t placement_epoch = 0;        // the placement it was made for
  // The token path (ExpertParallel::token_path): [world * E] the copies each rank keeps
  // of each expert, and the routes route_tokens derives from them.
  std::vector<int64_t> kept_by_rank;
  std::optional<TokenRoutes> routes;
};

// Collective. Gathers the group's routing counts, makes `routing`'s losses the batch's,
// decides drops over the batch and returns the exchange layout. `send_plan` groups
// this rank's kept copies by owner rank, then expert, then token (the send order).
// The returned `local` plan groups the received rows by local expert, each expert's
// rows in batch order; its token_of_row is the row in the receive buffer (packed by
// sender rank), and its row[i] the expert-ordered row of received row i.
// On the token path (ep.token_path()), `local`, the row counts and the traffic's copy
// counts are left to route_tokens.
Dispatch make_dispatch(ExpertParallel& ep, const LayerConfig& config, int64_t forward_call,
                       Routing& routing, Plan& send_plan);

}  // namespace moe::dist
