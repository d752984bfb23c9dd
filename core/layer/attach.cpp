#include "core/layer/attach.hpp"

#include <string>
#include <utility>
#include <vector>

#include "core/bfloat16.hpp"
#include "core/error.hpp"
#include "core/host_buffer.hpp"
#include "core/tensor_check.hpp"
#include "dist/check_in.hpp"

namespace moe::dist {
namespace {

// What must agree across the group for the layer to be one layer.
std::vector<std::pair<const char*, double>> fingerprint(const LayerConfig& c) {
  return {{"d_model", static_cast<double>(c.d_model)},
          {"d_ff", static_cast<double>(c.d_ff)},
          {"num_experts", static_cast<double>(c.num_experts)},
          {"top_k", static_cast<double>(c.top_k)},
          {"activation", static_cast<double>(c.activation)},
          {"router", static_cast<double>(c.router)},
          {"dtype", static_cast<double>(c.dtype)},
          {"expert_bias", c.expert_bias ? 1.0 : 0.0},
          {"temp_init", c.temp_init},
          {"temp_final", c.temp_final},
          {"temp_anneal_iters", static_cast<double>(c.temp_anneal_iters)},
          {"noise_type", static_cast<double>(c.noise_type)},
          {"noise_std_init", c.noise_std_init},
          {"noise_decay_iters", static_cast<double>(c.noise_decay_iters)},
          {"load_balance_alpha", c.load_balance_alpha},
          {"z_loss_coef", c.z_loss_coef},
          {"bias_update_rate", c.bias_update_rate},
          {"renormalize", c.renormalize ? 1.0 : 0.0},
          {"capacity_factor", c.capacity_factor},
          {"drop_policy", static_cast<double>(c.drop_policy)},
          {"hash_mode", static_cast<double>(c.hash_mode)},
          {"seed", static_cast<double>(c.seed)},
          {"telemetry_interval", static_cast<double>(c.telemetry_interval)},
          {"n_group", static_cast<double>(c.n_group)},
          {"topk_group", static_cast<double>(c.topk_group)},
          {"routed_scaling_factor", c.routed_scaling_factor},
          {"min_capacity", static_cast<double>(c.min_capacity)},
          {"num_shared_experts", static_cast<double>(c.num_shared_experts)},
          {"shared_d_ff", static_cast<double>(c.shared_d_ff)},
          {"shared_expert_gate", c.shared_expert_gate ? 1.0 : 0.0},
          {"capacity_order", static_cast<double>(c.capacity_order)},
          {"renormalize_after_drops", c.renormalize_after_drops ? 1.0 : 0.0},
          {"bias_update_from_served", c.bias_update_from_served ? 1.0 : 0.0},
          {"aux_loss_scope", static_cast<double>(c.aux_loss_scope)},
          {"aux_loss_unbiased_topk", c.aux_loss_unbiased_topk ? 1.0 : 0.0}};
}

// Every rank's config and map, compared with rank 0's after the check-in: all ranks
// see the same gathered values, so all of them accept or all refuse.
void check_group_agrees(ExpertParallel& ep, const LayerConfig& c, const Error* refusal) {
  const auto fields = fingerprint(c);
  std::vector<double> mine;
  for (const auto& f : fields) mine.push_back(f.second);
  for (int32_t r : ep.placement.owner) mine.push_back(r);
  const size_t n = mine.size() + 1;  // the check-in's status comes first
  const std::vector<double> all = check_in(ep, "moe_layer_set_comm", refusal, mine);
  for (int q = 0; q < ep.world(); ++q) {
    for (size_t i = 1; i < n; ++i) {
      if (all[q * n + i] == all[i]) continue;
      const std::string what = i - 1 < fields.size()
                                   ? std::string("config.") + fields[i - 1].first
                                   : "the owner of expert " + std::to_string(i - 1 - fields.size());
      throw Error(MOE_STATUS_INVALID_ARGUMENT,
                  "ranks 0 and " + std::to_string(q) + " disagree on " + what + " (" +
                      std::to_string(all[i]) + " vs " + std::to_string(all[q * n + i]) +
                      "): every rank must attach an identically configured layer with the "
                      "same expert map");
    }
  }
}

template <typename S>
void sum_over_group(ExpertParallel& ep, S* data, int64_t n) {
  std::vector<double> mine(data, data + n);
  const std::vector<double> all = ep.all_gather(mine);
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0.0;
    for (int q = 0; q < ep.world(); ++q) sum += all[q * n + i];
    data[i] = static_cast<S>(sum);
  }
}

}  // namespace

void attach(Layer& layer, Communicator* comm, const int32_t* expert_owner, int64_t count) {
  const LayerConfig& c = layer.config;
  if (comm == nullptr) {
    require(expert_owner == nullptr, MOE_STATUS_INVALID_ARGUMENT,
            "expert_owner was given without a communicator");
    if (layer.ep) layer.weights = BoundWeights{};
    layer.ep.reset();
    return;
  }
  // The one refusal no exchange can carry: a host layer has no device memory to
  // stage a device communicator's exchanges through. (A device layer stages a host
  // communicator's through host memory.)
  std::unique_ptr<DeviceMemory> memory = layer.backend.device_memory(layer.stream);
  require(comm->device() == MOE_DEVICE_CPU || memory != nullptr, MOE_STATUS_UNSUPPORTED,
          "this communicator moves device memory; a host layer needs a host communicator "
          "(moe_mpi.h)");
  // Every other refusal is told to the group, so that all ranks fail together.
  std::unique_ptr<Error> refusal;
  Placement placement;
  try {
    require(c.router != MOE_ROUTER_EXPERT_CHOICE, MOE_STATUS_UNSUPPORTED,
            "expert parallelism does not run the expert-choice router: each expert picks "
            "its tokens from the whole batch, which no rank holds");
    require(!(c.capacity_order != MOE_CAPACITY_TOKEN_ORDER && comm->world() > 1),
            MOE_STATUS_UNSUPPORTED,
            std::string("expert parallelism over more than one rank does not fill capacity "
                        "in ") +
                capacity_order_name(c.capacity_order) +
                " order yet: that order interleaves every rank's copies");
    require(!(c.router == MOE_ROUTER_HASH && c.hash_mode == MOE_HASH_BALANCED && comm->world() > 1),
            MOE_STATUS_UNSUPPORTED,
            "expert parallelism over more than one rank does not run the balanced hash mode "
            "yet: it ranks the whole "
            "batch's keys, which no rank holds");
    require(layer.backend.device() == MOE_DEVICE_CPU || memory != nullptr, MOE_STATUS_UNSUPPORTED,
            std::string("backend ") + layer.backend.name() +
                " cannot stage expert-parallel exchanges through its device memory");
    require(expert_owner == nullptr || count == c.num_experts, MOE_STATUS_SHAPE_MISMATCH,
            "expert_owner has " + std::to_string(count) + " entries, the layer has " +
                std::to_string(c.num_experts) + " experts");
    placement = make_placement(c.num_experts, comm->world(), comm->rank(), expert_owner);
  } catch (const Error& e) {
    refusal = std::make_unique<Error>(e);
    placement = make_placement(c.num_experts, comm->world(), comm->rank(), nullptr);
  }
  auto ep = std::make_unique<ExpertParallel>(*comm, std::move(placement), std::move(memory));
  check_group_agrees(*ep, c, refusal.get());
  layer.weights = BoundWeights{};  // the expert tensors' shapes change
  layer.ep = std::move(ep);
}

void reduce_router_grad(Layer& layer, const moe_tensor_t& grad) {
  const LayerConfig& c = layer.config;
  require(c.learned_router(), MOE_STATUS_INVALID_ARGUMENT, "the hash router has no weights");
  check_tensor(grad, "grad", c.dtype, layer.backend.device(), {c.d_model, c.num_experts});
  if (!layer.ep) return;
  const int64_t n = c.d_model * c.num_experts;
  const size_t bytes = static_cast<size_t>(n) * dtype_size(c.dtype);
  // A device layer's gradient is summed in a host copy.
  DeviceMemory* device = layer.ep->memory();
  host_buffer<unsigned char> copy(device ? bytes : 0);
  void* data = device ? copy.data() : grad.data;
  if (device) device->to_host(data, grad.data, bytes);
  if (c.dtype == MOE_DTYPE_F64) {
    sum_over_group(*layer.ep, static_cast<double*>(data), n);
  } else if (c.dtype == MOE_DTYPE_BF16) {
    sum_over_group(*layer.ep, static_cast<bfloat16*>(data), n);
  } else {
    sum_over_group(*layer.ep, static_cast<float*>(data), n);
  }
  if (device) device->to_device(grad.data, data, bytes);
}

}  // namespace moe::dist
