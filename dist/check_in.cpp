#include "dist/check_in.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status_name.hpp"

namespace moe::dist {

namespace {

// Every check-in's first exchange has one size, whichever call makes it, so that ranks
// in different calls (one in forward, another in backward or in a placement change)
// meet in the same exchange and learn it, instead of breaking the transport with
// mismatched byte counts. Up to kInline fields travel in it; longer lists follow in a
// second exchange once every rank is known to be in the same call with as many fields.
constexpr size_t kInline = 8;
constexpr size_t kHeader = 3;  // status, the call's code, the field count

// The collective calls that check in, named by code in the out-of-step message.
const char* const kCalls[] = {"forward",
                              "backward",
                              "moe_layer_set_comm",
                              "moe_layer_set_ep_options",
                              "moe_layer_move_expert_tensor",
                              "moe_layer_set_placement"};

// FNV-1a, 32 bits: exact in a double.
double code_of(const char* call) {
  uint32_t h = 2166136261u;
  for (const char* c = call; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 16777619u;
  return static_cast<double>(h);
}

std::string name_of(double code) {
  for (const char* call : kCalls)
    if (code_of(call) == code) return call;
  return "another collective call";
}

}  // namespace

std::vector<double> check_in(ExpertParallel& ep, const char* call, const Error* refusal,
                             std::vector<double> fields) {
  const double status = refusal ? static_cast<double>(refusal->status()) : 0.0;
  const size_t n = fields.size() + 1, W = static_cast<size_t>(ep.world());
  std::vector<double> header(kHeader + kInline, 0.0);
  header[0] = status;
  header[1] = code_of(call);
  header[2] = static_cast<double>(fields.size());
  if (fields.size() <= kInline) std::copy(fields.begin(), fields.end(), header.begin() + kHeader);
  const std::vector<double> first = ep.all_gather(header);
  const size_t width = header.size();
  for (size_t q = 0; q < W; ++q)
    require(first[q * width + 1] == header[1], MOE_STATUS_INVALID_STATE,
            "the expert-parallel group is out of step: rank " + std::to_string(q) + " is in " +
                name_of(first[q * width + 1]) + " while rank " + std::to_string(ep.rank()) +
                " is in " + call +
                " (every rank must make the same collective calls in the same order); nothing "
                "changed");
  if (refusal)
    throw Error(refusal->status(), std::string(refusal->what()) + " (so " + call +
                                       " was abandoned on every rank of the group)");
  for (size_t q = 0; q < W; ++q) {
    const auto s = static_cast<moe_status_t>(static_cast<int>(first[q * width]));
    if (s != MOE_STATUS_SUCCESS)
      throw Error(s, "rank " + std::to_string(q) + " refused its arguments (" + status_name(s) +
                         "), so " + call +
                         " was abandoned on every rank of the group; nothing changed");
  }
  for (size_t q = 0; q < W; ++q)
    require(first[q * width + 2] == header[2], MOE_STATUS_INVALID_ARGUMENT,
            std::string(call) + ": rank " + std::to_string(q) + " passed " +
                std::to_string(static_cast<int64_t>(first[q * width + 2])) +
                " values to agree on, rank " + std::to_string(ep.rank()) + " " +
                std::to_string(fields.size()) +
                " (every rank must pass the same); nothing changed");
  std::vector<double> all(W * n);
  if (fields.size() <= kInline) {
    for (size_t q = 0; q < W; ++q) {
      all[q * n] = first[q * width];
      std::copy_n(&first[q * width + kHeader], fields.size(), &all[q * n + 1]);
    }
  } else {
    fields.insert(fields.begin(), status);
    all = ep.all_gather(fields);
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
