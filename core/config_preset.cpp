#include "core/config_preset.hpp"

#include "core/error.hpp"

namespace moe {
namespace {

// Every field a preset decides, from the library's defaults: what one family leaves
// out is the default, not whatever an earlier preset set.
void reset_family_fields(moe_layer_config_t& c) {
  const moe_layer_config_t d = MOE_LAYER_CONFIG_INIT;
  c.num_experts = d.num_experts;
  c.top_k = d.top_k;
  c.activation = d.activation;
  c.router = d.router;
  c.expert_bias = d.expert_bias;
  c.load_balance_alpha = d.load_balance_alpha;
  c.router_z_loss_coef = d.router_z_loss_coef;
  c.bias_update_rate = d.bias_update_rate;
  c.renormalize = d.renormalize;
  c.capacity_factor = d.capacity_factor;
  c.drop_policy = d.drop_policy;
  c.n_group = d.n_group;
  c.topk_group = d.topk_group;
  c.routed_scaling_factor = d.routed_scaling_factor;
  c.min_capacity = d.min_capacity;
  c.num_shared_experts = d.num_shared_experts;
  c.shared_d_ff = d.shared_d_ff;
  c.shared_expert_gate = d.shared_expert_gate;
  c.capacity_order = d.capacity_order;
  c.renormalize_after_drops = d.renormalize_after_drops;
  c.bias_update_from_served = d.bias_update_from_served;
  c.aux_loss_scope = d.aux_loss_scope;
  c.aux_loss_unbiased_topk = d.aux_loss_unbiased_topk;
}

// Hugging Face's load_balancing_loss_func (Mixtral, Qwen2-MoE, Qwen3-MoE) sums the
// fraction of tokens per expert over the k choices, k times this library's f_e (a
// fraction of copies): the same loss needs alpha = coef * k.
double hf_alpha(double router_aux_loss_coef, int64_t top_k) {
  return router_aux_loss_coef * static_cast<double>(top_k);
}

}  // namespace

void apply_preset(const std::string& family, moe_layer_config_t& c) {
  moe_layer_config_t out = c;
  reset_family_fields(out);
  out.activation = MOE_ACTIVATION_SWIGLU;
  if (family == "mixtral") {
    // Mixtral 8x7B (MixtralSparseMoeBlock): softmax over the top-2 logits, dropless,
    // router_aux_loss_coef 0.02.
    out.num_experts = 8;
    out.top_k = 2;
    out.renormalize = 1;
    out.load_balance_alpha = hf_alpha(0.02, out.top_k);
  } else if (family == "qwen2_moe") {
    // Qwen1.5-MoE-A2.7B (Qwen2MoeSparseMoeBlock): 60 experts, top 4, norm_topk_prob
    // False; one shared expert of 4 x moe_intermediate_size (5632 = 4 x 1408) behind a
    // sigmoid gate; router_aux_loss_coef 0.001.
    out.num_experts = 60;
    out.top_k = 4;
    out.renormalize = 0;
    out.num_shared_experts = 4;
    out.shared_expert_gate = 1;
    out.load_balance_alpha = hf_alpha(0.001, out.top_k);
  } else if (family == "qwen3_moe") {
    // Qwen3-30B-A3B (Qwen3MoeSparseMoeBlock): 128 experts, top 8, norm_topk_prob True,
    // no shared expert; the global-batch balance loss, router_aux_loss_coef 0.001.
    out.num_experts = 128;
    out.top_k = 8;
    out.renormalize = 1;
    out.aux_loss_scope = MOE_AUX_LOSS_GLOBAL;
    out.load_balance_alpha = hf_alpha(0.001, out.top_k);
  } else if (family == "deepseek_v3") {
    // DeepSeek-V3 (the technical report, section 2.1.2, and DeepseekV3MoE): sigmoid
    // affinities, 256 experts in 8 groups, 4 groups kept, top 8, gates normalised and
    // scaled by 2.5; one shared expert; auxiliary-loss-free balancing with bias update
    // speed 0.001; the complementary sequence-wise loss, alpha 0.0001, whose f counts
    // the top-8 of the affinities without bias. Dropless.
    out.router = MOE_ROUTER_SIGMOID;
    out.num_experts = 256;
    out.top_k = 8;
    out.n_group = 8;
    out.topk_group = 4;
    out.renormalize = 1;
    out.routed_scaling_factor = 2.5;
    out.num_shared_experts = 1;
    out.bias_update_rate = 0.001;
    out.aux_loss_scope = MOE_AUX_LOSS_SEQUENCE;
    out.aux_loss_unbiased_topk = 1;
    out.load_balance_alpha = 0.0001;
  } else if (family == "switch") {
    // Switch Transformer (Fedus et al. 2021; Switch-Base-128): top-1, the gate is the
    // router probability, ReLU experts, capacity factor 1.25 filled slot-major (first
    // choices first), alpha 0.01.
    out.activation = MOE_ACTIVATION_RELU;
    out.num_experts = 128;
    out.top_k = 1;
    out.renormalize = 0;
    out.capacity_factor = 1.25;
    out.capacity_order = MOE_CAPACITY_SLOT_MAJOR;
    out.load_balance_alpha = 0.01;
  } else {
    throw Error(MOE_STATUS_INVALID_ARGUMENT,
                "unknown model family '" + family +
                    "'; the presets are mixtral, qwen2_moe, qwen3_moe, deepseek_v3 and switch");
  }
  c = out;
}

}  // namespace moe
