// moe-train's model: a residual stack of MoE layers (h <- h + MoE(h)) trained with Adam
// on regression to a hidden teacher stack over clustered inputs, a task where experts
// that specialise on clusters pay off.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "moe/moe.hpp"

namespace moe::train {

struct Options {
  int64_t layers = 2, d_model = 64, d_ff = 128, n_experts = 8, top_k = 2;
  std::string router = "softmax", activation = "gelu", backend = "cpu_ref";
  double capacity_factor = 0.0;
  double load_balance_alpha = 0.01, router_z_loss_coef = 1e-3;
  double router_temp_init = 1.0, router_temp_final = 1.0;
  int64_t router_temp_anneal_iters = 0;
  double router_noise_std_init = 0.0;
  int64_t router_noise_decay_iters = 0;
  std::string router_noise_type = "gaussian";
  std::string hash_mode = "auto";
  int64_t n_group = 0, topk_group = 0;
  double routed_scaling_factor = 1.0;
  int64_t min_capacity = 0;
  std::string capacity_order = "token";
  bool renormalize_after_drops = false;
  bool bias_update_from_served = false;
  std::string renormalize = "auto";                 // auto | on | off
  int64_t num_shared_experts = 0, shared_d_ff = 0;  // shared_d_ff 0: d_ff
  bool shared_expert_gate = false;
  std::string aux_loss_scope = "batch";
  bool aux_loss_unbiased_topk = false;
  std::string preset;  // a model family (moe_layer_config_preset); flags given win
  double bias_update_rate = 0.0;
  uint64_t seed = 0;
  int64_t max_iters = 600, eval_interval = 100, log_interval = 10, batch_size = 256;
  double learning_rate = 3e-3;
  int64_t warmup_iters = 20, clusters = 32, threads = 0;
  std::string out = "moe-train-out";
};

// One parameter tensor with its gradient and Adam moments.
struct Parameter {
  std::vector<float> value, grad, m, v;
  void resize(size_t n) {
    value.assign(n, 0.f);
    grad.assign(n, 0.f);
    m.assign(n, 0.f);
    v.assign(n, 0.f);
  }
};

struct Block {
  moe::Layer layer;
  Parameter router, w1, w2;
  Parameter shared_w1, shared_w2, shared_gate;  // empty without shared experts
  moe::Context ctx;
  std::vector<float> input, output;  // h_l and MoE(h_l) of the last forward
};

// Columns of W1: 2 d_ff for the gated activations (swiglu, geglu), else d_ff.
int64_t ff_width(const Options& o);
// The shared experts' hidden width, S * shared_d_ff (0 without them).
int64_t shared_width(const Options& o);

moe_layer_config_t layer_config(const Options& o, bool teacher);

class Stack {
 public:
  Stack(const Options& options, bool teacher, uint64_t seed);
  // y = h_L with h_0 = x and h_{l+1} = h_l + MoE_l(h_l). Keeps saved state for backward
  // when train is true.
  std::vector<float> forward(const std::vector<float>& x, const std::vector<int64_t>& ids,
                             bool train, int64_t seq_len);
  // Backward from dL/dy; fills every parameter's gradient.
  void backward(const std::vector<float>& dy);
  void adam_step(double lr, int64_t step);
  void zero_grads();
  std::vector<Block>& blocks() { return blocks_; }
  int64_t tokens() const { return tokens_; }

 private:
  Options options_;
  int64_t tokens_ = 0;
  std::vector<Block> blocks_;
};

}  // namespace moe::train
