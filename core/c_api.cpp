// The one file with extern "C": every entry point validates its arguments, runs the
// C++ core inside try/catch, and maps exceptions to a status and a thread-local
// message (the faiss C API's pattern). Nothing thrown crosses the ABI.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "backends/backend.hpp"
#include "core/bfloat16.hpp"
#include "core/error.hpp"
#include "core/handle_registry.hpp"
#include "core/layer.hpp"
#include "core/layer_entry.hpp"
#include "core/pipeline.hpp"
#include "core/raw_enum.hpp"
#include "core/sized_struct.hpp"
#include "core/telemetry/export.hpp"
#include "core/telemetry/step_stats.hpp"
#include "core/telemetry/verdicts.hpp"
#include "core/telemetry/weight_metrics.hpp"
#include "dist/attach.hpp"
#include "dist/communicator.hpp"
#include "dist/local_comm.hpp"
#include "moe/moe.h"

namespace {

thread_local std::string last_error;

moe_status_t fail(moe_status_t status, const std::string& message) {
  last_error = message;
  return status;
}

template <typename Body>
moe_status_t guarded(const char* function, Body&& body) {
  const moe::LayerCall call;  // the layers this call enters are left when it returns
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

// Handles are registry tokens (handle_registry.hpp), never the objects' addresses: every
// use goes through these lookups.
moe::HandleRegistry& registry() {
  return moe::HandleRegistry::instance();
}

// Every use of a layer enters it: one thread at a time (layer_entry.hpp).
moe::Layer& layer_of(const_moe_layer_t handle) {
  moe::Layer& layer = moe::handle_object<moe_layer>(handle, moe::HandleKind::Layer, "layer").impl;
  moe::enter_layer(layer);
  return layer;
}

const moe::SavedState& state_of(const_moe_ctx_t handle) {
  return *moe::handle_object<moe_ctx>(handle, moe::HandleKind::Ctx, "ctx").state;
}

void require_pointer(const void* p, const char* name) {
  moe::require(p != nullptr, MOE_STATUS_NULL_POINTER, std::string(name) + " is NULL");
}

void require_expert_count(const moe::Layer& layer, int64_t count) {
  moe::require(count == layer.config.num_experts, MOE_STATUS_SHAPE_MISMATCH,
               "count is " + std::to_string(count) + ", the layer has " +
                   std::to_string(layer.config.num_experts) + " experts");
}

// By reference: reading an out-of-range enum by value is undefined behaviour.
moe_split_t checked_split(const moe_split_t& split) {
  const int raw = moe::raw_enum(split);
  moe::require(raw == MOE_SPLIT_TRAIN || raw == MOE_SPLIT_EVAL, MOE_STATUS_INVALID_ARGUMENT,
               "split is not a moe_split_t: " + std::to_string(raw));
  return split;
}

moe_scope_t checked_scope(const moe_scope_t& scope) {
  const int raw = moe::raw_enum(scope);
  moe::require(raw >= MOE_SCOPE_LAST && raw <= MOE_SCOPE_EMA, MOE_STATUS_INVALID_ARGUMENT,
               "scope is not a moe_scope_t: " + std::to_string(raw));
  return scope;
}

moe::MetricSet metrics_of(const moe::Layer& l, const moe_split_t& split, const moe_scope_t& scope) {
  return l.telemetry.metrics(checked_split(split), checked_scope(scope), l.config);
}

// A host copy, in double, of one bound weight tensor.
std::vector<double> host_values(moe::Layer& l, const moe_tensor_t& t) {
  if (t.data == nullptr) return {};
  int64_t n = 1;
  for (int i = 0; i < t.ndim; ++i) n *= t.shape[i];
  const size_t element = moe::dtype_size(l.config.dtype);
  std::vector<unsigned char> raw(static_cast<size_t>(n) * element);
  l.backend.read_to_host(t, raw.data(), raw.size());
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (l.config.dtype == MOE_DTYPE_F64) {
      std::memcpy(&out[i], &raw[i * 8], 8);
    } else if (l.config.dtype == MOE_DTYPE_F32) {
      float f;
      std::memcpy(&f, &raw[i * 4], 4);
      out[i] = f;
    } else {
      moe::bfloat16 h;
      std::memcpy(&h, &raw[i * 2], 2);
      out[i] = h;
    }
  }
  return out;
}

}  // namespace

struct moe_group {
  std::vector<const_moe_layer_t> layers;  // handles: a destroyed layer is refused at query
};

struct moe_comm : moe::dist::Communicator {
  using Communicator::Communicator;
};

namespace {

// A new handle of `kind` for a new object (the registry owns nothing: destroy deletes).
template <typename Handle, typename Object>
Handle new_handle(std::unique_ptr<Object> object, moe::HandleKind kind) {
  auto handle = static_cast<Handle>(const_cast<void*>(registry().add(object.get(), kind)));
  object.release();
  return handle;
}

moe_comm_t new_comm(const moe_comm_ops_t& ops, double timeout_s) {
  return new_handle<moe_comm_t>(std::make_unique<moe_comm>(ops, timeout_s), moe::HandleKind::Comm);
}

moe_comm& comm_of(moe_comm_t comm) {
  return moe::handle_object<moe_comm>(comm, moe::HandleKind::Comm, "comm");
}

moe_group& group_of(moe_group_t group) {
  return moe::handle_object<moe_group>(group, moe::HandleKind::Group, "group");
}

void checked_export_format(moe_export_format_t format) {
  const int raw = moe::raw_enum(format);
  moe::require(raw >= MOE_EXPORT_JSONL && raw <= MOE_EXPORT_CSV_ROW, MOE_STATUS_INVALID_ARGUMENT,
               "format is not a moe_export_format_t: " + std::to_string(raw));
}

moe::LayerExport export_of(const moe::Layer& l, const moe::MetricSet& m, moe_split_t split,
                           moe_scope_t scope) {
  return {&m, {l.name, split, scope, l.telemetry.recorded_step(split)}, l.config.num_experts};
}

// Text out through a caller's buffer: *length always, the text (NUL-terminated) only
// when it fits.
void hand_out(const std::string& text, char* buffer, size_t capacity, size_t* length) {
  *length = text.size();
  if (buffer && capacity > text.size()) std::memcpy(buffer, text.c_str(), text.size() + 1);
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
    if (ctx)
      *ctx = new_handle<moe_ctx_t>(std::make_unique<moe_ctx>(moe_ctx{std::move(saved)}),
                                   moe::HandleKind::Ctx);
  });
}

moe_status_t moe_layer_backward(moe_layer_t layer, const_moe_ctx_t ctx,
                                const moe_backward_args_t* args) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    const moe::SavedState* saved = nullptr;
    const moe_backward_args_t defaults = MOE_BACKWARD_ARGS_INIT;
    moe_backward_args_t in;
    try {
      saved = &state_of(ctx);
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
  return guarded(__func__, [&] { layer_of(layer).stream = stream; });
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

moe_status_t moe_ctx_destroy(moe_ctx_t ctx) {
  return guarded(__func__, [&] {
    if (ctx == nullptr) return;
    delete static_cast<moe_ctx*>(registry().remove(ctx, moe::HandleKind::Ctx, "ctx"));
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
    out.tokens = s.plan.tokens;
    out.nonfinite_rows = s.routing.nonfinite_rows;
    out.capacity = s.plan.capacity;
    out.dropped_total = s.plan.dropped_total();
    if (out.demand) std::memcpy(out.demand, s.plan.demand.data(), E * sizeof(int64_t));
    if (out.served) std::memcpy(out.served, s.plan.served.data(), E * sizeof(int64_t));
    moe::write_sized(stats, out, "stats");
  });
}

moe_status_t moe_metric_count(int32_t* count) {
  return guarded(__func__, [&] {
    require_pointer(count, "count");
    *count = static_cast<int32_t>(moe::catalogue().size());
  });
}

moe_status_t moe_metric_info(int32_t index, const char** name, moe_metric_shape_t* shape,
                             const char** help) {
  return guarded(__func__, [&] {
    const auto& list = moe::catalogue();
    moe::require(index >= 0 && index < static_cast<int32_t>(list.size()),
                 MOE_STATUS_INVALID_ARGUMENT,
                 "metric index " + std::to_string(index) + " is out of range [0, " +
                     std::to_string(list.size()) + ")");
    if (name) *name = list[index].name;
    if (shape) *shape = list[index].shape;
    if (help) *help = list[index].help;
  });
}

moe_status_t moe_layer_metric(const_moe_layer_t layer, moe_split_t split, moe_scope_t scope,
                              const char* name, double* values, int64_t capacity, int64_t* count) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_pointer(name, "name");
    const int index = moe::metric_index(name);
    moe::require(index >= 0, MOE_STATUS_INVALID_ARGUMENT,
                 std::string("unknown metric '") + name + "' (see moe_metric_info)");
    const moe::MetricSet m = metrics_of(l, split, scope);
    const std::vector<double>& v = m.values[index];
    if (count) *count = static_cast<int64_t>(v.size());
    if (values) {
      moe::require(capacity >= static_cast<int64_t>(v.size()), MOE_STATUS_INVALID_ARGUMENT,
                   std::string("metric '") + name + "' has " + std::to_string(v.size()) +
                       " values; capacity is " + std::to_string(capacity));
      std::copy(v.begin(), v.end(), values);
    }
  });
}

moe_status_t moe_layer_telemetry(const_moe_layer_t layer, moe_telemetry_snapshot_t* snapshot) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    const moe_telemetry_snapshot_t defaults = MOE_TELEMETRY_SNAPSHOT_INIT;
    moe_telemetry_snapshot_t out = moe::read_sized(snapshot, defaults, "snapshot");
    const moe::MetricSet m = metrics_of(l, out.split, out.scope);
    const int64_t E = l.config.num_experts;
    int32_t scalars = 0, vectors = 0;
    for (size_t i = 0; i < moe::catalogue().size(); ++i) {
      const auto& v = m.values[i];
      switch (moe::catalogue()[i].shape) {
        case MOE_METRIC_SCALAR:
          if (out.scalars) out.scalars[scalars] = v[0];
          ++scalars;
          break;
        case MOE_METRIC_PER_EXPERT:
          if (out.per_expert) std::copy(v.begin(), v.end(), out.per_expert + vectors * E);
          ++vectors;
          break;
        case MOE_METRIC_MATRIX:
          if (out.coactivation) std::copy(v.begin(), v.end(), out.coactivation);
          break;
      }
    }
    out.num_scalars = scalars;
    out.num_per_expert = vectors;
    out.num_experts = E;
    out.step = l.telemetry.recorded_step(out.split);
    moe::write_sized(snapshot, out, "snapshot");
  });
}

moe_status_t moe_layer_telemetry_reset(moe_layer_t layer) {
  return guarded(__func__, [&] { layer_of(layer).telemetry.reset(); });
}

moe_status_t moe_layer_set_name(moe_layer_t layer, const char* name) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    require_pointer(name, "name");
    l.name = name;
  });
}

moe_status_t moe_layer_telemetry_export(const_moe_layer_t layer, moe_export_format_t format,
                                        moe_split_t split, moe_scope_t scope, char* buffer,
                                        size_t capacity, size_t* length) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_pointer(length, "length");
    checked_export_format(format);
    const moe::MetricSet m = metrics_of(l, split, scope);
    hand_out(moe::export_metrics(format, {export_of(l, m, split, scope)}), buffer, capacity,
             length);
  });
}

moe_status_t moe_layer_set_verdict_thresholds(moe_layer_t layer,
                                              const moe_verdict_thresholds_t* thresholds) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    const moe_verdict_thresholds_t t =
        moe::read_sized(thresholds, moe::default_thresholds(), "thresholds");
    // Every threshold is a finite number >= 0 (a NaN one would judge nothing and say so
    // nowhere); the warm-up is a step count.
    const std::pair<const char*, double> values[] = {
        {"collapse_max_frac", t.collapse_max_frac},
        {"collapse_active_experts", t.collapse_active_experts},
        {"imbalance_load_cv", t.imbalance_load_cv},
        {"imbalance_entropy_norm", t.imbalance_entropy_norm},
        {"imbalance_kl", t.imbalance_kl},
        {"imbalance_dead_fraction", t.imbalance_dead_fraction},
        {"imbalance_max_frac_floor", t.imbalance_max_frac_floor},
        {"imbalance_max_frac_experts", t.imbalance_max_frac_experts},
        {"moderate_load_cv", t.moderate_load_cv},
        {"diffuse_entropy_norm", t.diffuse_entropy_norm},
        {"diffuse_top1_experts", t.diffuse_top1_experts},
        {"peaked_top1", t.peaked_top1},
        {"peaked_entropy_norm", t.peaked_entropy_norm},
        {"pressure_drop_rate", t.pressure_drop_rate},
        {"pressure_frac_gap", t.pressure_frac_gap}};
    for (const auto& [name, value] : values)
      moe::require(std::isfinite(value) && value >= 0.0, MOE_STATUS_INVALID_ARGUMENT,
                   std::string("thresholds.") + name + " must be finite and >= 0, got " +
                       std::to_string(value));
    moe::require(t.specialization_warmup_steps >= 0, MOE_STATUS_INVALID_ARGUMENT,
                 "thresholds.specialization_warmup_steps must be >= 0");
    l.thresholds = t;
  });
}

moe_status_t moe_layer_verdicts(const_moe_layer_t layer, moe_split_t split, moe_scope_t scope,
                                moe_verdicts_t* verdicts) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    const moe::MetricSet m = metrics_of(l, split, scope);
    moe::write_sized(verdicts, moe::judge(m, l.config, l.thresholds, l.step), "verdicts");
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

moe_status_t moe_layer_weight_metrics(const_moe_layer_t layer, moe_weight_metrics_t* metrics) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe::require(l.weights.bound, MOE_STATUS_INVALID_STATE, "no weights are bound");
    const std::vector<double> router = host_values(l, l.weights.router);
    const std::vector<double> w1 = host_values(l, l.weights.w1);
    moe::write_sized(metrics,
                     moe::weight_metrics(router, l.config.d_model, l.config.num_experts, w1),
                     "metrics");
  });
}

moe_status_t moe_comm_create(const moe_comm_ops_t* ops, double timeout_s, moe_comm_t* comm) {
  return guarded(__func__, [&] {
    require_pointer(comm, "comm");
    const moe_comm_ops_t defaults{};
    *comm = new_comm(moe::read_sized(ops, defaults, "ops"), timeout_s);
  });
}

moe_status_t moe_comm_create_local(moe_comm_t* comm) {
  return guarded(__func__, [&] {
    require_pointer(comm, "comm");
    *comm = new_comm(moe::dist::local_comm_ops(), 0.0);
  });
}

moe_status_t moe_comm_destroy(moe_comm_t comm) {
  return guarded(__func__, [&] {
    if (comm == nullptr) return;
    const moe_comm& c = comm_of(comm);
    moe::require(c.attached_layers() == 0, MOE_STATUS_INVALID_STATE,
                 std::to_string(c.attached_layers()) +
                     " layer(s) still use this communicator: detach them first "
                     "(moe_layer_set_comm(layer, NULL, NULL, 0)) or destroy them");
    delete static_cast<moe_comm*>(registry().remove(comm, moe::HandleKind::Comm, "comm"));
  });
}

moe_status_t moe_comm_rank(moe_comm_t comm, int32_t* rank, int32_t* world) {
  return guarded(__func__, [&] {
    const moe::dist::Communicator& c = comm_of(comm);
    if (rank) *rank = c.rank();
    if (world) *world = c.world();
  });
}

moe_status_t moe_comm_all_to_all(moe_comm_t comm, const void* send, const int64_t* send_bytes,
                                 void* recv, const int64_t* recv_bytes) {
  return guarded(__func__,
                 [&] { comm_of(comm).all_to_all_paired(send, send_bytes, recv, recv_bytes); });
}

moe_status_t moe_comm_all_reduce_sum(moe_comm_t comm, double* data, int64_t count) {
  return guarded(__func__, [&] { comm_of(comm).all_reduce_sum(data, count); });
}

moe_status_t moe_comm_barrier(moe_comm_t comm) {
  return guarded(__func__, [&] { comm_of(comm).barrier(); });
}

moe_status_t moe_layer_set_comm(moe_layer_t layer, moe_comm_t comm, const int32_t* expert_owner,
                                int64_t count) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe::dist::attach(l, comm ? &comm_of(comm) : nullptr, expert_owner, count);
  });
}

moe_status_t moe_layer_local_experts(const_moe_layer_t layer, int32_t* experts, int64_t capacity,
                                     int64_t* count) {
  return guarded(__func__, [&] {
    const moe::Layer& l = layer_of(layer);
    require_pointer(count, "count");
    std::vector<int32_t> mine;
    if (l.ep) {
      mine = l.ep->placement.local_experts;
    } else {
      for (int32_t e = 0; e < l.config.num_experts; ++e) mine.push_back(e);
    }
    const int64_t n = static_cast<int64_t>(mine.size());
    if (experts) {
      moe::require(capacity >= n, MOE_STATUS_SHAPE_MISMATCH,
                   "capacity is " + std::to_string(capacity) + ", this rank has " +
                       std::to_string(n) + " experts");
      std::copy(mine.begin(), mine.end(), experts);
    }
    *count = n;
  });
}

moe_status_t moe_layer_reduce_router_grad(moe_layer_t layer, moe_tensor_t grad) {
  return guarded(__func__, [&] { moe::dist::reduce_router_grad(layer_of(layer), grad); });
}

moe_status_t moe_layer_comm_traffic(moe_layer_t layer, moe_comm_traffic_t* traffic,
                                    moe_peer_traffic_t* peers, int32_t peer_count, int32_t reset) {
  return guarded(__func__, [&] {
    moe::Layer& l = layer_of(layer);
    moe::require(peers == nullptr || peer_count >= 0, MOE_STATUS_INVALID_ARGUMENT,
                 "peer_count must be >= 0");
    moe_comm_traffic_t out = MOE_COMM_TRAFFIC_INIT;
    if (l.ep) l.ep->read_traffic(out, peers, peer_count);
    moe::write_sized(traffic, out, "traffic");
    if (reset && l.ep) l.ep->reset_traffic();
  });
}

moe_status_t moe_group_create(moe_group_t* group) {
  return guarded(__func__, [&] {
    require_pointer(group, "group");
    *group = new_handle<moe_group_t>(std::make_unique<moe_group>(), moe::HandleKind::Group);
  });
}

moe_status_t moe_group_destroy(moe_group_t group) {
  return guarded(__func__, [&] {
    if (group == nullptr) return;
    delete static_cast<moe_group*>(registry().remove(group, moe::HandleKind::Group, "group"));
  });
}

moe_status_t moe_group_add(moe_group_t group, const_moe_layer_t layer) {
  return guarded(__func__, [&] {
    moe_group& g = group_of(group);
    layer_of(layer);
    g.layers.push_back(layer);
  });
}

moe_status_t moe_group_get_metrics(moe_group_t group, moe_split_t split, moe_scope_t scope,
                                   moe_group_metrics_t* metrics) {
  return guarded(__func__, [&] {
    const moe_group& g = group_of(group);
    checked_split(split);
    checked_scope(scope);
    const moe_group_metrics_t defaults = MOE_GROUP_METRICS_INIT;
    moe_group_metrics_t out = moe::read_sized(metrics, defaults, "metrics");
    const double nan = std::nan("");
    double frac_sum = 0, frac_max = nan, active_min = nan, aux_sum = 0, drop_sum = 0;
    int64_t counted = 0;
    for (const_moe_layer_t layer : g.layers) {
      const moe::MetricSet m = metrics_of(layer_of(layer), split, scope);
      const double max_frac = m.scalar("max_frac");
      if (std::isnan(max_frac)) continue;
      frac_sum += max_frac;
      frac_max = counted ? std::max(frac_max, max_frac) : max_frac;
      const double active = m.scalar("active_experts");
      active_min = counted ? std::min(active_min, active) : active;
      const double aux = m.scalar("aux_loss_scaled");
      aux_sum += std::isnan(aux) ? 0.0 : aux;
      drop_sum += m.scalar("drop_rate");
      ++counted;
    }
    out.layers = static_cast<int64_t>(g.layers.size());
    out.max_frac_mean = counted ? frac_sum / static_cast<double>(counted) : nan;
    out.max_frac_max = frac_max;
    out.active_min = active_min;
    out.aux_mean = counted ? aux_sum / static_cast<double>(counted) : nan;
    out.drop_frac_mean = counted ? drop_sum / static_cast<double>(counted) : nan;
    out.collapsed = counted && (frac_max >= 0.90 || active_min <= 1) ? 1 : 0;
    moe::write_sized(metrics, out, "metrics");
  });
}

moe_status_t moe_group_telemetry_export(moe_group_t group, moe_export_format_t format,
                                        moe_split_t split, moe_scope_t scope, char* buffer,
                                        size_t capacity, size_t* length) {
  return guarded(__func__, [&] {
    const moe_group& g = group_of(group);
    require_pointer(length, "length");
    checked_export_format(format);
    checked_split(split);
    checked_scope(scope);
    std::vector<moe::MetricSet> metrics;
    metrics.reserve(g.layers.size());  // the exports point into it
    std::vector<moe::LayerExport> layers;
    for (const_moe_layer_t layer : g.layers) {
      const moe::Layer& l = layer_of(layer);
      metrics.push_back(metrics_of(l, split, scope));
      layers.push_back(export_of(l, metrics.back(), split, scope));
    }
    hand_out(moe::export_metrics(format, layers), buffer, capacity, length);
  });
}

}  // extern "C"
