// The entry points of saved states (contexts): routing, losses, counts, and the
// routing consistency of two of them.
#include <cstddef>
#include <cstring>
#include <memory>
#include <string>

#include "core/abi/entry.hpp"
#include "core/sized_struct.hpp"

using namespace moe::abi;  // guarded, the handle lookups, the shared checks (entry.hpp)

extern "C" {

moe_status_t moe_ctx_destroy(moe_ctx_t ctx) {
  return guarded(__func__, [&] {
    if (ctx == nullptr) return;
    // A forward still waiting for its counts does its bookkeeping first; the context
    // goes even if that fails, and the failure is reported.
    std::unique_ptr<moe::Error> failed;
    try {
      state_of(ctx);
    } catch (const moe::Error& e) {
      failed = std::make_unique<moe::Error>(e);
    }
    delete static_cast<moe_ctx*>(registry().remove(ctx, moe::HandleKind::Ctx, "ctx"));
    if (failed) throw *failed;
  });
}

moe_status_t moe_ctx_routing_shape(const_moe_ctx_t ctx, int64_t* tokens, int64_t* slots) {
  return guarded(__func__, [&] {
    const moe::SavedState& s = state_of(ctx);
    if (tokens) *tokens = s.routing.tokens;
    if (slots) *slots = s.routing.slots;
  });
}

moe_status_t moe_ctx_routing(const_moe_ctx_t ctx, int32_t* experts, float* gates,
                             uint8_t* dropped) {
  return guarded(__func__, [&] { state_of(ctx).copy_routing(experts, gates, dropped); });
}

moe_status_t moe_ctx_losses(const_moe_ctx_t ctx, moe_losses_t* losses) {
  return guarded(__func__, [&] {
    const moe::SavedState& s = state_of(ctx);
    moe::write_sized(losses, s.losses, "losses");
  });
}

moe_status_t moe_ctx_routing_stats(const_moe_ctx_t ctx, moe_routing_stats_t* stats) {
  return guarded(__func__, [&] {
    const moe::SavedState& s = state_of(ctx);
    const moe_routing_stats_t defaults = MOE_ROUTING_STATS_INIT;
    moe_routing_stats_t out = moe::read_sized(stats, defaults, "stats");
    const size_t E = s.plan.demand.size();
    // A version-1 struct ends before `entries`: such callers are trusted to hold E.
    const bool says_entries =
        stats->size >= offsetof(moe_routing_stats_t, entries) + sizeof(out.entries);
    moe::require(
        !says_entries || (!out.demand && !out.served) || out.entries >= static_cast<int64_t>(E),
        MOE_STATUS_SHAPE_MISMATCH,
        "stats.entries is " + std::to_string(out.entries) + ", but the layer has " +
            std::to_string(E) + " experts: demand and served need room for each");
    out.tokens = s.plan.tokens - s.routing.masked_rows;  // padding is not a token
    out.nonfinite_rows = s.routing.nonfinite_rows;
    out.capacity = s.plan.capacity;
    out.dropped_total = s.plan.dropped_total();
    if (out.demand) std::memcpy(out.demand, s.plan.demand.data(), E * sizeof(int64_t));
    if (out.served) std::memcpy(out.served, s.plan.served.data(), E * sizeof(int64_t));
    moe::write_sized(stats, out, "stats");
  });
}

moe_status_t moe_ctx_compare_routing(const_moe_ctx_t a, const_moe_ctx_t b, double* consistency,
                                     double* topk_consistency) {
  return guarded(__func__, [&] {
    const moe::SavedState& sa = state_of(a);
    const moe::SavedState& sb = state_of(b);
    const int64_t T = sa.routing.tokens, slots = sa.routing.slots;
    moe::require(T == sb.routing.tokens && slots == sb.routing.slots, MOE_STATUS_SHAPE_MISMATCH,
                 "the two contexts routed different shapes (" + std::to_string(T) + "x" +
                     std::to_string(slots) + " and " + std::to_string(sb.routing.tokens) + "x" +
                     std::to_string(sb.routing.slots) + ")");
    std::vector<int32_t> ea(T * slots), eb(T * slots);
    std::vector<float> ga(T * slots), gb(T * slots);
    sa.copy_routing(ea.data(), ga.data(), nullptr);
    sb.copy_routing(eb.data(), gb.data(), nullptr);
    double same = 0, overlap = 0;
    for (int64_t t = 0; t < T; ++t) {
      same += moe::first_choice(&ea[t * slots], &ga[t * slots], slots, sa.expert_choice) ==
              moe::first_choice(&eb[t * slots], &gb[t * slots], slots, sb.expert_choice);
      int64_t shared = 0, chosen = 0;
      for (int64_t i = 0; i < slots; ++i) {
        if (ea[t * slots + i] < 0) continue;
        ++chosen;
        for (int64_t j = 0; j < slots; ++j) shared += ea[t * slots + i] == eb[t * slots + j];
      }
      overlap += chosen ? static_cast<double>(shared) / static_cast<double>(chosen) : 0.0;
    }
    if (consistency) *consistency = T ? same / static_cast<double>(T) : std::nan("");
    if (topk_consistency) *topk_consistency = T ? overlap / static_cast<double>(T) : std::nan("");
  });
}

}  // extern "C"
