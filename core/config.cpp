#include "core/config.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "core/error.hpp"
#include "core/raw_enum.hpp"
#include "core/sized_struct.hpp"

namespace moe {
namespace {

double linear_schedule(double from, double to, int64_t step, int64_t iters) {
  if (iters <= 0) return from;
  const double t = std::min(1.0, static_cast<double>(step) / static_cast<double>(iters));
  return from + (to - from) * t;
}

// The largest weight, rate, noise std and capacity factor, and the temperatures' range:
// far past any useful setting, and small enough that every product the layer forms with
// them (scores z/tau of any float logit, capacities, selection biases) stays finite.
constexpr double kMaxCoefficient = 1e6;
constexpr double kMinTemperature = 1e-6, kMaxTemperature = 1e6;

// The shortest text that reads back as `value` (1e-06, not 9.9999999999999995e-07).
std::string number(double value) {
  char text[32];
  const auto end = std::to_chars(text, text + sizeof text, value).ptr;
  return std::string(text, end);
}

void require_in_range(double value, double low, double high, const char* name) {
  require(std::isfinite(value) && value >= low && value <= high, MOE_STATUS_INVALID_ARGUMENT,
          std::string(name) + " must be in [" + number(low) + ", " + number(high) + "], got " +
              number(value));
}

void require_finite_nonnegative(double value, const char* name) {
  require_in_range(value, 0.0, kMaxCoefficient, name);
}

}  // namespace

int64_t checked_elements(std::initializer_list<int64_t> sizes, const std::string& what) {
  int64_t product = 1;
  bool fits = true;
  for (int64_t size : sizes) {
    // Compared before multiplying: size <= kMaxElements / product keeps it exact.
    fits = fits && size >= 0 && (product == 0 || size <= kMaxElements / product);
    if (fits) product *= size;
  }
  require(fits, MOE_STATUS_INVALID_ARGUMENT,
          what + " would hold more than 2^48 elements (docs/limits.md): sizes too large");
  return product;
}

double LayerConfig::temperature(int64_t step) const {
  return linear_schedule(temp_init, temp_final, step, temp_anneal_iters);
}

double LayerConfig::noise_std(int64_t step) const {
  if (noise_type == MOE_NOISE_NONE) return 0.0;
  if (noise_decay_iters <= 0) return noise_std_init;
  return linear_schedule(noise_std_init, 0.0, step, noise_decay_iters);
}

const char* activation_name(moe_activation_t activation) {
  switch (activation) {
    case MOE_ACTIVATION_RELU: return "relu";
    case MOE_ACTIVATION_GELU: return "gelu";
    case MOE_ACTIVATION_GELU_TANH: return "gelu_tanh";
    case MOE_ACTIVATION_SILU: return "silu";
    case MOE_ACTIVATION_SWIGLU: return "swiglu";
    case MOE_ACTIVATION_GEGLU: return "geglu";
  }
  return "unknown";
}

const char* router_name(moe_router_t router) {
  switch (router) {
    case MOE_ROUTER_SOFTMAX: return "softmax";
    case MOE_ROUTER_SIGMOID: return "sigmoid";
    case MOE_ROUTER_HASH: return "hash";
    case MOE_ROUTER_EXPERT_CHOICE: return "expert_choice";
  }
  return "unknown";
}

const char* dtype_name(moe_dtype_t dtype) {
  switch (dtype) {
    case MOE_DTYPE_F32: return "float32";
    case MOE_DTYPE_F64: return "float64";
    case MOE_DTYPE_BF16: return "bfloat16";
  }
  return "unknown";
}

const char* capacity_order_name(moe_capacity_order_t order) {
  switch (order) {
    case MOE_CAPACITY_TOKEN_ORDER: return "token";
    case MOE_CAPACITY_SLOT_MAJOR: return "slot_major";
    case MOE_CAPACITY_BATCH_PRIORITIZED: return "batch_prioritized";
    case MOE_CAPACITY_RANDOM: return "random";
  }
  return "unknown";
}

size_t dtype_size(moe_dtype_t dtype) {
  switch (dtype) {
    case MOE_DTYPE_F32: return 4;
    case MOE_DTYPE_F64: return 8;
    case MOE_DTYPE_BF16: return 2;
  }
  return 0;
}

LayerConfig config_from_abi(const moe_layer_config_t* abi) {
  const moe_layer_config_t defaults = MOE_LAYER_CONFIG_INIT;
  const moe_layer_config_t in = read_sized(abi, defaults, "config");

  require(in.d_model > 0, MOE_STATUS_INVALID_ARGUMENT,
          "config.d_model must be > 0, got " + std::to_string(in.d_model));
  require(in.d_ff > 0, MOE_STATUS_INVALID_ARGUMENT,
          "config.d_ff must be > 0, got " + std::to_string(in.d_ff));
  require(in.num_experts >= 1, MOE_STATUS_INVALID_ARGUMENT,
          "config.num_experts must be >= 1, got " + std::to_string(in.num_experts));
  require(
      in.num_experts <= kMaxExperts, MOE_STATUS_INVALID_ARGUMENT,
      "config.num_experts must be <= 2^20 (docs/limits.md), got " + std::to_string(in.num_experts));
  const int64_t ff_width = checked_elements({in.d_ff, 2}, "config.d_ff");
  checked_elements({in.d_model, in.num_experts}, "the router weight [d_model, num_experts]");
  checked_elements({in.num_experts, in.d_model, ff_width}, "w1 [num_experts, d_model, d_ff]");
  require(in.top_k >= 1 && in.top_k <= in.num_experts, MOE_STATUS_INVALID_ARGUMENT,
          "config.top_k must be in [1, num_experts=" + std::to_string(in.num_experts) + "], got " +
              std::to_string(in.top_k));
  require_enum(in.activation, MOE_ACTIVATION_RELU, MOE_ACTIVATION_GEGLU, "config.activation",
               "moe_activation_t");
  require_enum(in.router, MOE_ROUTER_SOFTMAX, MOE_ROUTER_EXPERT_CHOICE, "config.router",
               "moe_router_t");
  require_enum(in.dtype, MOE_DTYPE_F32, MOE_DTYPE_BF16, "config.dtype", "moe_dtype_t");
  require_enum(in.router_noise_type, MOE_NOISE_NONE, MOE_NOISE_GUMBEL, "config.router_noise_type",
               "moe_noise_t");
  require_enum(in.drop_policy, MOE_DROP_POSITION, MOE_DROP_PROBABILITY, "config.drop_policy",
               "moe_drop_policy_t");
  require_enum(in.hash_mode, MOE_HASH_AUTO, MOE_HASH_BALANCED, "config.hash_mode",
               "moe_hash_mode_t");
  require_in_range(in.router_temp_init, kMinTemperature, kMaxTemperature,
                   "config.router_temp_init");
  require_in_range(in.router_temp_final, kMinTemperature, kMaxTemperature,
                   "config.router_temp_final");
  require(in.router_temp_anneal_iters >= 0, MOE_STATUS_INVALID_ARGUMENT,
          "config.router_temp_anneal_iters must be >= 0");
  require(in.router_noise_decay_iters >= 0, MOE_STATUS_INVALID_ARGUMENT,
          "config.router_noise_decay_iters must be >= 0");
  require_finite_nonnegative(in.router_noise_std_init, "config.router_noise_std_init");
  require_finite_nonnegative(in.load_balance_alpha, "config.load_balance_alpha");
  require_finite_nonnegative(in.router_z_loss_coef, "config.router_z_loss_coef");
  require_finite_nonnegative(in.bias_update_rate, "config.bias_update_rate");
  require(std::isfinite(in.capacity_factor) && in.capacity_factor <= kMaxCoefficient,
          MOE_STATUS_INVALID_ARGUMENT,
          "config.capacity_factor must be finite and <= 1e6 (<= 0 means dropless), got " +
              number(in.capacity_factor));
  require(in.renormalize >= -1 && in.renormalize <= 1, MOE_STATUS_INVALID_ARGUMENT,
          "config.renormalize must be -1 (auto), 0 or 1");
  require(in.expert_bias == 0 || in.expert_bias == 1, MOE_STATUS_INVALID_ARGUMENT,
          "config.expert_bias must be 0 or 1");
  require(in.pad_to_capacity == 0 || in.pad_to_capacity == 1, MOE_STATUS_INVALID_ARGUMENT,
          "config.pad_to_capacity must be 0 or 1");
  require(!(in.pad_to_capacity && in.capacity_factor <= 0.0), MOE_STATUS_INVALID_ARGUMENT,
          "config.pad_to_capacity needs a capacity_factor > 0 (dropless has no fixed C)");

  require(in.telemetry_interval >= 0, MOE_STATUS_INVALID_ARGUMENT,
          "config.telemetry_interval must be >= 0 (0 = off)");
  require(std::isfinite(in.telemetry_ema_decay) && in.telemetry_ema_decay >= 0.0 &&
              in.telemetry_ema_decay < 1.0,
          MOE_STATUS_INVALID_ARGUMENT, "config.telemetry_ema_decay must be in [0, 1)");

  const bool grouped = in.n_group > 1;
  require(in.n_group >= 0 && in.n_group <= in.num_experts &&
              in.num_experts % std::max<int64_t>(in.n_group, 1) == 0,
          MOE_STATUS_INVALID_ARGUMENT,
          "config.n_group must be 0 or 1 (no groups) or divide num_experts=" +
              std::to_string(in.num_experts) + ", got " + std::to_string(in.n_group));
  require(in.topk_group >= 0 && in.topk_group <= std::max<int64_t>(in.n_group, 1),
          MOE_STATUS_INVALID_ARGUMENT,
          "config.topk_group must be in [0, n_group=" + std::to_string(in.n_group) +
              "] (0 = all groups; groups need n_group > 1), got " + std::to_string(in.topk_group));
  require(!grouped || in.router == MOE_ROUTER_SOFTMAX || in.router == MOE_ROUTER_SIGMOID,
          MOE_STATUS_INVALID_ARGUMENT,
          "config.n_group > 1 needs a learned token-choice router (softmax or sigmoid): "
          "groups are chosen by the tokens' scores");
  const int64_t groups_kept =
      grouped && in.topk_group > 0 ? in.topk_group : std::max<int64_t>(in.n_group, 1);
  require(!grouped || groups_kept * (in.num_experts / in.n_group) >= in.top_k,
          MOE_STATUS_INVALID_ARGUMENT,
          "config.topk_group=" + std::to_string(in.topk_group) + " groups of " +
              std::to_string(grouped ? in.num_experts / in.n_group : in.num_experts) +
              " experts hold fewer than top_k=" + std::to_string(in.top_k) + " experts");
  require(std::isfinite(in.routed_scaling_factor) && in.routed_scaling_factor > 0.0 &&
              in.routed_scaling_factor <= kMaxCoefficient,
          MOE_STATUS_INVALID_ARGUMENT,
          "config.routed_scaling_factor must be finite, > 0 and <= 1e6 (default 1), got " +
              number(in.routed_scaling_factor));
  require(in.routed_scaling_factor == 1.0 || in.router != MOE_ROUTER_EXPERT_CHOICE,
          MOE_STATUS_INVALID_ARGUMENT,
          "config.routed_scaling_factor scales token-choice gates; expert choice takes none");

  require(in.min_capacity >= 0 && in.min_capacity <= kMaxTokens, MOE_STATUS_INVALID_ARGUMENT,
          "config.min_capacity must be in [0, 2^40], got " + std::to_string(in.min_capacity));
  require(
      in.min_capacity == 0 || (in.capacity_factor > 0.0 && in.router != MOE_ROUTER_EXPERT_CHOICE),
      MOE_STATUS_INVALID_ARGUMENT,
      "config.min_capacity is a floor under token choice's capacity: it needs a "
      "capacity_factor > 0 (dropless has no capacity) and a token-choice router");

  require(in.num_shared_experts >= 0 && in.num_shared_experts <= kMaxExperts,
          MOE_STATUS_INVALID_ARGUMENT,
          "config.num_shared_experts must be in [0, 2^20], got " +
              std::to_string(in.num_shared_experts));
  require(in.num_shared_experts == 0 ? in.shared_d_ff == 0 : in.shared_d_ff >= 0,
          MOE_STATUS_INVALID_ARGUMENT,
          "config.shared_d_ff must be >= 0 with shared experts (0: d_ff) and 0 without, got " +
              std::to_string(in.shared_d_ff) +
              " for num_shared_experts=" + std::to_string(in.num_shared_experts));
  // DeepSeek's shared experts are as wide as the routed ones: 0 asks for d_ff.
  const int64_t shared_d_ff =
      in.num_shared_experts > 0 && in.shared_d_ff == 0 ? in.d_ff : in.shared_d_ff;
  require(in.shared_expert_gate == 0 || (in.shared_expert_gate == 1 && in.num_shared_experts > 0),
          MOE_STATUS_INVALID_ARGUMENT,
          "config.shared_expert_gate must be 0, or 1 with num_shared_experts > 0");
  if (in.num_shared_experts > 0) {
    const int64_t width =
        checked_elements({in.num_shared_experts, shared_d_ff, 2}, "the shared experts' width");
    checked_elements({in.d_model, width},
                     "shared_w1 [d_model, 2 * num_shared_experts * shared_d_ff]");
  }

  require_enum(in.capacity_order, MOE_CAPACITY_TOKEN_ORDER, MOE_CAPACITY_RANDOM,
               "config.capacity_order", "moe_capacity_order_t");
  const bool token_choice_with_capacity =
      in.capacity_factor > 0.0 && in.router != MOE_ROUTER_EXPERT_CHOICE;
  require(in.capacity_order == MOE_CAPACITY_TOKEN_ORDER ||
              (token_choice_with_capacity && in.drop_policy == MOE_DROP_POSITION),
          MOE_STATUS_INVALID_ARGUMENT,
          "config.capacity_order " + std::string(capacity_order_name(in.capacity_order)) +
              " orders the position policy's drops: it needs a capacity_factor > 0, "
              "drop_policy position and a token-choice router");
  require(in.capacity_order != MOE_CAPACITY_BATCH_PRIORITIZED || in.router != MOE_ROUTER_HASH,
          MOE_STATUS_INVALID_ARGUMENT,
          "config.capacity_order batch_prioritized orders tokens by their top-1 probability, "
          "which the hash router does not have");
  const bool renormalizes = in.renormalize < 0 ? in.top_k > 1 : in.renormalize == 1;
  require(in.renormalize_after_drops == 0 ||
              (in.renormalize_after_drops == 1 && token_choice_with_capacity && renormalizes &&
               in.router != MOE_ROUTER_HASH),
          MOE_STATUS_INVALID_ARGUMENT,
          "config.renormalize_after_drops must be 0, or 1 with renormalised gates of a learned "
          "token-choice router and a capacity_factor > 0 (there must be drops to renormalise "
          "over)");

  require(in.bias_update_from_served == 0 ||
              (in.bias_update_from_served == 1 && in.bias_update_rate > 0.0),
          MOE_STATUS_INVALID_ARGUMENT,
          "config.bias_update_from_served must be 0, or 1 with a bias_update_rate > 0");

  require_enum(in.aux_loss_scope, MOE_AUX_LOSS_BATCH, MOE_AUX_LOSS_GLOBAL, "config.aux_loss_scope",
               "moe_aux_loss_scope_t");
  require(in.aux_loss_scope == MOE_AUX_LOSS_BATCH ||
              (in.router != MOE_ROUTER_HASH && in.router != MOE_ROUTER_EXPERT_CHOICE),
          MOE_STATUS_INVALID_ARGUMENT,
          "config.aux_loss_scope sequence and global need a learned token-choice router (the "
          "hash router has no probabilities; expert choice balances by construction)");
  require(in.aux_loss_unbiased_topk == 0 ||
              (in.aux_loss_unbiased_topk == 1 && in.router != MOE_ROUTER_HASH &&
               in.router != MOE_ROUTER_EXPERT_CHOICE),
          MOE_STATUS_INVALID_ARGUMENT,
          "config.aux_loss_unbiased_topk must be 0, or 1 with a learned token-choice router");

  LayerConfig c;
  c.d_model = in.d_model;
  c.d_ff = in.d_ff;
  c.num_experts = in.num_experts;
  c.top_k = in.top_k;
  c.activation = in.activation;
  c.router = in.router;
  c.dtype = in.dtype;
  c.expert_bias = in.expert_bias != 0;
  c.backend = in.backend ? std::string(in.backend) : std::string("auto");
  c.temp_init = in.router_temp_init;
  c.temp_final = in.router_temp_final;
  c.temp_anneal_iters = in.router_temp_anneal_iters;
  c.noise_type = in.router_noise_type;
  c.noise_std_init = in.router_noise_std_init;
  c.noise_decay_iters = in.router_noise_decay_iters;
  c.load_balance_alpha = in.load_balance_alpha;
  c.z_loss_coef = in.router_z_loss_coef;
  c.bias_update_rate = in.bias_update_rate;
  c.renormalize = in.renormalize < 0 ? in.top_k > 1 : in.renormalize == 1;
  c.capacity_factor = in.capacity_factor;
  c.drop_policy = in.drop_policy;
  c.pad_to_capacity = in.pad_to_capacity != 0;
  c.hash_mode = in.hash_mode;
  c.seed = in.seed;
  c.telemetry_interval = in.telemetry_interval;
  c.telemetry_ema_decay = in.telemetry_ema_decay;
  c.n_group = std::max<int64_t>(in.n_group, 1);
  c.topk_group = groups_kept;
  c.routed_scaling_factor = in.routed_scaling_factor;
  c.min_capacity = in.min_capacity;
  c.num_shared_experts = in.num_shared_experts;
  c.shared_d_ff = shared_d_ff;
  c.shared_expert_gate = in.shared_expert_gate == 1;
  c.capacity_order = in.capacity_order;
  c.renormalize_after_drops = in.renormalize_after_drops == 1;
  c.bias_update_from_served = in.bias_update_from_served == 1;
  c.aux_loss_scope = in.aux_loss_scope;
  c.aux_loss_unbiased_topk = in.aux_loss_unbiased_topk == 1;
  return c;
}

moe_layer_config_t config_to_abi(const LayerConfig& c) {
  moe_layer_config_t out = MOE_LAYER_CONFIG_INIT;
  out.d_model = c.d_model;
  out.d_ff = c.d_ff;
  out.num_experts = c.num_experts;
  out.top_k = c.top_k;
  out.activation = c.activation;
  out.router = c.router;
  out.dtype = c.dtype;
  out.expert_bias = c.expert_bias ? 1 : 0;
  out.backend = c.backend.c_str();
  out.router_temp_init = c.temp_init;
  out.router_temp_final = c.temp_final;
  out.router_temp_anneal_iters = c.temp_anneal_iters;
  out.router_noise_type = c.noise_type;
  out.router_noise_std_init = c.noise_std_init;
  out.router_noise_decay_iters = c.noise_decay_iters;
  out.load_balance_alpha = c.load_balance_alpha;
  out.router_z_loss_coef = c.z_loss_coef;
  out.bias_update_rate = c.bias_update_rate;
  out.renormalize = c.renormalize ? 1 : 0;
  out.capacity_factor = c.capacity_factor;
  out.drop_policy = c.drop_policy;
  out.pad_to_capacity = c.pad_to_capacity ? 1 : 0;
  out.hash_mode = c.hash_mode;
  out.seed = c.seed;
  out.telemetry_interval = c.telemetry_interval;
  out.telemetry_ema_decay = c.telemetry_ema_decay;
  out.n_group = c.n_group;
  out.topk_group = c.topk_group;
  out.routed_scaling_factor = c.routed_scaling_factor;
  out.min_capacity = c.min_capacity;
  out.num_shared_experts = c.num_shared_experts;
  out.shared_d_ff = c.shared_d_ff;
  out.shared_expert_gate = c.shared_expert_gate ? 1 : 0;
  out.capacity_order = c.capacity_order;
  out.renormalize_after_drops = c.renormalize_after_drops ? 1 : 0;
  out.bias_update_from_served = c.bias_update_from_served ? 1 : 0;
  out.aux_loss_scope = c.aux_loss_scope;
  out.aux_loss_unbiased_topk = c.aux_loss_unbiased_topk ? 1 : 0;
  return out;
}

}  // namespace moe
