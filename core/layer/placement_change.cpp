#include "core/layer/placement_change.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "dist/check_in.hpp"
#include "dist/placement.hpp"

namespace moe::dist {
namespace {

ExpertParallel& attached(Layer& layer) {
  require(layer.ep != nullptr, MOE_STATUS_INVALID_STATE,
          "the layer has no communicator (moe_layer_set_comm first)");
  return *layer.ep;
}

// The token path and replicated placements run on the host pipeline only.
void require_host_pipeline(const Layer& layer, const std::string& what) {
  require(layer.backend.device_pipeline() == nullptr, MOE_STATUS_UNSUPPORTED,
          std::string("backend ") + layer.backend.name() + " does not run " + what +
              " yet (the host backends do)");
}

// Checks in with `values` and refuses on every rank unless every rank gave rank 0's.
void require_agreement(ExpertParallel& ep, const char* call, const Error* refusal,
                       const std::vector<double>& values, const char* what) {
  const size_t n = values.size() + 1;  // the check-in's status comes first
  const std::vector<double> all = check_in(ep, call, refusal, values);
  for (int q = 1; q < ep.world(); ++q)
    require(std::equal(all.begin() + 1, all.begin() + static_cast<std::ptrdiff_t>(n),
                       all.begin() + static_cast<std::ptrdiff_t>(q * n + 1)),
            MOE_STATUS_INVALID_ARGUMENT,
            "ranks 0 and " + std::to_string(q) + " passed different " + what +
                ": every rank must pass the same; nothing changed");
}

// The slot table as check-in values (its length and a 64-bit FNV-1a hash of it, in two
// exact halves: as many values on every rank, whatever it passed), or a refusal (and an
// empty placement) when the table is invalid on this rank.
Placement checked_table(const Layer& layer, const int32_t* slot_expert, int64_t num_slots,
                        std::unique_ptr<Error>& refusal, std::vector<double>& values) {
  const ExpertParallel& ep = *layer.ep;
  uint64_t hash = 14695981039346656037ull;
  Placement p;
  try {
    p = make_slot_placement(layer.config.num_experts, ep.world(), ep.rank(), slot_expert,
                            num_slots);
    for (int32_t e : p.slot_expert)
      for (int byte = 0; byte < 4; ++byte)
        hash = (hash ^ ((static_cast<uint32_t>(e) >> (8 * byte)) & 0xffu)) * 1099511628211ull;
  } catch (const Error& e) {
    refusal = std::make_unique<Error>(e);
  }
  values.push_back(static_cast<double>(num_slots));
  values.push_back(static_cast<double>(hash >> 32));
  values.push_back(static_cast<double>(hash & 0xffffffffu));
  return p;
}

}  // namespace

void set_ep_options(Layer& layer, const moe_ep_options_t& options) {
  ExpertParallel& ep = attached(layer);
  std::unique_ptr<Error> refusal;
  try {
    require(options.dedup == 0 || options.dedup == 1, MOE_STATUS_INVALID_ARGUMENT,
            "options.dedup must be 0 or 1, got " + std::to_string(options.dedup));
    require(options.chunks >= 1 && options.chunks <= 64, MOE_STATUS_INVALID_ARGUMENT,
            "options.chunks must be in [1, 64], got " + std::to_string(options.chunks));
    require(options.chunks == 1 || options.dedup == 1, MOE_STATUS_INVALID_ARGUMENT,
            "options.chunks > 1 pipelines the one-copy-per-rank exchange: set dedup to 1 "
            "as well");
    if (options.dedup) require_host_pipeline(layer, "the deduplicated dispatch");
  } catch (const Error& e) {
    refusal = std::make_unique<Error>(e);
  }
  require_agreement(ep, "moe_layer_set_ep_options", refusal.get(),
                    {static_cast<double>(options.dedup), static_cast<double>(options.chunks)},
                    "options");
  ep.dedup = options.dedup != 0;
  ep.chunks = options.chunks;
}

void move_expert_tensor(Layer& layer, const int32_t* slot_expert, int64_t num_slots,
                        const void* src, void* dst, int64_t bytes_per_expert) {
  ExpertParallel& ep = attached(layer);
  const Placement& now = ep.placement;
  std::unique_ptr<Error> refusal;
  std::vector<double> values{static_cast<double>(bytes_per_expert)};
  Placement next = checked_table(layer, slot_expert, num_slots, refusal, values);
  if (!refusal) {
    try {
      require(bytes_per_expert > 0 && bytes_per_expert <= int64_t{1} << 40,
              MOE_STATUS_INVALID_ARGUMENT,
              "bytes_per_expert = " + std::to_string(bytes_per_expert) + " must be in [1, 2^40]");
      require(src != nullptr || now.local_experts.empty(), MOE_STATUS_NULL_POINTER,
              "src is NULL, but this rank holds experts now");
      require(dst != nullptr || next.local_experts.empty(), MOE_STATUS_NULL_POINTER,
              "dst is NULL, but this rank holds experts in the new placement");
    } catch (const Error& e) {
      refusal = std::make_unique<Error>(e);
    }
  }
  require_agreement(ep, "moe_layer_move_expert_tensor", refusal.get(), values,
                    "slot tables or bytes_per_expert");
  next =
      make_slot_placement(layer.config.num_experts, ep.world(), ep.rank(), slot_expert, num_slots);
  // Each expert a rank gains comes from its current owner; one it keeps is copied here.
  const int W = ep.world(), me = ep.rank();
  const size_t B = static_cast<size_t>(bytes_per_expert);
  auto index_in = [](const std::vector<int32_t>& experts, int32_t e) {
    return static_cast<size_t>(std::lower_bound(experts.begin(), experts.end(), e) -
                               experts.begin());
  };
  auto held_now = [&](int r, int32_t e) {
    return std::binary_search(now.holders[e].begin(), now.holders[e].end(), r);
  };
  const auto* from = static_cast<const unsigned char*>(src);
  auto* to = static_cast<unsigned char*>(dst);
  std::vector<unsigned char> send;
  std::vector<int64_t> send_bytes(W, 0), recv_bytes(W, 0);
  for (int r = 0; r < W; ++r) {
    if (r == me) continue;
    for (int32_t e : next.experts_of_rank(r))
      if (!held_now(r, e) && now.owner[e] == me) {
        const unsigned char* block = from + index_in(now.local_experts, e) * B;
        send.insert(send.end(), block, block + B);
        send_bytes[r] += bytes_per_expert;
      }
  }
  for (int32_t e : next.local_experts)
    if (!held_now(me, e)) recv_bytes[now.owner[e]] += bytes_per_expert;
  std::vector<unsigned char> recv(
      static_cast<size_t>(std::accumulate(recv_bytes.begin(), recv_bytes.end(), int64_t{0})));
  // Packed by rank: the self block is empty, since a rank never sends to itself here.
  std::vector<int64_t> offset(W + 1, 0);
  for (int q = 0; q < W; ++q) offset[q + 1] = offset[q] + recv_bytes[q];
  ep.exchange(send.data(), send_bytes, recv.data(), recv_bytes);
  for (size_t j = 0; j < next.local_experts.size(); ++j) {
    const int32_t e = next.local_experts[j];
    if (held_now(me, e)) {
      std::memmove(to + j * B, from + index_in(now.local_experts, e) * B, B);
    } else {
      const int q = now.owner[e];
      std::memcpy(to + j * B, recv.data() + offset[q], B);
      offset[q] += bytes_per_expert;
    }
  }
}

void set_placement(Layer& layer, const int32_t* slot_expert, int64_t num_slots) {
  ExpertParallel& ep = attached(layer);
  std::unique_ptr<Error> refusal;
  std::vector<double> values;
  Placement next = checked_table(layer, slot_expert, num_slots, refusal, values);
  if (!refusal) {
    try {
      require_host_pipeline(layer, "slot-table placements");
    } catch (const Error& e) {
      refusal = std::make_unique<Error>(e);
    }
  }
  require_agreement(ep, "moe_layer_set_placement", refusal.get(), values, "slot tables");
  ep.placement = std::move(next);
  ++ep.placement_epoch;
  layer.weights = BoundWeights{};  // the expert tensors' shapes change
}

}  // namespace moe::dist
