#include "core/pipeline.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "core/stage_timer.hpp"
#include "core/tensor_check.hpp"

namespace moe {
namespace {

template <typename S>
const S* data_of(const moe_tensor_t& t) {
  return static_cast<const S*>(t.data);
}

template <typename S>
ExpertWeights<S> expert_weights(const Layer& layer) {
  const BoundWeights& w = layer.weights;
  return {data_of<S>(w.w1), data_of<S>(w.b1), data_of<S>(w.w2), data_of<S>(w.b2)};
}

void check_weight_set(const LayerConfig& c, moe_device_t device, const moe_weights_t& w,
                      const char* prefix, bool allow_missing) {
  const int64_t d = c.d_model, E = c.num_experts, F = c.ff_width();
  const std::string p(prefix);
  auto check = [&](const moe_tensor_t& t, const std::string& name,
                   std::initializer_list<int64_t> shape, bool wanted) {
    if (tensor_is_empty(t)) {
      require(!wanted || allow_missing, MOE_STATUS_NULL_POINTER, p + name + " is missing");
      return;
    }
    require(wanted, MOE_STATUS_INVALID_ARGUMENT,
            p + name + " was given, but the layer has no such parameter (" +
                (name == "router" ? "the hash router has no weights" : "expert_bias is 0") + ")");
    check_tensor(t, (p + name).c_str(), c.dtype, device, shape);
  };
  check(w.router, "router", {d, E}, c.learned_router());
  check(w.w1, "w1", {E, d, F}, true);
  check(w.b1, "b1", {E, F}, c.expert_bias);
  check(w.w2, "w2", {E, c.d_ff, d}, true);
  check(w.b2, "b2", {E, d}, c.expert_bias);
}

template <typename S>
std::unique_ptr<SavedState> forward_typed(Layer& layer, const moe_forward_args_t& args) {
  const LayerConfig& c = layer.config;
  const int64_t T = args.x.shape[0], d = c.d_model, E = c.num_experts;
  const S* x = data_of<S>(args.x);
  S* y = static_cast<S*>(args.y.data);
  Backend& backend = layer.backend;
  moe_stage_profile_t& profile = layer.profile;
  StageTimer timer;

  auto saved = std::make_unique<SavedTensors<S>>();
  saved->layer_serial = layer.serial;
  saved->dtype = c.dtype;

  host_buffer<S> logits;
  if (c.learned_router()) {
    logits.resize(static_cast<size_t>(T * E));
    backend.router_logits(c, T, x, data_of<S>(layer.weights.router), logits.data());
  }
  const RouterState state{&layer.selection_bias, &layer.hash_table, layer.step, args.train != 0};
  saved->routing = route<S>(c, state, x, logits.data(), args.token_ids, T);
  const Routing& routing = saved->routing;
  profile.router += timer.lap();

  saved->x.assign(x, x + T * d);
  for (int64_t t = 0; t < T; ++t)
    if (routing.nonfinite[t]) std::fill_n(&saved->x[t * d], d, S(0));
  timer.lap();  // saving the input counts as "other"

  saved->plan = make_plan(c, T, routing.expert, routing.gate, routing.fixed_capacity);
  const Plan& plan = saved->plan;
  profile.plan += timer.lap();

  saved->xp.resize(plan.rows * d);
  saved->h_pre.resize(plan.rows * c.ff_width());
  saved->h.resize(plan.rows * c.d_ff);
  saved->yp.resize(plan.rows * d);
  ExpertActivations<S> acts{saved->xp.data(), saved->h_pre.data(), saved->h.data(),
                            saved->yp.data()};
  timer.lap();  // allocation counts as "other"
  backend.permute(c, plan, saved->x.data(), acts.xp);
  profile.permute += timer.lap();
  // (expert parallelism: exchange rows to the experts' owners here)
  backend.experts_forward(c, plan, expert_weights<S>(layer), acts);
  profile.experts += timer.lap();
  // (expert parallelism: exchange results back here)
  backend.combine(c, plan, routing.gate.data(), acts.yp, y);
  profile.combine += timer.lap();
  return saved;
}

template <typename S>
void zero_if_present(const moe_tensor_t& t, int64_t elements) {
  if (t.data) std::fill_n(static_cast<S*>(t.data), elements, S(0));
}

template <typename S>
void backward_typed(Layer& layer, const SavedState& base, const moe_backward_args_t& args) {
  const auto& saved = static_cast<const SavedTensors<S>&>(base);
  const LayerConfig& c = layer.config;
  const Routing& routing = saved.routing;
  const Plan& plan = saved.plan;
  const int64_t T = plan.tokens, d = c.d_model, E = c.num_experts, F = c.ff_width();
  const moe_weights_t& g = args.grads;
  S* dx = static_cast<S*>(args.dx.data);
  Backend& backend = layer.backend;
  moe_stage_profile_t& profile = layer.profile;
  StageTimer timer;

  if (!(args.flags & MOE_BACKWARD_ACCUMULATE)) {
    zero_if_present<S>(args.dx, T * d);
    zero_if_present<S>(g.router, d * E);
    zero_if_present<S>(g.w1, E * d * F);
    zero_if_present<S>(g.b1, E * F);
    zero_if_present<S>(g.w2, E * c.d_ff * d);
    zero_if_present<S>(g.b2, E * d);
  }

  host_buffer<S> dyp(plan.rows * d), dxp(plan.rows * d);
  std::vector<double> dgate(T * plan.slots);
  timer.lap();  // zeroing and allocation count as "other"
  backend.combine_backward(c, plan, routing.gate.data(), saved.yp.data(), data_of<S>(args.dy),
                           dyp.data(), dgate.data());
  profile.combine_backward += timer.lap();
  const ExpertActivations<S> acts{const_cast<S*>(saved.xp.data()),
                                  const_cast<S*>(saved.h_pre.data()),
                                  const_cast<S*>(saved.h.data()), const_cast<S*>(saved.yp.data())};
  ExpertGradients<S> grads{static_cast<S*>(g.w1.data), static_cast<S*>(g.b1.data),
                           static_cast<S*>(g.w2.data), static_cast<S*>(g.b2.data)};
  backend.experts_backward(c, plan, expert_weights<S>(layer), acts, dyp.data(), dxp.data(), grads);
  profile.experts_backward += timer.lap();
  if (dx) backend.permute_backward(c, plan, dxp.data(), dx);
  profile.permute_backward += timer.lap();

  if (c.learned_router()) {
    std::vector<double> dlogits;
    route_backward(c, routing, dgate, dlogits);
    const host_buffer<S> dz(dlogits.begin(), dlogits.end());
    backend.router_logits_backward(c, T, saved.x.data(), data_of<S>(layer.weights.router),
                                   dz.data(), dx, static_cast<S*>(g.router.data));
    profile.router_backward += timer.lap();
  }
}

}  // namespace

void bind_weights(Layer& layer, const moe_weights_t& w) {
  check_weight_set(layer.config, layer.backend.device(), w, "weights.", false);
  layer.weights.router = w.router;
  layer.weights.w1 = w.w1;
  layer.weights.b1 = w.b1;
  layer.weights.w2 = w.w2;
  layer.weights.b2 = w.b2;
  layer.weights.bound = true;
}

std::unique_ptr<SavedState> forward(Layer& layer, const moe_forward_args_t& args) {
  const LayerConfig& c = layer.config;
  require(layer.weights.bound, MOE_STATUS_INVALID_STATE,
          "forward before moe_layer_set_weights: bind the layer's weights first");
  require(args.x.ndim == 2, MOE_STATUS_SHAPE_MISMATCH,
          "args.x must have rank 2 [T, d], got rank " + std::to_string(args.x.ndim));
  const int64_t T = args.x.shape[0];
  require(T >= 0, MOE_STATUS_SHAPE_MISMATCH, "args.x has a negative token count");
  const moe_device_t device = layer.backend.device();
  check_tensor(args.x, "args.x", c.dtype, device, {T, c.d_model});
  check_tensor(args.y, "args.y", c.dtype, device, {T, c.d_model});
  require(args.seq_len >= 0, MOE_STATUS_INVALID_ARGUMENT, "args.seq_len must be >= 0");
  require(args.train == 0 || args.train == 1, MOE_STATUS_INVALID_ARGUMENT,
          "args.train must be 0 or 1");
  require(!(c.router == MOE_ROUTER_HASH && args.token_ids == nullptr && T > 0 &&
            (c.hash_mode == MOE_HASH_MIX || c.hash_mode == MOE_HASH_TABLE)),
          MOE_STATUS_NULL_POINTER,
          "args.token_ids is NULL, but the hash router's mode (mix/table) needs token ids");
  StageTimer total;
  std::unique_ptr<SavedState> saved;
  if (DevicePipeline* pipeline = layer.backend.device_pipeline()) {
    saved = pipeline->forward(layer, args);
  } else if (c.dtype == MOE_DTYPE_F64) {
    saved = forward_typed<double>(layer, args);
  } else if (c.dtype == MOE_DTYPE_BF16) {
    saved = forward_typed<bfloat16>(layer, args);
  } else {
    saved = forward_typed<float>(layer, args);
  }
  saved->expert_choice = c.router == MOE_ROUTER_EXPERT_CHOICE;
  saved->losses.aux_loss = saved->routing.aux_loss;
  saved->losses.aux_loss_scaled = c.load_balance_alpha * saved->routing.aux_loss;
  saved->losses.z_loss = saved->routing.z_loss;
  saved->losses.z_loss_scaled = c.z_loss_coef * saved->routing.z_loss;
  StageTimer telemetry;
  if (layer.telemetry.due())
    layer.telemetry.record(args.train != 0, saved->step_stats(c, args.seq_len), c, layer.step);
  layer.profile.telemetry += telemetry.lap();
  // Training-only state changes come last, once nothing can fail any more.
  if (args.train) {
    update_selection_bias(c, saved->plan.demand, layer.selection_bias);
    ++layer.step;
  }
  layer.profile.forward_total += total.lap();
  ++layer.profile.forward_calls;
  return saved;
}

void backward(Layer& layer, const SavedState& saved, const moe_backward_args_t& args) {
  const LayerConfig& c = layer.config;
  require(saved.layer_serial == layer.serial, MOE_STATUS_INVALID_ARGUMENT,
          "ctx was produced by a different layer");
  require(layer.weights.bound, MOE_STATUS_INVALID_STATE, "backward before set_weights");
  const int64_t T = saved.plan.tokens;
  const moe_device_t device = layer.backend.device();
  check_tensor(args.dy, "args.dy", c.dtype, device, {T, c.d_model});
  if (!tensor_is_empty(args.dx)) check_tensor(args.dx, "args.dx", c.dtype, device, {T, c.d_model});
  require((args.flags & ~MOE_BACKWARD_ACCUMULATE) == 0, MOE_STATUS_INVALID_ARGUMENT,
          "args.flags has unknown bits");
  check_weight_set(c, device, args.grads, "args.grads.", true);
  StageTimer total;
  if (DevicePipeline* pipeline = layer.backend.device_pipeline()) {
    pipeline->backward(layer, saved, args);
  } else if (c.dtype == MOE_DTYPE_F64) {
    backward_typed<double>(layer, saved, args);
  } else if (c.dtype == MOE_DTYPE_BF16) {
    backward_typed<bfloat16>(layer, saved, args);
  } else {
    backward_typed<float>(layer, saved, args);
  }
  layer.profile.backward_total += total.lap();
  ++layer.profile.backward_calls;
}

}  // namespace moe
