#include "tools/moe-train/model.hpp"

#include <cmath>
#include <stdexcept>

#include "tools/moe-train/option_names.hpp"

namespace moe::train {
namespace {

moe_noise_t noise_of(const std::string& name) {
  if (name == "gaussian") return MOE_NOISE_GAUSSIAN;
  if (name == "gumbel") return MOE_NOISE_GUMBEL;
  throw std::invalid_argument("unknown router noise type '" + name + "'");
}

}  // namespace

int64_t ff_width(const Options& o) {
  return o.activation == "swiglu" || o.activation == "geglu" ? 2 * o.d_ff : o.d_ff;
}

int64_t shared_width(const Options& o) {
  return o.num_shared_experts * (o.shared_d_ff > 0 ? o.shared_d_ff : o.d_ff);
}

moe_layer_config_t layer_config(const Options& o, bool teacher) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = o.d_model;
  c.d_ff = o.d_ff;
  c.num_experts = o.n_experts;
  c.top_k = o.top_k;
  c.activation = enum_named<moe_activation_t>(kActivationNames, o.activation, "activation");
  c.backend = o.backend.c_str();
  if (teacher) {  // the teacher: a plain softmax MoE, no telemetry
    c.telemetry_interval = 0;
    return c;
  }
  c.router = enum_named<moe_router_t>(kRouterNames, o.router, "router");
  c.hash_mode = enum_named<moe_hash_mode_t>(kHashModeNames, o.hash_mode, "hash mode");
  c.n_group = o.n_group;
  c.topk_group = o.topk_group;
  c.routed_scaling_factor = o.routed_scaling_factor;
  c.min_capacity = o.min_capacity;
  c.capacity_order =
      enum_named<moe_capacity_order_t>(kCapacityOrderNames, o.capacity_order, "capacity order");
  c.renormalize = o.renormalize == "auto" ? -1 : o.renormalize == "on" ? 1 : 0;
  c.num_shared_experts = o.num_shared_experts;
  c.shared_d_ff = o.shared_d_ff;
  c.shared_expert_gate = o.shared_expert_gate ? 1 : 0;
  c.aux_loss_scope =
      enum_named<moe_aux_loss_scope_t>(kAuxLossScopeNames, o.aux_loss_scope, "aux loss scope");
  c.aux_loss_unbiased_topk = o.aux_loss_unbiased_topk ? 1 : 0;
  c.renormalize_after_drops = o.renormalize_after_drops ? 1 : 0;
  c.bias_update_from_served = o.bias_update_from_served ? 1 : 0;
  c.capacity_factor = o.capacity_factor;
  c.load_balance_alpha = o.load_balance_alpha;
  c.router_z_loss_coef = o.router_z_loss_coef;
  c.router_temp_init = o.router_temp_init;
  c.router_temp_final = o.router_temp_final;
  c.router_temp_anneal_iters = o.router_temp_anneal_iters;
  c.router_noise_std_init = o.router_noise_std_init;
  c.router_noise_decay_iters = o.router_noise_decay_iters;
  c.router_noise_type =
      o.router_noise_std_init > 0 ? noise_of(o.router_noise_type) : MOE_NOISE_NONE;
  c.bias_update_rate = o.bias_update_rate;
  c.seed = o.seed;
  // Every step: the progress line, the dashboard and the health report's window then see
  // every step (sampling every log_interval-th call drifted off the logged steps once eval
  // calls were counted, and a window restarted between samples had none).
  c.telemetry_interval = 1;
  return c;
}

Stack::Stack(const Options& o, bool teacher, uint64_t seed) : options_(o) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int64_t d = o.d_model, E = o.n_experts, F = ff_width(o);
  const moe_layer_config_t config = layer_config(o, teacher);
  for (int64_t l = 0; l < o.layers; ++l) {
    Block b{moe::Layer(config), {}, {}, {}, {}, {}, {}, {}, {}, {}};
    b.router.resize(d * E);
    b.w1.resize(E * d * F);
    b.w2.resize(E * o.d_ff * d);
    const int64_t S = config.num_shared_experts > 0 ? shared_width(o) : 0;
    const int64_t SF = F == o.d_ff ? S : 2 * S;
    b.shared_w1.resize(d * SF);
    b.shared_w2.resize(S * d);
    b.shared_gate.resize(config.shared_expert_gate ? d : 0);
    // The teacher's router is sharp (its experts own clusters); the student starts soft.
    const float router_scale = teacher ? 3.f / std::sqrt(float(d)) : 1.f / std::sqrt(float(d));
    for (float& v : b.router.value) v = router_scale * normal(rng);
    for (float& v : b.w1.value) v = normal(rng) / std::sqrt(float(d));
    for (float& v : b.w2.value) v = (teacher ? 1.f : 0.5f) * normal(rng) / std::sqrt(float(o.d_ff));
    for (float& v : b.shared_w1.value) v = normal(rng) / std::sqrt(float(d));
    for (float& v : b.shared_w2.value)
      v = 0.5f * normal(rng) / std::sqrt(float(std::max<int64_t>(S, 1)));
    for (float& v : b.shared_gate.value) v = normal(rng) / std::sqrt(float(d));
    moe_weights_t w = MOE_WEIGHTS_INIT;
    if (config.router != MOE_ROUTER_HASH) w.router = moe::tensor(b.router.value.data(), {d, E});
    w.w1 = moe::tensor(b.w1.value.data(), {E, d, F});
    w.w2 = moe::tensor(b.w2.value.data(), {E, o.d_ff, d});
    if (S > 0) {
      w.shared_w1 = moe::tensor(b.shared_w1.value.data(), {d, SF});
      w.shared_w2 = moe::tensor(b.shared_w2.value.data(), {S, d});
    }
    if (config.shared_expert_gate) w.shared_gate = moe::tensor(b.shared_gate.value.data(), {d, 1});
    b.layer.set_weights(w);
    const std::string name = "layer" + std::to_string(l);
    b.layer.set_name(name);
    blocks_.push_back(std::move(b));
  }
}

std::vector<float> Stack::forward(const std::vector<float>& x, const std::vector<int64_t>& ids,
                                  bool train, int64_t seq_len) {
  const int64_t d = options_.d_model;
  tokens_ = static_cast<int64_t>(x.size()) / d;
  std::vector<float> h = x;
  for (Block& b : blocks_) {
    b.input = h;
    b.output.assign(h.size(), 0.f);
    moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
    a.x = moe::tensor(b.input.data(), {tokens_, d});
    a.y = moe::tensor(b.output.data(), {tokens_, d});
    a.token_ids = ids.empty() ? nullptr : ids.data();
    a.seq_len = seq_len;
    a.train = train ? 1 : 0;
    if (train) {
      b.ctx = b.layer.forward(a);
    } else {
      b.layer.forward_only(a);
    }
    for (size_t i = 0; i < h.size(); ++i) h[i] += b.output[i];
  }
  return h;
}

void Stack::backward(const std::vector<float>& dy) {
  const int64_t d = options_.d_model, E = options_.n_experts;
  const int64_t F = ff_width(options_);
  std::vector<float> grad = dy, dx(dy.size());
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
    Block& b = *it;
    moe_backward_args_t a = MOE_BACKWARD_ARGS_INIT;
    a.dy = moe::tensor(grad.data(), {tokens_, d});
    a.dx = moe::tensor(dx.data(), {tokens_, d});
    if (options_.router != "hash") a.grads.router = moe::tensor(b.router.grad.data(), {d, E});
    a.grads.w1 = moe::tensor(b.w1.grad.data(), {E, d, F});
    a.grads.w2 = moe::tensor(b.w2.grad.data(), {E, options_.d_ff, d});
    if (!b.shared_w2.value.empty()) {
      const int64_t S = shared_width(options_);
      a.grads.shared_w1 = moe::tensor(b.shared_w1.grad.data(),
                                      {d, static_cast<int64_t>(b.shared_w1.value.size()) / d});
      a.grads.shared_w2 = moe::tensor(b.shared_w2.grad.data(), {S, d});
    }
    if (!b.shared_gate.value.empty())
      a.grads.shared_gate = moe::tensor(b.shared_gate.grad.data(), {d, 1});
    b.layer.backward(b.ctx, a);
    b.ctx = moe::Context();
    for (size_t i = 0; i < grad.size(); ++i) grad[i] += dx[i];  // residual: dh += dMoE/dh
  }
}

void Stack::adam_step(double lr, int64_t step) {
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  const float c1 = 1.f - std::pow(b1, static_cast<float>(step));
  const float c2 = 1.f - std::pow(b2, static_cast<float>(step));
  for (Block& b : blocks_)
    for (Parameter* p : {&b.router, &b.w1, &b.w2, &b.shared_w1, &b.shared_w2, &b.shared_gate})
      for (size_t i = 0; i < p->value.size(); ++i) {
        p->m[i] = b1 * p->m[i] + (1 - b1) * p->grad[i];
        p->v[i] = b2 * p->v[i] + (1 - b2) * p->grad[i] * p->grad[i];
        p->value[i] -= static_cast<float>(lr) * (p->m[i] / c1) / (std::sqrt(p->v[i] / c2) + eps);
      }
  // The optimizer step ends the global batch the global-batch aux loss counts over.
  for (Block& b : blocks_)
    if (b.layer.config().aux_loss_scope == MOE_AUX_LOSS_GLOBAL) b.layer.reset_aux_counts();
}

void Stack::zero_grads() {
  for (Block& b : blocks_) {
    for (Parameter* p : {&b.router, &b.w1, &b.w2, &b.shared_w1, &b.shared_w2, &b.shared_gate})
      std::fill(p->grad.begin(), p->grad.end(), 0.f);
  }
}

}  // namespace moe::train
