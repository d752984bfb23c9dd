#include "core/layer/pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/aux_loss.hpp"
#include "core/error.hpp"
#include "core/layer/chunked_forward.hpp"
#include "core/layer/replica_gradients.hpp"
#include "core/layer/shared_experts.hpp"
#include "core/stage_timer.hpp"
#include "core/tensor_check.hpp"
#include "dist/batch_stats.hpp"
#include "dist/check_in.hpp"
#include "dist/route_tokens.hpp"
#include "dist/row_exchange.hpp"

namespace moe {
namespace {

// Charges a lap to `stage`, less the time its exchanges took, which goes to `exchange`.
void charge(double& stage, double& exchange, double lap, dist::ExpertParallel* ep) {
  const double waited = ep ? ep->take_exchange_seconds() : 0.0;
  stage += lap - waited;
  exchange += waited;
}

int64_t total(const std::vector<int64_t>& counts) {
  return std::accumulate(counts.begin(), counts.end(), int64_t{0});
}

template <typename S>
const S* data_of(const moe_tensor_t& t) {
  return static_cast<const S*>(t.data);
}

template <typename S>
ExpertWeights<S> expert_weights(const Layer& layer) {
  const BoundWeights& w = layer.weights;
  return {data_of<S>(w.w1), data_of<S>(w.b1), data_of<S>(w.w2), data_of<S>(w.b2)};
}

// Expert tensors are [experts_held, ...]: every expert, or this rank's under expert
// parallelism (none at all on a rank that owns no expert).
void check_weight_set(const LayerConfig& c, int64_t experts_held, moe_device_t device,
                      const moe_weights_t& w, const char* prefix, bool allow_missing) {
  const int64_t d = c.d_model, E = c.num_experts, F = c.ff_width(), H = experts_held;
  const std::string p(prefix);
  auto check = [&](const moe_tensor_t& t, const std::string& name,
                   std::initializer_list<int64_t> shape, bool wanted) {
    if (tensor_is_empty(t)) {
      require(!wanted || allow_missing, MOE_STATUS_NULL_POINTER, p + name + " is missing");
      return;
    }
    require(wanted, MOE_STATUS_INVALID_ARGUMENT,
            p + name + " was given, but the layer has no such parameter (" +
                (name == "router"               ? "the hash router has no weights"
                 : name == "shared_gate"        ? "shared_expert_gate is 0"
                 : name.rfind("shared", 0) == 0 ? "num_shared_experts is 0"
                                                : "expert_bias is 0") +
                ")");
    check_tensor(t, (p + name).c_str(), c.dtype, device, shape);
  };
  check(w.router, "router", {d, E}, c.learned_router());
  // Every rank holds the shared experts whole, whatever experts it owns.
  const bool shared = c.num_shared_experts > 0;
  check(w.shared_w1, "shared_w1", {d, c.shared_ff_width()}, shared);
  check(w.shared_w2, "shared_w2", {c.shared_width(), d}, shared);
  check(w.shared_gate, "shared_gate", {d, 1}, c.shared_expert_gate);
  if (H == 0) allow_missing = true;
  check(w.w1, "w1", {H, d, F}, true);
  check(w.b1, "b1", {H, F}, c.expert_bias);
  check(w.w2, "w2", {H, c.d_ff, d}, true);
  check(w.b2, "b2", {H, d}, c.expert_bias);
}

// The expert stage of forward: permute, experts, combine; under expert parallelism
// with the rows' trip to their experts' owners and back in between.
template <typename S>
void expert_stage_forward(Layer& layer, SavedTensors<S>& saved, S* y, StageTimer& timer) {
  const LayerConfig& c = layer.config;
  const int64_t d = c.d_model;
  Backend& backend = layer.backend;
  moe_stage_profile_t& profile = layer.profile;
  const Plan& plan = saved.plan;
  const dist::Dispatch* dispatch = saved.dispatch.get();
  const Plan& expert_plan = dispatch ? dispatch->local : plan;
  const LayerConfig& expert_config = dispatch ? dispatch->local_config : c;

  saved.xp.resize(expert_plan.rows * d);
  saved.h_pre.resize(expert_plan.rows * c.ff_width());
  saved.h.resize(expert_plan.rows * c.d_ff);
  saved.yp.resize(expert_plan.rows * d);
  ExpertActivations<S> acts{saved.xp.data(), saved.h_pre.data(), saved.h.data(), saved.yp.data()};
  timer.lap();  // allocation counts as "other"
  if (!dispatch) {
    backend.permute(c, plan, saved.x.data(), acts.xp);
    profile.permute += timer.lap();
    backend.experts_forward(c, plan, expert_weights<S>(layer), acts);
    profile.experts += timer.lap();
    backend.combine(c, plan, saved.routing.gate.data(), acts.yp, y);
    profile.combine += timer.lap();
    return;
  }
  dist::ExpertParallel& ep = *layer.ep;
  if (dispatch->routes) {
    // One row per (token, rank) out; each rank's gate-weighted sum of the token's
    // results back, added in rank order.
    const dist::TokenRoutes& routes = *dispatch->routes;
    host_buffer<S> sent(routes.to_ranks.rows * d);
    backend.permute(c, routes.to_ranks, saved.x.data(), sent.data());
    if (ep.chunks > 1) {
      profile.permute += timer.lap();
      host_buffer<S> returned(routes.to_ranks.rows * d);
      chunked_token_forward(backend, c, expert_config, expert_plan, routes,
                            expert_weights<S>(layer), ep, sent.data(), acts, returned.data());
      charge(profile.experts, profile.exchange, timer.lap(), &ep);
      const std::vector<double> ones(routes.to_ranks.row.size(), 1.0);
      backend.combine(c, routes.to_ranks, ones.data(), returned.data(), y);
      profile.combine += timer.lap();
      return;
    }
    const host_buffer<S> received =
        dist::exchange_rows(ep, sent.data(), routes.send_rows, routes.recv_rows, d,
                            total(routes.copies_out), total(routes.copies_in));
    dist::gather_rows(received.data(), expert_plan.token_of_row, d, acts.xp);
    charge(profile.permute, profile.exchange, timer.lap(), &ep);
    if (expert_plan.rows > 0)
      backend.experts_forward(expert_config, expert_plan, expert_weights<S>(layer), acts);
    profile.experts += timer.lap();
    host_buffer<S> partial(routes.copies.tokens * d);
    backend.combine(c, routes.copies, routes.gate.data(), acts.yp, partial.data());
    const host_buffer<S> returned =
        dist::exchange_rows(ep, partial.data(), routes.recv_rows, routes.send_rows, d,
                            total(routes.copies_in), total(routes.copies_out));
    const std::vector<double> ones(routes.to_ranks.row.size(), 1.0);
    backend.combine(c, routes.to_ranks, ones.data(), returned.data(), y);
    charge(profile.combine, profile.exchange, timer.lap(), &ep);
    return;
  }
  host_buffer<S> sent(plan.rows * d);
  backend.permute(c, plan, saved.x.data(), sent.data());
  const host_buffer<S> received =
      dist::exchange_rows(ep, sent.data(), dispatch->send_rows, dispatch->recv_rows, d);
  dist::gather_rows(received.data(), expert_plan.token_of_row, d, acts.xp);
  charge(profile.permute, profile.exchange, timer.lap(), &ep);
  if (expert_plan.rows > 0)
    backend.experts_forward(expert_config, expert_plan, expert_weights<S>(layer), acts);
  profile.experts += timer.lap();
  host_buffer<S> results(expert_plan.rows * d);
  dist::gather_rows(acts.yp, expert_plan.row, d, results.data());
  saved.returned =
      dist::exchange_rows(ep, results.data(), dispatch->recv_rows, dispatch->send_rows, d);
  backend.combine(c, plan, saved.routing.gate.data(), saved.returned.data(), y);
  charge(profile.combine, profile.exchange, timer.lap(), &ep);
}

template <typename S>
std::unique_ptr<SavedState> forward_typed(Layer& layer, const moe_forward_args_t& args,
                                          const dist::ForwardCheckIn& group) {
  const LayerConfig& c = layer.config;
  const int64_t T = args.x.shape[0], d = c.d_model, E = c.num_experts;
  const S* x = data_of<S>(args.x);
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
  // Selection noise is drawn per batch token: under expert parallelism this rank's
  // tokens start where the lower ranks' end.
  const RouterState state{&layer.selection_bias, &layer.hash_table, layer.step,  args.train != 0,
                          group.token_offset,    args.token_mask,   args.seq_len};
  saved->routing = route<S>(c, state, x, logits.data(), args.token_ids, T);
  const Routing& routing = saved->routing;
  profile.router += timer.lap();

  saved->x.assign(x, x + T * d);
  for (int64_t t = 0; t < T; ++t)
    if (routing.nonfinite[t]) std::fill_n(&saved->x[t * d], d, S(0));
  timer.lap();  // saving the input counts as "other"

  if (layer.ep) {
    saved->dispatch = std::make_unique<dist::Dispatch>(
        dist::make_dispatch(*layer.ep, c, group.call, saved->routing, saved->plan));
  } else {
    saved->plan = make_plan(c, T, routing.expert, routing.gate, routing.fill_priority,
                            routing.fixed_capacity);
  }
  if (c.renormalize_after_drops) renormalize_kept_gates(c, saved->plan.dropped, saved->routing);
  if (layer.ep && layer.ep->token_path())
    dist::route_tokens(*layer.ep, c, saved->routing, saved->plan.dropped, *saved->dispatch);
  charge(profile.plan, profile.exchange, timer.lap(), layer.ep.get());
  expert_stage_forward(layer, *saved, static_cast<S*>(args.y.data), timer);
  shared_experts_forward(layer, *saved, static_cast<S*>(args.y.data));
  profile.experts += timer.lap();
  return saved;
}

// What the selection-bias update counts: the batch's demand per expert, or with
// bias_update_from_served what each expert kept of it, min(demand, C): under expert
// parallelism the group's demand and C, so every rank counts the same.
std::vector<int64_t> bias_update_counts(const LayerConfig& c, const SavedState& saved) {
  std::vector<int64_t> counts = saved.batch_demand();
  if (!c.bias_update_from_served) return counts;
  for (int64_t& n : counts) n = std::min(n, saved.plan.capacity);
  return counts;
}

template <typename S>
void zero_if_present(const moe_tensor_t& t, int64_t elements) {
  if (t.data) std::fill_n(static_cast<S*>(t.data), elements, S(0));
}

// The expert stage of backward, mirroring expert_stage_forward: from dy to the expert
// gradients, dgate and dx's share through the experts.
template <typename S>
void expert_stage_backward(Layer& layer, const SavedTensors<S>& saved,
                           const moe_backward_args_t& args, std::vector<double>& dgate,
                           StageTimer& timer) {
  const LayerConfig& c = layer.config;
  const int64_t d = c.d_model;
  const Plan& plan = saved.plan;
  const dist::Dispatch* dispatch = saved.dispatch.get();
  const Plan& expert_plan = dispatch ? dispatch->local : plan;
  const LayerConfig& expert_config = dispatch ? dispatch->local_config : c;
  Backend& backend = layer.backend;
  moe_stage_profile_t& profile = layer.profile;
  const double* gate = saved.routing.gate.data();
  const S* dy = data_of<S>(args.dy);
  S* dx = static_cast<S*>(args.dx.data);
  const moe_weights_t& g = args.grads;
  const ExpertActivations<S> acts{const_cast<S*>(saved.xp.data()),
                                  const_cast<S*>(saved.h_pre.data()),
                                  const_cast<S*>(saved.h.data()), const_cast<S*>(saved.yp.data())};
  ExpertGradients<S> grads{static_cast<S*>(g.w1.data), static_cast<S*>(g.b1.data),
                           static_cast<S*>(g.w2.data), static_cast<S*>(g.b2.data)};
  host_buffer<S> dyp(expert_plan.rows * d), dxp(expert_plan.rows * d);
  timer.lap();  // allocation counts as "other"
  if (!dispatch) {
    backend.combine_backward(c, plan, gate, saved.yp.data(), dy, dyp.data(), dgate.data());
    profile.combine_backward += timer.lap();
    backend.experts_backward(c, plan, expert_weights<S>(layer), acts, dyp.data(), dxp.data(),
                             grads);
    profile.experts_backward += timer.lap();
    if (dx) backend.permute_backward(c, plan, dxp.data(), dx);
    profile.permute_backward += timer.lap();
    return;
  }
  dist::ExpertParallel& ep = *layer.ep;
  if (dispatch->routes) {
    const dist::TokenRoutes& routes = *dispatch->routes;
    host_buffer<S> dy_sent(routes.to_ranks.rows * d);
    backend.permute(c, routes.to_ranks, dy, dy_sent.data());
    const host_buffer<S> dy_received =
        dist::exchange_rows(ep, dy_sent.data(), routes.send_rows, routes.recv_rows, d,
                            total(routes.copies_out), total(routes.copies_in));
    std::vector<double> dgate_here(routes.copies.row.size(), 0.0);
    backend.combine_backward(c, routes.copies, routes.gate.data(), saved.yp.data(),
                             dy_received.data(), dyp.data(), dgate_here.data());
    charge(profile.combine_backward, profile.exchange_backward, timer.lap(), &ep);
    // A replicated expert's gradient is summed over its holders.
    ReplicaGradients<S> replicas(ep, c, grads);
    if (expert_plan.rows > 0)
      backend.experts_backward(expert_config, expert_plan, expert_weights<S>(layer), acts,
                               dyp.data(), dxp.data(), replicas.target());
    profile.experts_backward += timer.lap();
    replicas.sum_into(grads);
    charge(profile.experts_backward, profile.exchange_backward, timer.lap(), &ep);
    host_buffer<S> partial(routes.copies.tokens * d);
    std::fill_n(partial.data(), partial.size(), S(0));
    backend.permute_backward(c, routes.copies, dxp.data(), partial.data());
    // The copies' gate gradients go back to their tokens' ranks, in message order.
    std::vector<double> dgate_out(routes.received_copy.size()), dgate_in(routes.sent_copy.size());
    for (size_t i = 0; i < dgate_out.size(); ++i)
      dgate_out[i] = dgate_here[routes.received_copy[i]];
    ep.exchange(dgate_out.data(), dist::bytes_of_rows(routes.copies_in, sizeof(double)),
                dgate_in.data(), dist::bytes_of_rows(routes.copies_out, sizeof(double)));
    ep.count_rows(static_cast<int64_t>(dgate_out.size() * sizeof(double)),
                  static_cast<int64_t>(dgate_in.size() * sizeof(double)), 0, 0);
    for (size_t i = 0; i < dgate_in.size(); ++i) dgate[routes.sent_copy[i]] = dgate_in[i];
    const host_buffer<S> dx_returned =
        dist::exchange_rows(ep, partial.data(), routes.recv_rows, routes.send_rows, d,
                            total(routes.copies_in), total(routes.copies_out));
    if (dx) backend.permute_backward(c, routes.to_ranks, dx_returned.data(), dx);
    charge(profile.permute_backward, profile.exchange_backward, timer.lap(), &ep);
    return;
  }
  host_buffer<S> dy_sent(plan.rows * d);
  backend.combine_backward(c, plan, gate, saved.returned.data(), dy, dy_sent.data(), dgate.data());
  const host_buffer<S> dy_received =
      dist::exchange_rows(ep, dy_sent.data(), dispatch->send_rows, dispatch->recv_rows, d);
  dist::gather_rows(dy_received.data(), expert_plan.token_of_row, d, dyp.data());
  charge(profile.combine_backward, profile.exchange_backward, timer.lap(), &ep);
  if (expert_plan.rows > 0)
    backend.experts_backward(expert_config, expert_plan, expert_weights<S>(layer), acts, dyp.data(),
                             dxp.data(), grads);
  profile.experts_backward += timer.lap();
  host_buffer<S> dx_results(expert_plan.rows * d);
  dist::gather_rows(dxp.data(), expert_plan.row, d, dx_results.data());
  const host_buffer<S> dx_returned =
      dist::exchange_rows(ep, dx_results.data(), dispatch->recv_rows, dispatch->send_rows, d);
  if (dx) backend.permute_backward(c, plan, dx_returned.data(), dx);
  charge(profile.permute_backward, profile.exchange_backward, timer.lap(), &ep);
}

template <typename S>
void backward_typed(Layer& layer, const SavedState& base, const moe_backward_args_t& args) {
  const auto& saved = static_cast<const SavedTensors<S>&>(base);
  const LayerConfig& c = layer.config;
  const Routing& routing = saved.routing;
  const int64_t T = saved.plan.tokens, d = c.d_model, E = c.num_experts, F = c.ff_width();
  const int64_t H = layer.experts_held();
  const moe_weights_t& g = args.grads;
  S* dx = static_cast<S*>(args.dx.data);
  StageTimer timer;

  if (!(args.flags & MOE_BACKWARD_ACCUMULATE)) {
    zero_if_present<S>(args.dx, T * d);
    zero_if_present<S>(g.router, d * E);
    zero_if_present<S>(g.w1, H * d * F);
    zero_if_present<S>(g.b1, H * F);
    zero_if_present<S>(g.w2, H * c.d_ff * d);
    zero_if_present<S>(g.b2, H * d);
    zero_if_present<S>(g.shared_w1, d * c.shared_ff_width());
    zero_if_present<S>(g.shared_w2, c.shared_width() * d);
    zero_if_present<S>(g.shared_gate, d);
  }
  std::vector<double> dgate(T * saved.plan.slots);
  expert_stage_backward(layer, saved, args, dgate, timer);
  shared_experts_backward(layer, saved, args);
  layer.profile.experts_backward += timer.lap();

  if (c.learned_router()) {
    std::vector<double> dlogits;
    route_backward(c, routing, dgate, args.aux_loss_grad, args.z_loss_grad, dlogits);
    const host_buffer<S> dz(dlogits.begin(), dlogits.end());
    layer.backend.router_logits_backward(c, T, saved.x.data(), data_of<S>(layer.weights.router),
                                         dz.data(), dx, static_cast<S*>(g.router.data));
    layer.profile.router_backward += timer.lap();
  }
}

}  // namespace

void bind_weights(Layer& layer, const moe_weights_t& w) {
  check_weight_set(layer.config, layer.experts_held(), layer.backend.device(), w, "weights.",
                   false);
  layer.weights.router = w.router;
  layer.weights.w1 = w.w1;
  layer.weights.b1 = w.b1;
  layer.weights.w2 = w.w2;
  layer.weights.b2 = w.b2;
  layer.weights.shared_w1 = w.shared_w1;
  layer.weights.shared_w2 = w.shared_w2;
  layer.weights.shared_gate = w.shared_gate;
  layer.weights.bound = true;
}

namespace {

void check_forward_args(const Layer& layer, const moe_forward_args_t& args) {
  const LayerConfig& c = layer.config;
  require(layer.weights.bound, MOE_STATUS_INVALID_STATE,
          "forward before moe_layer_set_weights: bind the layer's weights first");
  require(args.x.ndim == 2, MOE_STATUS_SHAPE_MISMATCH,
          "args.x must have rank 2 [T, d], got rank " + std::to_string(args.x.ndim));
  const int64_t T = args.x.shape[0];
  require(T >= 0, MOE_STATUS_SHAPE_MISMATCH, "args.x has a negative token count");
  require(T <= kMaxTokens, MOE_STATUS_INVALID_ARGUMENT,
          "args.x has " + std::to_string(T) + " tokens, more than one call takes (2^40)");
  checked_elements({T, c.num_experts}, "the routing scores [T, num_experts]");
  checked_elements({T, c.slots(), std::max(c.d_model, c.ff_width())},
                   "the expert activations [T * slots, max(d_model, d_ff)]");
  const moe_device_t device = layer.backend.device();
  check_tensor(args.x, "args.x", c.dtype, device, {T, c.d_model});
  check_tensor(args.y, "args.y", c.dtype, device, {T, c.d_model});
  require(args.seq_len >= 0, MOE_STATUS_INVALID_ARGUMENT, "args.seq_len must be >= 0");
  require(args.train == 0 || args.train == 1, MOE_STATUS_INVALID_ARGUMENT,
          "args.train must be 0 or 1");
  require(args.recompute == 0 || (args.recompute == 1 && args.train == 1),
          MOE_STATUS_INVALID_ARGUMENT,
          "args.recompute must be 0, or 1 with train 1 (it recomputes a training call)");
  // An evaluation call may leave seq_len 0: its loss is then the call's as one sequence.
  require(c.aux_loss_scope != MOE_AUX_LOSS_SEQUENCE ||
              (args.seq_len > 0 ? T % args.seq_len == 0 : args.train == 0),
          MOE_STATUS_INVALID_ARGUMENT,
          "aux_loss_scope sequence averages over sequences of args.seq_len consecutive "
          "tokens: a training call's seq_len must be > 0 and divide the call's tokens (an "
          "evaluation call's may be 0), got seq_len=" +
              std::to_string(args.seq_len) + " for " + std::to_string(T) + " tokens");
  require(!args.train || layer.step < kMaxStep, MOE_STATUS_INVALID_STATE,
          "the step counter is at its limit, 2^62: a training call cannot count on "
          "(moe_layer_set_step to restart it)");
  require(args.token_mask == nullptr || layer.backend.device_pipeline() == nullptr,
          MOE_STATUS_UNSUPPORTED,
          std::string("args.token_mask: backend '") + layer.backend.name() +
              "' does not take a token mask yet (the host backends do)");
  require(!(c.router == MOE_ROUTER_HASH && args.token_ids == nullptr && T > 0 &&
            (c.hash_mode == MOE_HASH_MIX || c.hash_mode == MOE_HASH_TABLE)),
          MOE_STATUS_NULL_POINTER,
          "args.token_ids is NULL, but the hash router's mode (mix/table) needs token ids");
}

void check_backward_args(const Layer& layer, const SavedState& saved,
                         const moe_backward_args_t& args) {
  const LayerConfig& c = layer.config;
  require(saved.layer_serial == layer.serial, MOE_STATUS_INVALID_ARGUMENT,
          "ctx was produced by a different layer");
  require(layer.weights.bound, MOE_STATUS_INVALID_STATE, "backward before set_weights");
  require((saved.dispatch != nullptr) == (layer.ep != nullptr), MOE_STATUS_INVALID_STATE,
          "ctx was produced before the layer's communicator was attached or detached");
  require(!saved.dispatch || saved.dispatch->placement_epoch == layer.ep->placement_epoch,
          MOE_STATUS_INVALID_STATE,
          "ctx was produced before the layer's placement changed (moe_layer_set_placement): "
          "its rows went to the old holders");
  const int64_t T = saved.plan.tokens;
  const moe_device_t device = layer.backend.device();
  check_tensor(args.dy, "args.dy", c.dtype, device, {T, c.d_model});
  if (!tensor_is_empty(args.dx)) check_tensor(args.dx, "args.dx", c.dtype, device, {T, c.d_model});
  require((args.flags & ~MOE_BACKWARD_ACCUMULATE) == 0, MOE_STATUS_INVALID_ARGUMENT,
          "args.flags has unknown bits");
  require(std::isfinite(args.aux_loss_grad) && std::isfinite(args.z_loss_grad),
          MOE_STATUS_INVALID_ARGUMENT,
          "args.aux_loss_grad and args.z_loss_grad must be finite, got " +
              std::to_string(args.aux_loss_grad) + " and " + std::to_string(args.z_loss_grad));
  check_weight_set(c, layer.experts_held(), device, args.grads, "args.grads.", true);
}

// Runs `check`; under expert parallelism, then checks in with the group, so that a
// refusal on any rank fails the call on every rank before anything moves. The
// check-in's time goes to `exchange`; exchange time left uncharged by an earlier call
// that failed midway is dropped first, so that it cannot reach this call's stages.
template <typename Check, typename CheckIn>
void checked_call(const Layer& layer, Check&& check, CheckIn&& check_in, double& exchange) {
  if (!layer.ep) {
    check();
    return;
  }
  layer.ep->take_exchange_seconds();
  std::unique_ptr<Error> refusal;
  try {
    check();
  } catch (const Error& e) {
    refusal = std::make_unique<Error>(e);
  }
  check_in(refusal.get());
  exchange += layer.ep->take_exchange_seconds();
}

// Forward's bookkeeping once the counts are on the host: the losses, telemetry, and the
// training call's state changes.
void finish_forward(Layer& layer, SavedState* saved, bool train, bool recompute, int64_t seq_len) {
  const LayerConfig& c = layer.config;
  // The global-batch loss reads f from the counts of every training call since the
  // reset, the data-parallel replicas' included (evaluation calls keep the batch's).
  // A recompute reads the counts as they stand: they hold its call's already when its
  // backward follows that call before another forward (micro-batch by micro-batch).
  std::vector<double> global_counts;
  if (c.aux_loss_scope == MOE_AUX_LOSS_GLOBAL && train) {
    if (recompute) {
      set_global_counts(c, layer.global_aux.counts(), saved->routing);
    } else {
      global_counts = layer.global_aux.with(saved->routing.batch_aux_demand);
      set_global_counts(c, global_counts, saved->routing);
    }
  }
  saved->losses.aux_loss = saved->routing.aux_loss;
  saved->losses.aux_loss_scaled = c.load_balance_alpha * saved->routing.aux_loss;
  saved->losses.z_loss = saved->routing.z_loss;
  saved->losses.z_loss_scaled = c.z_loss_coef * saved->routing.z_loss;
  StageTimer telemetry;
  if (layer.telemetry.due() && !recompute) {
    StepStats stats = saved->step_stats(c, seq_len);
    if (layer.ep) {
      const std::vector<int64_t>& computed = saved->dispatch->local.served;
      stats =
          dist::batch_step_stats(*layer.ep, stats, saved->routing.aux_loss, saved->routing.z_loss,
                                 std::accumulate(computed.begin(), computed.end(), int64_t{0}));
    }
    layer.telemetry.record(train, stats, c, layer.step);
  }
  charge(layer.profile.telemetry, layer.profile.exchange, telemetry.lap(), layer.ep.get());
  // Training-only state changes come last, once nothing can fail any more; a recompute
  // makes none.
  if (!recompute) layer.telemetry.count_forward();
  if (train && !recompute) {
    if (!global_counts.empty()) layer.global_aux.commit(std::move(global_counts));
    update_selection_bias(c, bias_update_counts(c, *saved), layer.selection_bias);
    const std::vector<int64_t> demand = saved->batch_demand();
    for (size_t e = 0; e < demand.size(); ++e)
      layer.expert_load[e] += static_cast<double>(demand[e]);
    ++layer.step;
  }
}

}  // namespace

std::unique_ptr<SavedState> forward(Layer& layer, const moe_forward_args_t& args) {
  settle_pending_forward(layer);  // the ABI's lookup has done so; C++ callers may not have
  const LayerConfig& c = layer.config;
  StageTimer total;
  dist::ForwardCheckIn group;
  checked_call(
      layer, [&] { check_forward_args(layer, args); },
      [&](const Error* refusal) {
        const int64_t T = refusal ? 0 : args.x.shape[0];
        group = dist::check_in_forward(*layer.ep, refusal, T, layer.step, layer.telemetry.due());
      },
      layer.profile.exchange);
  std::unique_ptr<SavedState> saved;
  if (DevicePipeline* pipeline = layer.backend.device_pipeline()) {
    saved = pipeline->forward(layer.device_view(), args, group);
  } else if (c.dtype == MOE_DTYPE_F64) {
    saved = forward_typed<double>(layer, args, group);
  } else if (c.dtype == MOE_DTYPE_BF16) {
    saved = forward_typed<bfloat16>(layer, args, group);
  } else {
    saved = forward_typed<float>(layer, args, group);
  }
  saved->expert_choice = c.router == MOE_ROUTER_EXPERT_CHOICE;
  if (saved->counts_pending) {
    // The counts are on their way: the bookkeeping waits for the next use of the layer
    // or of this context, so that this call returns without waiting for the device.
    layer.pending_forward = {saved.get(), args.train != 0, args.recompute != 0, args.seq_len};
    saved->settle = [&layer] { settle_pending_forward(layer); };
  } else {
    finish_forward(layer, saved.get(), args.train != 0, args.recompute != 0, args.seq_len);
  }
  if (layer.ep) layer.profile.exchange += layer.ep->take_exchange_seconds();
  layer.profile.forward_total += total.lap();
  ++layer.profile.forward_calls;
  return saved;
}

void settle_pending_forward(Layer& layer) {
  const Layer::PendingForward pending = layer.pending_forward;
  if (pending.saved == nullptr) return;
  layer.pending_forward = {};
  SavedState& saved = *pending.saved;
  saved.settle = nullptr;
  if (saved.captured) {  // a CUDA graph's capture: no counts on the host, no state change
    const double unknown = std::nan("");
    saved.losses.aux_loss = saved.losses.aux_loss_scaled = unknown;
    saved.losses.z_loss = saved.losses.z_loss_scaled = unknown;
    return;
  }
  saved.settle_counts();
  saved.counts_pending = false;
  finish_forward(layer, &saved, pending.train, pending.recompute, pending.seq_len);
}

void backward(Layer& layer, const SavedState& saved, const moe_backward_args_t& args) {
  const LayerConfig& c = layer.config;
  StageTimer total;
  checked_call(
      layer, [&] { check_backward_args(layer, saved, args); },
      [&](const Error* refusal) {
        dist::check_in_backward(*layer.ep, refusal,
                                saved.dispatch ? saved.dispatch->forward_call : -1);
      },
      layer.profile.exchange_backward);
  if (DevicePipeline* pipeline = layer.backend.device_pipeline()) {
    pipeline->backward(layer.device_view(), saved, args);
  } else if (c.dtype == MOE_DTYPE_F64) {
    backward_typed<double>(layer, saved, args);
  } else if (c.dtype == MOE_DTYPE_BF16) {
    backward_typed<bfloat16>(layer, saved, args);
  } else {
    backward_typed<float>(layer, saved, args);
  }
  if (layer.ep) layer.profile.exchange_backward += layer.ep->take_exchange_seconds();
  layer.profile.backward_total += total.lap();
  ++layer.profile.backward_calls;
}

void refuse_forward(Layer& layer, const Error& error) {
  if (layer.ep) dist::check_in_forward(*layer.ep, &error, 0, layer.step, layer.telemetry.due());
  throw error;
}

void refuse_backward(Layer& layer, const Error& error) {
  if (layer.ep) dist::check_in_backward(*layer.ep, &error, -1);
  throw error;
}

}  // namespace moe
