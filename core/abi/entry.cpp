#include "core/abi/entry.hpp"

#include <cstring>

#include "core/layer/pipeline.hpp"
#include "core/raw_enum.hpp"

namespace moe::abi {

std::string& last_error() {
  thread_local std::string message;
  return message;
}

moe_status_t fail(moe_status_t status, const std::string& message) {
  last_error() = message;
  return status;
}

HandleRegistry& registry() {
  return HandleRegistry::instance();
}

Layer& layer_of(const_moe_layer_t handle) {
  Layer& layer = layer_unsettled(handle);
  settle_pending_forward(layer);
  return layer;
}

Layer& layer_unsettled(const_moe_layer_t handle) {
  Layer& layer = handle_object<moe_layer>(handle, HandleKind::Layer, "layer").impl;
  enter_layer(layer);
  return layer;
}

const SavedState& state_of(const_moe_ctx_t handle) {
  const SavedState& state = state_unsettled(handle);
  if (state.settle) state.settle();
  return state;
}

const SavedState& state_unsettled(const_moe_ctx_t handle) {
  return *handle_object<moe_ctx>(handle, HandleKind::Ctx, "ctx").state;
}

moe_comm& comm_of(moe_comm_t comm) {
  return handle_object<moe_comm>(comm, HandleKind::Comm, "comm");
}

moe_group& group_of(moe_group_t group) {
  return handle_object<moe_group>(group, HandleKind::Group, "group");
}

void require_pointer(const void* p, const char* name) {
  require(p != nullptr, MOE_STATUS_NULL_POINTER, std::string(name) + " is NULL");
}

void require_expert_count(const Layer& layer, int64_t count) {
  require(count == layer.config.num_experts, MOE_STATUS_SHAPE_MISMATCH,
          "count is " + std::to_string(count) + ", the layer has " +
              std::to_string(layer.config.num_experts) + " experts");
}

void require_global_aux(const Layer& layer) {
  require(layer.config.aux_loss_scope == MOE_AUX_LOSS_GLOBAL, MOE_STATUS_INVALID_STATE,
          "the layer's aux_loss_scope is not global: only the global-batch aux loss "
          "accumulates counts (and sums them over a data-parallel communicator)");
}

moe_split_t checked_split(const moe_split_t& split) {
  require_enum(split, MOE_SPLIT_TRAIN, MOE_SPLIT_EVAL, "split", "moe_split_t");
  return split;
}

moe_scope_t checked_scope(const moe_scope_t& scope) {
  require_enum(scope, MOE_SCOPE_LAST, MOE_SCOPE_EMA, "scope", "moe_scope_t");
  return scope;
}

void checked_export_format(const moe_export_format_t& format) {
  require_enum(format, MOE_EXPORT_JSONL, MOE_EXPORT_CSV_ROW, "format", "moe_export_format_t");
}

MetricSet metrics_of(const Layer& l, const moe_split_t& split, const moe_scope_t& scope) {
  return l.telemetry.metrics(checked_split(split), checked_scope(scope), l.config);
}

LayerExport export_of(const Layer& l, const MetricSet& m, moe_split_t split, moe_scope_t scope) {
  return {&m, {l.name, split, scope, l.telemetry.recorded_step(split)}, l.config.num_experts};
}

void hand_out(const std::string& text, char* buffer, size_t capacity, size_t* length) {
  *length = text.size();
  if (buffer && capacity > text.size()) std::memcpy(buffer, text.c_str(), text.size() + 1);
}

}  // namespace moe::abi
