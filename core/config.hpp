// The layer's configuration, validated and with every default resolved.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "moe/moe.h"

namespace moe {

// Size limits (docs/limits.md). Every weight, input and buffer a call forms holds at most
// kMaxElements elements, so that no product of sizes overflows 64 bits (and no size is
// taken on trust that no machine could hold); one forward takes at most kMaxTokens.
constexpr int64_t kMaxElements = int64_t{1} << 48;
constexpr int64_t kMaxTokens = int64_t{1} << 40;
// The most experts a layer (or a record moe-stats reads) has: 2^20, the largest
// published expert count (a million experts, PEER), and E x E counts stay addressable.
constexpr int64_t kMaxExperts = int64_t{1} << 20;
// The step counter stays in [0, 2^62]: set_step takes that range, and a training call
// at 2^62 is refused, so every step the layer reports can be set again.
constexpr int64_t kMaxStep = int64_t{1} << 62;

// The product of `sizes` (each >= 0); throws INVALID_ARGUMENT, naming `what`, when it
// exceeds kMaxElements.
int64_t checked_elements(std::initializer_list<int64_t> sizes, const std::string& what);

struct LayerConfig {
  int64_t d_model = 0;
  int64_t d_ff = 0;
  int64_t num_experts = 0;
  int64_t top_k = 1;
  moe_activation_t activation = MOE_ACTIVATION_GELU;
  moe_router_t router = MOE_ROUTER_SOFTMAX;
  moe_dtype_t dtype = MOE_DTYPE_F32;
  bool expert_bias = false;
  std::string backend = "auto";

  double temp_init = 1.0;
  double temp_final = 1.0;
  int64_t temp_anneal_iters = 0;
  moe_noise_t noise_type = MOE_NOISE_NONE;
  double noise_std_init = 0.0;
  int64_t noise_decay_iters = 0;
  double load_balance_alpha = 0.0;
  double z_loss_coef = 0.0;
  double bias_update_rate = 0.0;
  bool renormalize = false;  // resolved from the ABI's -1 = auto
  double capacity_factor = 0.0;
  moe_drop_policy_t drop_policy = MOE_DROP_POSITION;
  bool pad_to_capacity = false;
  moe_hash_mode_t hash_mode = MOE_HASH_AUTO;
  uint64_t seed = 0;
  int64_t telemetry_interval = 1;
  double telemetry_ema_decay = 0.9;
  int64_t n_group = 1;     // resolved: 1 = no groups
  int64_t topk_group = 1;  // resolved: n_group when the ABI says 0 (all)
  double routed_scaling_factor = 1.0;
  int64_t min_capacity = 0;
  int64_t num_shared_experts = 0;
  int64_t shared_d_ff = 0;
  bool shared_expert_gate = false;
  moe_capacity_order_t capacity_order = MOE_CAPACITY_TOKEN_ORDER;
  bool renormalize_after_drops = false;
  bool bias_update_from_served = false;
  moe_aux_loss_scope_t aux_loss_scope = MOE_AUX_LOSS_BATCH;
  bool aux_loss_unbiased_topk = false;

  bool gated() const {
    return activation == MOE_ACTIVATION_SWIGLU || activation == MOE_ACTIVATION_GEGLU;
  }
  // Width of the first expert matrix's output: 2*d_ff for gated activations.
  int64_t ff_width() const { return gated() ? 2 * d_ff : d_ff; }
  bool dropless() const { return capacity_factor <= 0.0; }
  bool learned_router() const { return router != MOE_ROUTER_HASH; }
  bool group_limited() const { return n_group > 1 && topk_group < n_group; }
  // The shared experts as one MLP: its hidden width, and its first matrix's output.
  int64_t shared_width() const { return num_shared_experts * shared_d_ff; }
  int64_t shared_ff_width() const { return gated() ? 2 * shared_width() : shared_width(); }
  // Slots per token in the routing decision: k, or E for expert choice.
  int64_t slots() const { return router == MOE_ROUTER_EXPERT_CHOICE ? num_experts : top_k; }

  // Temperature and noise std at a given training step (linear schedules).
  double temperature(int64_t step) const;
  double noise_std(int64_t step) const;
};

// Reads and validates the ABI struct; throws moe::Error with a precise message.
LayerConfig config_from_abi(const moe_layer_config_t* abi);
// The ABI view of a resolved config (backend points into `config`).
moe_layer_config_t config_to_abi(const LayerConfig& config);

const char* activation_name(moe_activation_t activation);
const char* router_name(moe_router_t router);
const char* dtype_name(moe_dtype_t dtype);
const char* capacity_order_name(moe_capacity_order_t order);
size_t dtype_size(moe_dtype_t dtype);

}  // namespace moe
