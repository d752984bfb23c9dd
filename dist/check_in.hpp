// Every expert-parallel call opens with a check-in: each rank tells the group whether
// it accepted its arguments and where it stands. So one rank's rejected input fails
// the call on every rank at once, with that rank's status and nothing changed,
// instead of leaving the others in an exchange until the timeout breaks the
// communicator; and ranks out of step are caught before any data moves.
#pragma once

#include <cstdint>
#include <vector>

#include "core/error.hpp"
#include "dist/expert_parallel.hpp"

namespace moe::dist {

// The check-in itself: gathers [status, fields...] from every rank (rank-major), and
// throws on every rank, with the refusing rank's status, when any rank refused.
std::vector<double> check_in(ExpertParallel& ep, const char* call, const Error* refusal,
                             std::vector<double> fields);

struct ForwardCheckIn {
  int64_t call = 0;          // this forward's number in the group
  int64_t token_offset = 0;  // this rank's first token in the batch
};

// `refusal`: this rank's validation error, or null. Throws on every rank when any
// rank refused, or when the ranks disagree on the call, step or telemetry schedule.
ForwardCheckIn check_in_forward(ExpertParallel& ep, const Error* refusal, int64_t tokens,
                                int64_t step, bool telemetry_due);

// `forward_call`: the forward whose saved state this backward consumes.
void check_in_backward(ExpertParallel& ep, const Error* refusal, int64_t forward_call);

}  // namespace moe::dist
