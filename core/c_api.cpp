// The one file with extern "C": every entry point validates its arguments, runs the
// C++ core inside try/catch, and maps exceptions to a status and a thread-local
// message (the faiss C API's pattern). Nothing thrown crosses the ABI.
#include <cmath>
#include <cstring>
#include <new>
#include <string>

#include "backends/backend.hpp"
#include "core/error.hpp"
#include "core/handle_registry.hpp"
#include "core/layer.hpp"
#include "core/pipeline.hpp"
#include "core/raw_enum.hpp"
#include "core/sized_struct.hpp"
#include "moe/moe.h"

namespace {

thread_local std::string last_error;

moe_status_t fail(moe_status_t status, const std::string& message) {
  last_error = message;
  return status;
}

template <typename Body>
moe_status_t guarded(const char* function, Body&& body) {
  try {
    last_error.clear();
    body();
    return MOE_STATUS_SUCCESS;
  } catch (const moe::Error& e) {
    return fail(e.status(), std::string(function) + ": " + e.what());
  } catch (const std::bad_alloc&) {
    return fail(MOE_STATUS_OUT_OF_MEMORY, std::string(function) + ": out of memory");
  } catch (const std::exception& e) {
    return fail(MOE_STATUS_INTERNAL_ERROR, std::string(function) + ": " + e.what());
  } catch (...) {
    return fail(MOE_STATUS_INTERNAL_ERROR, std::string(function) + ": unknown error");
  }
}

moe::Layer& layer_of(const_moe_layer_t handle) {
  moe::HandleRegistry::instance().check(handle, moe::HandleKind::Layer, "layer");
  return const_cast<moe_layer*>(handle)->impl;
}

const moe::SavedState& state_of(const_moe_ctx_t handle) {
  moe::HandleRegistry::instance().check(handle, moe::HandleKind::Ctx, "ctx");
  return *handle->state;
}

void require_pointer(const void* p, const char* name) {
  moe::require(p != nullptr, MOE_STATUS_NULL_POINTER, std::string(name) + " is NULL");
}

void require_expert_count(const moe::Layer& layer, int64_t count) {
  moe::require(count == layer.config.num_experts, MOE_STATUS_SHAPE_MISMATCH,
               "count is " + std::to_string(count) + ", the layer has " +
                   std::to_string(layer.config.num_experts) + " experts");
}

}  // namespace

extern "C" {

const char* moe_status_string(moe_status_t status) {
  switch (moe::raw_enum(status)) {
    case MOE_STATUS_SUCCESS: return "MOE_STATUS_SUCCESS";
    case MOE_STATUS_NULL_POINTER: return "MOE_STATUS_NULL_POINTER";
    case MOE_STATUS_INVALID_ARGUMENT: return "MOE_STATUS_INVALID_ARGUMENT";
    case MOE_STATUS_SHAPE_MISMATCH: return "MOE_STATUS_SHAPE_MISMATCH";
    case MOE_STATUS_INVALID_HANDLE: return "MOE_STATUS_INVALID_HANDLE";
    case MOE_STATUS_INVALID_STATE: return "MOE_STATUS_INVALID_STATE";
    case MOE_STATUS_UNSUPPORTED: return "MOE_STATUS_UNSUPPORTED";
    case MOE_STATUS_OUT_OF_MEMORY: return "MOE_STATUS_OUT_OF_MEMORY";
    case MOE_STATUS_BACKEND_ERROR: return "MOE_STATUS_BACKEND_ERROR";
    case MOE_STATUS_COMM_ERROR: return "MOE_STATUS_COMM_ERROR";
    case MOE_STATUS_INTERNAL_ERROR: return "MOE_STATUS_INTERNAL_ERROR";
  }
  return "MOE_STATUS_UNKNOWN";
}

const char* moe_last_error(void) {
  return last_error.c_str();
}

moe_status_t moe_version(int32_t* major, int32_t* minor, int32_t* patch) {
  if (major) *major = MOE_VERSION_MAJOR;
  if (minor) *minor = MOE_VERSION_MINOR;
  if (patch) *patch = MOE_VERSION_PATCH;
  last_error.clear();
  return MOE_STATUS_SUCCESS;
}

moe_status_t moe_backend_count(int32_t* count) {
  return guarded(__func__, [&] {
    require_pointer(count, "count");
    *count = moe::backend_count();
  });
}

moe_status_t moe_backend_name(int32_t index, const char** name) {
  return guarded(__func__, [&] {
    require_pointer(name, "name");
    moe::require(index >= 0 && index < moe::backend_count(), MOE_STATUS_INVALID_ARGUMENT,
                 "backend index " + std::to_string(index) + " is out of range [0, " +
                     std::to_string(moe::backend_count()) + ")");
    *name = moe::backend_at(index).name();
  });
}

moe_status_t moe_layer_create(const moe_layer_config_t* config, moe_layer_t* layer) {
  return guarded(__func__, [&] {
    require_pointer(layer, "layer");
    const moe::LayerConfig resolved = moe::config_from_abi(config);
    auto* handle = new moe_layer(resolved);
    moe::HandleRegistry::instance().add(handle, moe::HandleKind::Layer);
    *layer = handle;
  });
}

moe_status_t moe_layer_destroy(moe_layer_t layer) {
  return guarded(__func__, [&] {
    if (layer == nullptr) return;
    layer_of(layer);
    moe::HandleRegistry::instance().remove(layer);
    delete layer;
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
    const moe_forward_args_t in = moe::read_sized(args, defaults, "args");
    auto saved = moe::forward(l, in);
    if (ctx) {
      auto* handle = new moe_ctx{std::move(saved)};
      moe::HandleRegistry::instance().add(handle, moe::HandleKind::Ctx);
      *ctx = handle;
    }
  });
}

moe_status_t moe_layer_backward(moe_layer_t layer, const_moe_ctx_t ctx,
                                const moe_backward_args_t* args) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    const moe::SavedState& saved = state_of(ctx);
    const moe_backward_args_t defaults = MOE_BACKWARD_ARGS_INIT;
    moe::backward(l, saved, moe::read_sized(args, defaults, "args"));
  });
}

moe_status_t moe_layer_set_stream(moe_layer_t layer, void* stream) {
  return guarded(__func__, [&] { layer_of(layer).stream = stream; });
}

moe_status_t moe_layer_get_step(const_moe_layer_t layer, int64_t* step) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_pointer(step, "step");
    *step = l.step;
  });
}

moe_status_t moe_layer_set_step(moe_layer_t layer, int64_t step) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe::require(step >= 0, MOE_STATUS_INVALID_ARGUMENT, "step must be >= 0");
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

moe_status_t moe_layer_build_hash_table(moe_layer_t layer, const int64_t* ids, int64_t n,
                                        int64_t vocab_size) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe::require(l.config.router == MOE_ROUTER_HASH, MOE_STATUS_INVALID_STATE,
                 "the layer's router is not 'hash'");
    moe::require(n >= 0, MOE_STATUS_INVALID_ARGUMENT, "n must be >= 0");
    moe::require(vocab_size > 0 && vocab_size <= (int64_t{1} << 32), MOE_STATUS_INVALID_ARGUMENT,
                 "vocab_size must be in [1, 2^32]");
    if (n > 0) require_pointer(ids, "ids");
    for (int64_t i = 0; i < n; ++i)
      moe::require(ids[i] >= 0 && ids[i] < vocab_size, MOE_STATUS_INVALID_ARGUMENT,
                   "ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                       " is outside [0, vocab_size)");
    l.hash_table = moe::build_hash_table(ids, n, vocab_size, l.config.num_experts, l.config.top_k);
  });
}

moe_status_t moe_ctx_destroy(moe_ctx_t ctx) {
  return guarded(__func__, [&] {
    if (ctx == nullptr) return;
    state_of(ctx);
    moe::HandleRegistry::instance().remove(ctx);
    delete ctx;
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
    out.tokens = s.plan.tokens;
    out.nonfinite_rows = s.routing.nonfinite_rows;
    out.capacity = s.plan.capacity;
    out.dropped_total = s.plan.dropped_total();
    const size_t E = s.plan.demand.size();
    if (out.demand) std::memcpy(out.demand, s.plan.demand.data(), E * sizeof(int64_t));
    if (out.served) std::memcpy(out.served, s.plan.served.data(), E * sizeof(int64_t));
    moe::write_sized(stats, out, "stats");
  });
}

}  // extern "C"
