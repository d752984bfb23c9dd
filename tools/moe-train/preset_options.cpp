#include "tools/moe-train/preset_options.hpp"

#include <string>

#include "tools/moe-train/option_names.hpp"

namespace moe::train {

void apply_preset(const CLI::App& app, Options& o) {
  if (o.preset.empty()) return;
  const moe_layer_config_t c = moe::preset(o.preset.c_str());
  auto set = [&](const char* flag, auto& option, auto value) {
    if (app.count(flag) == 0) option = value;
  };
  set("--n_experts", o.n_experts, c.num_experts);
  set("--top_k", o.top_k, c.top_k);
  set("--router", o.router, std::string(kRouterNames[c.router]));
  set("--activation", o.activation, std::string(kActivationNames[c.activation]));
  set("--renormalize", o.renormalize,
      std::string(c.renormalize < 0 ? "auto"
                  : c.renormalize   ? "on"
                                    : "off"));
  if (app.count("--dropless") == 0) set("--capacity_factor", o.capacity_factor, c.capacity_factor);
  set("--load_balance_alpha", o.load_balance_alpha, c.load_balance_alpha);
  set("--router_z_loss_coef", o.router_z_loss_coef, c.router_z_loss_coef);
  set("--bias_update_rate", o.bias_update_rate, c.bias_update_rate);
  set("--n_group", o.n_group, c.n_group);
  set("--topk_group", o.topk_group, c.topk_group);
  set("--routed_scaling_factor", o.routed_scaling_factor, c.routed_scaling_factor);
  set("--min_capacity", o.min_capacity, c.min_capacity);
  set("--capacity_order", o.capacity_order, std::string(kCapacityOrderNames[c.capacity_order]));
  set("--renormalize_after_drops", o.renormalize_after_drops, c.renormalize_after_drops != 0);
  set("--bias_update_from_served", o.bias_update_from_served, c.bias_update_from_served != 0);
  set("--num_shared_experts", o.num_shared_experts, c.num_shared_experts);
  set("--shared_d_ff", o.shared_d_ff, c.shared_d_ff);
  set("--shared_expert_gate", o.shared_expert_gate, c.shared_expert_gate != 0);
  set("--aux_loss_scope", o.aux_loss_scope, std::string(kAuxLossScopeNames[c.aux_loss_scope]));
  set("--aux_loss_unbiased_topk", o.aux_loss_unbiased_topk, c.aux_loss_unbiased_topk != 0);
}

}  // namespace moe::train
