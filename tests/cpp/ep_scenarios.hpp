// The expert-parallel scenarios both multi-rank suites run (tests/mpi on host backends
// under mpirun, tests/cuda on thread ranks of one GPU): each a layer config, how the
// batch's tokens are split over the ranks, and the expert map.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/moe.h"

namespace moe_test {

struct EpScenario {
  std::string name;
  moe_layer_config_t config = MOE_LAYER_CONFIG_INIT;
  std::vector<int64_t> split;  // tokens of each rank
  std::vector<int32_t> owner;  // empty: contiguous blocks
  int steps = 2;
  bool accumulate = true;  // gradients and dx summed over the steps
  bool train = true;
  int64_t seq_len = 0;
};

inline moe_layer_config_t ep_base_config(int64_t E, int64_t k) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = 16;
  c.d_ff = 24;
  c.num_experts = E;
  c.top_k = k;
  return c;
}

// Uneven shares of T tokens over `world` ranks, none empty.
inline std::vector<int64_t> uneven_split(int64_t T, int world) {
  std::vector<int64_t> split(world);
  int64_t left = T;
  for (int r = 0; r < world; ++r) {
    split[r] = r + 1 == world ? left : std::max<int64_t>(1, T * (r + 2) / (4 * world));
    left -= split[r];
  }
  return split;
}

inline EpScenario ep_scenario(const char* name, int world, int64_t E, int64_t k, int64_t T) {
  EpScenario s;
  s.name = name;
  s.config = ep_base_config(E, k);
  s.split = uneven_split(T, world);
  return s;
}

inline std::vector<EpScenario> ep_scenarios(int world) {
  std::vector<EpScenario> all;
  {
    // Sequence metrics need whole sequences on each rank: shares are multiples of 4.
    EpScenario s = ep_scenario("softmax_top2_dropless", world, 8, 2, 12);
    for (int64_t& n : s.split) n *= 4;
    s.config.expert_bias = 1;
    s.config.load_balance_alpha = 0.01;
    s.config.router_z_loss_coef = 0.001;
    s.seq_len = 4;
    all.push_back(s);
  }
  {
    EpScenario s = ep_scenario("capacity_position_drops", world, 8, 2, 64);
    s.config.capacity_factor = 0.75;
    all.push_back(s);
  }
  {
    EpScenario s = ep_scenario("capacity_probability_drops", world, 8, 2, 64);
    s.config.capacity_factor = 0.75;
    s.config.drop_policy = MOE_DROP_PROBABILITY;
    s.config.activation = MOE_ACTIVATION_SWIGLU;
    all.push_back(s);
  }
  {
    // Rank 1 brings no tokens: it still serves its experts.
    EpScenario s = ep_scenario("rank_with_zero_tokens", world, 8, 2, 40);
    s.split[0] += s.split[1];
    s.split[1] = 0;
    s.config.capacity_factor = 1.0;
    all.push_back(s);
  }
  {
    // All experts on the last rank: every token travels to it; the others hold none.
    EpScenario s = ep_scenario("all_experts_on_one_rank", world, 4, 2, 32);
    s.owner.assign(4, world - 1);
    s.config.capacity_factor = 1.25;
    all.push_back(s);
  }
  {
    // Round-robin map: the exchange order differs from the expert order.
    EpScenario s = ep_scenario("round_robin_map_sigmoid_noise", world, 12, 3, 60);
    for (int e = 0; e < 12; ++e) s.owner.push_back(e % world);
    s.config.router = MOE_ROUTER_SIGMOID;
    s.config.router_noise_type = MOE_NOISE_GAUSSIAN;
    s.config.router_noise_std_init = 0.5;
    s.config.bias_update_rate = 0.01;
    s.config.activation = MOE_ACTIVATION_GEGLU;
    s.steps = 3;
    all.push_back(s);
  }
  {
    EpScenario s = ep_scenario("hash_router_eval", world, 8, 1, 36);
    s.config.router = MOE_ROUTER_HASH;
    s.config.capacity_factor = 1.0;
    s.train = false;
    all.push_back(s);
  }
  {
    // Fewer experts than ranks on 4 ranks: some own none.
    EpScenario s = ep_scenario("fewer_experts_than_ranks", world, 3, 1, 30);
    s.config.activation = MOE_ACTIVATION_RELU;
    all.push_back(s);
  }
  {
    // Every expert's rows padded to the capacity in the single process; expert
    // parallelism regroups the received rows (padded again on the cuda backend).
    EpScenario s = ep_scenario("pad_to_capacity", world, 6, 2, 48);
    s.config.capacity_factor = 1.5;
    s.config.pad_to_capacity = 1;
    s.config.expert_bias = 1;
    all.push_back(s);
  }
  return all;
}

// The model-family options the host backends run under expert parallelism (a cuda layer
// refuses them): group-limited routing with scaling, the unbiased sequence-wise aux
// loss, renormalisation after drops and the bias update from served counts; and the
// global-batch aux loss accumulating over steps.
inline std::vector<EpScenario> host_ep_scenarios(int world) {
  std::vector<EpScenario> all;
  {
    EpScenario s = ep_scenario("deepseek_style_sequence_aux", world, 8, 2, 12);
    for (int64_t& n : s.split) n *= 4;  // whole sequences of 4 on each rank
    s.seq_len = 4;
    s.config.router = MOE_ROUTER_SIGMOID;
    s.config.n_group = 4;
    s.config.topk_group = 2;
    s.config.routed_scaling_factor = 2.5;
    s.config.aux_loss_scope = MOE_AUX_LOSS_SEQUENCE;
    s.config.aux_loss_unbiased_topk = 1;
    s.config.load_balance_alpha = 0.01;
    s.config.bias_update_rate = 0.01;
    s.config.bias_update_from_served = 1;
    s.config.capacity_factor = 0.75;
    s.config.renormalize_after_drops = 1;
    s.config.min_capacity = 2;
    s.steps = 3;
    all.push_back(s);
  }
  {
    EpScenario s = ep_scenario("global_aux_over_steps", world, 8, 2, 40);
    s.config.aux_loss_scope = MOE_AUX_LOSS_GLOBAL;
    s.config.load_balance_alpha = 0.05;
    s.steps = 3;
    all.push_back(s);
  }
  return all;
}

}  // namespace moe_test
