// The token path of expert parallelism: each token travels at most once to each rank
// that holds one of its kept experts, with the list of those experts and gates, and one
// row comes back, the rank's gate-weighted sum of the token's results there. Backward
// mirrors it. It also carries replicated placements: each expert's kept copies, in
// batch order, are split into contiguous blocks over its holders.
#pragma once

#include <cstdint>
#include <vector>

#include "core/plan.hpp"

namespace moe::dist {

struct TokenRoutes {
  // As the source of its tokens. A plan over [tokens, slots = world]: row[t * world + p]
  // is token t's row in the send buffer (packed by rank p), -1 when t sends nothing to
  // p. permute / combine / permute_backward with it scatter rows to the ranks and add
  // the ranks' returned rows in rank order.
  Plan to_ranks;
  std::vector<int64_t> send_rows, recv_rows;   // [world] distinct token rows
  std::vector<int64_t> copies_out, copies_in;  // [world] token copies they carry
  std::vector<int64_t> sent_copy;              // [copies sent] t * k + s, in message order
  // As a holder of experts. A plan over [received rows U, slots = k]: row[u * k + s] is
  // the expert-ordered row of the copy (u, s), -1 when u's slot s is not here.
  Plan copies;
  std::vector<double> gate;            // [U * k] the copies' gates (0 where none)
  std::vector<int64_t> received_copy;  // [copies received] u * k + s, in message order
};

}  // namespace moe::dist
