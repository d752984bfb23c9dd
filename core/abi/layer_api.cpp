// The layer's entry points: create and destroy, weights, forward and backward, and its
// state (step, stream, selection bias, hash table, stage profile).
#include <memory>
#include <string>

#include "core/abi/entry.hpp"
#include "core/config.hpp"
#include "core/config_preset.hpp"
#include "core/layer/pipeline.hpp"
#include "core/sized_struct.hpp"

using namespace moe::abi;  // guarded, the handle lookups, the shared checks (entry.hpp)

extern "C" {

moe_status_t moe_layer_create(const moe_layer_config_t* config, moe_layer_t* layer) {
  return guarded(__func__, [&] {
    require_pointer(layer, "layer");
    const moe::LayerConfig resolved = moe::config_from_abi(config);
    *layer = new_handle<moe_layer_t>(std::make_unique<moe_layer>(resolved), moe::HandleKind::Layer);
  });
}

moe_status_t moe_layer_destroy(moe_layer_t layer) {
  return guarded(__func__, [&] {
    if (layer == nullptr) return;
    moe::forget_layer(layer_of(layer));  // refused while another thread is inside it
    delete static_cast<moe_layer*>(registry().remove(layer, moe::HandleKind::Layer, "layer"));
  });
}

moe_status_t moe_layer_get_config(const_moe_layer_t layer, moe_layer_config_t* config) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    moe_layer_config_t out = moe::config_to_abi(l.config);
    out.backend = l.backend.name();
    moe::write_sized(config, out, "config");
  });
}

moe_status_t moe_layer_set_weights(moe_layer_t layer, const moe_weights_t* weights) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    const moe_weights_t defaults = MOE_WEIGHTS_INIT;
    moe::bind_weights(l, moe::read_sized(weights, defaults, "weights"));
  });
}

moe_status_t moe_layer_forward(moe_layer_t layer, const moe_forward_args_t* args, moe_ctx_t* ctx) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    const moe_forward_args_t defaults = MOE_FORWARD_ARGS_INIT;
    moe_forward_args_t in;
    try {
      in = moe::read_sized(args, defaults, "args");
    } catch (const moe::Error& e) {
      moe::refuse_forward(l, e);
    }
    auto saved = moe::forward(l, in);
    if (!ctx) {
      // Without a context nothing could read the counts later: the bookkeeping runs now.
      moe::settle_pending_forward(l);
      return;
    }
    std::unique_ptr<moe_ctx> holder;  // outlives the catch: the saved state stays alive
    try {
      holder = std::make_unique<moe_ctx>();
      holder->state = std::move(saved);
      *ctx = new_handle<moe_ctx_t>(std::move(holder), moe::HandleKind::Ctx);
    } catch (...) {
      // The pending bookkeeping points at the saved state: run it while that lives,
      // or drop it with the state (a failed registration freed it).
      if (saved || holder)
        moe::settle_pending_forward(l);
      else
        l.pending_forward = {};
      throw;
    }
  });
}

moe_status_t moe_layer_backward(moe_layer_t layer, const_moe_ctx_t ctx,
                                const moe_backward_args_t* args) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_unsettled(layer);
    const moe::SavedState* saved = nullptr;
    const moe_backward_args_t defaults = MOE_BACKWARD_ARGS_INIT;
    moe_backward_args_t in;
    try {
      saved = &state_unsettled(ctx);
      in = moe::read_sized(args, defaults, "args");
      // The gradients are a sized struct of their own: read by their size too.
      const moe_weights_t no_gradients = MOE_WEIGHTS_INIT;
      in.grads = moe::read_sized(&in.grads, no_gradients, "args.grads");
    } catch (const moe::Error& e) {
      moe::refuse_backward(l, e);
    }
    moe::backward(l, *saved, in);
  });
}

moe_status_t moe_layer_set_stream(moe_layer_t layer, void* stream) {
  return guarded(__func__, [&] { layer_unsettled(layer).stream = stream; });
}

moe_status_t moe_layer_get_step(const_moe_layer_t layer, int64_t* step) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_pointer(step, "step");
    *step = l.step;
  });
}

moe_status_t moe_layer_stage_profile(moe_layer_t layer, moe_stage_profile_t* profile,
                                     int32_t reset) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe_stage_profile_t out = l.profile;
    out.forward_other = out.forward_total - out.router - out.plan - out.permute - out.experts -
                        out.combine - out.telemetry - out.exchange;
    out.backward_other = out.backward_total - out.combine_backward - out.experts_backward -
                         out.permute_backward - out.router_backward - out.exchange_backward;
    moe::write_sized(profile, out, "profile");
    if (reset) l.profile = MOE_STAGE_PROFILE_INIT;
  });
}

moe_status_t moe_layer_set_step(moe_layer_t layer, int64_t step) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    // Bounded so that counting on from it never overflows (2^62 training calls is beyond
    // any run).
    moe::require(step >= 0 && step <= moe::kMaxStep, MOE_STATUS_INVALID_ARGUMENT,
                 "step must be in [0, 2^62], got " + std::to_string(step));
    l.step = step;
  });
}

moe_status_t moe_layer_get_selection_bias(const_moe_layer_t layer, double* bias, int64_t count) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_pointer(bias, "bias");
    require_expert_count(l, count);
    std::memcpy(bias, l.selection_bias.data(), sizeof(double) * static_cast<size_t>(count));
  });
}

moe_status_t moe_layer_set_selection_bias(moe_layer_t layer, const double* bias, int64_t count) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    require_pointer(bias, "bias");
    require_expert_count(l, count);
    for (int64_t e = 0; e < count; ++e)
      moe::require(std::isfinite(bias[e]), MOE_STATUS_INVALID_ARGUMENT,
                   "bias[" + std::to_string(e) + "] is not finite");
    l.selection_bias.assign(bias, bias + count);
  });
}

moe_status_t moe_layer_reset_aux_counts(moe_layer_t layer) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    require_global_aux(l);
    l.global_aux.reset();
  });
}

moe_status_t moe_layer_get_aux_counts(const_moe_layer_t layer, double* counts, int64_t count,
                                      int64_t* calls) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_global_aux(l);
    if (counts) {
      require_expert_count(l, count);
      std::memcpy(counts, l.global_aux.counts().data(),
                  sizeof(double) * static_cast<size_t>(count));
    }
    if (calls) *calls = l.global_aux.calls();
  });
}

moe_status_t moe_layer_config_preset(moe_layer_config_t* config, const char* family) {
  return guarded(__func__, [&] {
    require_pointer(family, "family");
    const moe::SizedHeader header = moe::checked_header(config, "config");
    // A smaller struct would lose the fields a preset sets past its end.
    moe::require(header.size >= sizeof(moe_layer_config_t), MOE_STATUS_INVALID_ARGUMENT,
                 "config->size is " + std::to_string(header.size) +
                     ", but a preset sets fields "
                     "up to this moe.h's " +
                     std::to_string(sizeof(moe_layer_config_t)) +
                     " bytes; initialise the struct with MOE_LAYER_CONFIG_INIT");
    moe::apply_preset(family, *config);
  });
}

moe_status_t moe_layer_build_hash_table(moe_layer_t layer, const int64_t* ids, int64_t n,
                                        int64_t vocab_size) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe::require(l.config.router == MOE_ROUTER_HASH, MOE_STATUS_INVALID_STATE,
                 "the layer's router is not 'hash'");
    moe::require(n >= 0, MOE_STATUS_INVALID_ARGUMENT, "n must be >= 0");
    // 2^24 ids: 64 times the largest vocabularies in use, and a table that fits in
    // memory (its build holds three arrays of vocab_size entries).
    moe::require(
        vocab_size > 0 && vocab_size <= (int64_t{1} << 24), MOE_STATUS_INVALID_ARGUMENT,
        "vocab_size must be in [1, 2^24] (docs/limits.md), got " + std::to_string(vocab_size));
    if (n > 0) require_pointer(ids, "ids");
    for (int64_t i = 0; i < n; ++i)
      moe::require(ids[i] >= 0 && ids[i] < vocab_size, MOE_STATUS_INVALID_ARGUMENT,
                   "ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                       " is outside [0, vocab_size)");
    l.hash_table = moe::build_hash_table(ids, n, vocab_size, l.config.num_experts, l.config.top_k);
    ++l.hash_table_generation;
  });
}

}  // extern "C"
