#include "dist/check_in.hpp"

#include <string>
#include <vector>

#include "core/status_name.hpp"

namespace moe::dist {

std::vector<double> check_in(ExpertParallel& ep, const char* call, const Error* refusal,
                             std::vector<double> fields) {
  fields.insert(fields.begin(), refusal ? static_cast<double>(refusal->status()) : 0.0);
  const size_t n = fields.size();
  std::vector<double> all = ep.all_gather(fields);
  if (refusal)
    throw Error(refusal->status(), std::string(refusal->what()) + " (so " + call +
                                       " was abandoned on every rank of the group)");
  for (int q = 0; q < ep.world(); ++q) {
    const auto status = static_cast<moe_status_t>(static_cast<int>(all[q * n]));
    if (status != MOE_STATUS_SUCCESS)
      throw Error(status, "rank " + std::to_string(q) + " refused its arguments (" +
                              status_name(status) + "), so " + call +
                              " was abandoned on every rank of the group; nothing changed");
  }
  return all;
}

ForwardCheckIn check_in_forward(ExpertParallel& ep, const Error* refusal, int64_t tokens,
                                int64_t step, bool telemetry_due) {
  const std::vector<double> all =
      check_in(ep, "forward", refusal,
               {static_cast<double>(ep.forward_calls), static_cast<double>(step),
                telemetry_due ? 1.0 : 0.0, static_cast<double>(tokens)});
  const size_t n = 5;
  ForwardCheckIn in;
  in.call = ep.forward_calls;
  for (int q = 0; q < ep.world(); ++q) {
    const double* h = &all[q * n + 1];
    require(h[0] == all[1] && h[1] == all[2] && h[2] == all[3], MOE_STATUS_INVALID_STATE,
            "the expert-parallel group is out of step: rank " + std::to_string(q) +
                " is at forward call " + std::to_string(static_cast<int64_t>(h[0])) + ", step " +
                std::to_string(static_cast<int64_t>(h[1])) + ", telemetry " +
                (h[2] != 0 ? "due" : "not due") + "; rank 0 at call " +
                std::to_string(static_cast<int64_t>(all[1])) + ", step " +
                std::to_string(static_cast<int64_t>(all[2])) + ", telemetry " +
                (all[3] != 0 ? "due" : "not due") +
                " (every rank must call forward the same number of times, with the same "
                "telemetry interval)");
    if (q < ep.rank()) in.token_offset += static_cast<int64_t>(h[3]);
  }
  ++ep.forward_calls;
  return in;
}

void check_in_backward(ExpertParallel& ep, const Error* refusal, int64_t forward_call) {
  const std::vector<double> all =
      check_in(ep, "backward", refusal, {static_cast<double>(forward_call)});
  for (int q = 0; q < ep.world(); ++q)
    require(all[q * 2 + 1] == all[1], MOE_STATUS_INVALID_STATE,
            "the expert-parallel group is out of step: rank " + std::to_string(q) +
                " runs backward of forward call " +
                std::to_string(static_cast<int64_t>(all[q * 2 + 1])) + ", rank 0 of call " +
                std::to_string(static_cast<int64_t>(all[1])) +
                " (every rank must run backward of the same forward calls, in the same order)");
}

}  // namespace moe::dist
