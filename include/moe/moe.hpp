// moe.hpp: a thin header-only C++ wrapper over moe.h. Statuses become moe::Exception,
// handles become move-only RAII objects. Nothing here is compiled into the library,
// so it adds no ABI of its own.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "moe/moe.h"

namespace moe {

class Exception : public std::runtime_error {
 public:
  Exception(moe_status_t status, const std::string& message)
      : std::runtime_error(std::string(moe_status_string(status)) + ": " + message),
        status_(status) {}
  moe_status_t status() const { return status_; }

 private:
  moe_status_t status_;
};

inline void check(moe_status_t status) {
  if (status != MOE_STATUS_SUCCESS) throw Exception(status, moe_last_error());
}

// A dense row-major view of caller memory of any dtype (bfloat16 included: pass the
// storage of the caller's 2-byte type). At most MOE_MAX_DIMS dimensions, else throws.
inline moe_tensor_t tensor(void* data, moe_dtype_t dtype, std::initializer_list<int64_t> shape) {
  if (shape.size() > MOE_MAX_DIMS)
    throw Exception(MOE_STATUS_SHAPE_MISMATCH, "moe::tensor: " + std::to_string(shape.size()) +
                                                   " dimensions, at most " +
                                                   std::to_string(MOE_MAX_DIMS));
  moe_tensor_t t{};
  t.data = data;
  t.dtype = dtype;
  for (int64_t s : shape) t.shape[t.ndim++] = s;
  return t;
}

// Over memory held as const: for the tensors the library only reads (args.x, args.dy,
// weights; see moe_tensor_const in moe.h).
inline moe_tensor_t tensor(const void* data, moe_dtype_t dtype,
                           std::initializer_list<int64_t> shape) {
  return tensor(const_cast<void*>(data), dtype, shape);
}

// The dtype of an element type: float, double, and uint16_t for bfloat16 storage.
template <typename T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr moe_dtype_t value = MOE_DTYPE_F32;
};
template <>
struct dtype_of<double> {
  static constexpr moe_dtype_t value = MOE_DTYPE_F64;
};
template <>
struct dtype_of<uint16_t> {
  static constexpr moe_dtype_t value = MOE_DTYPE_BF16;
};

// The same, with the dtype taken from the element type (const or not).
template <typename T>
moe_tensor_t tensor(T* data, std::initializer_list<int64_t> shape) {
  using Element = std::remove_const_t<T>;
  return tensor(const_cast<Element*>(data), dtype_of<Element>::value, shape);
}

// Saved state of one forward call; consumed by Layer::backward.
class Context {
 public:
  Context() = default;
  explicit Context(moe_ctx_t ctx) : ctx_(ctx) {}
  Context(Context&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}
  Context& operator=(Context&& other) noexcept {
    std::swap(ctx_, other.ctx_);
    return *this;
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() { moe_ctx_destroy(ctx_); }

  moe_ctx_t get() const { return ctx_; }

  moe_losses_t losses() const {
    moe_losses_t l = MOE_LOSSES_INIT;
    check(moe_ctx_losses(ctx_, &l));
    return l;
  }

  struct RoutingDecision {
    int64_t tokens = 0, slots = 0;
    std::vector<int32_t> experts;
    std::vector<float> gates;
    std::vector<uint8_t> dropped;
  };
  RoutingDecision routing() const {
    RoutingDecision r;
    check(moe_ctx_routing_shape(ctx_, &r.tokens, &r.slots));
    const size_t n = static_cast<size_t>(r.tokens * r.slots);
    r.experts.resize(n);
    r.gates.resize(n);
    r.dropped.resize(n);
    check(moe_ctx_routing(ctx_, r.experts.data(), r.gates.data(), r.dropped.data()));
    return r;
  }

  struct Stats {
    moe_routing_stats_t summary = MOE_ROUTING_STATS_INIT;
    std::vector<int64_t> demand, served;
  };
  Stats stats(int64_t num_experts) const {
    Stats s;
    s.demand.resize(static_cast<size_t>(num_experts));
    s.served.resize(static_cast<size_t>(num_experts));
    s.summary.demand = s.demand.data();
    s.summary.served = s.served.data();
    s.summary.entries = num_experts;  // fewer than the layer's E is refused
    check(moe_ctx_routing_stats(ctx_, &s.summary));
    return s;
  }

 private:
  moe_ctx_t ctx_ = nullptr;
};

class Layer {
 public:
  explicit Layer(const moe_layer_config_t& config) { check(moe_layer_create(&config, &layer_)); }
  Layer(Layer&& other) noexcept : layer_(std::exchange(other.layer_, nullptr)) {}
  Layer& operator=(Layer&& other) noexcept {
    std::swap(layer_, other.layer_);
    return *this;
  }
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;
  ~Layer() { moe_layer_destroy(layer_); }

  moe_layer_t get() const { return layer_; }

  void set_weights(const moe_weights_t& weights) { check(moe_layer_set_weights(layer_, &weights)); }

  // Forward; the returned Context is what backward needs.
  Context forward(const moe_forward_args_t& args) {
    moe_ctx_t ctx = nullptr;
    check(moe_layer_forward(layer_, &args, &ctx));
    return Context(ctx);
  }

  void backward(const Context& ctx, const moe_backward_args_t& args) {
    check(moe_layer_backward(layer_, ctx.get(), &args));
  }

  moe_layer_config_t config() const {
    moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
    check(moe_layer_get_config(layer_, &c));
    return c;
  }

  int64_t step() const {
    int64_t s = 0;
    check(moe_layer_get_step(layer_, &s));
    return s;
  }
  moe_stage_profile_t stage_profile(bool reset = false) {
    moe_stage_profile_t p = MOE_STAGE_PROFILE_INIT;
    check(moe_layer_stage_profile(layer_, &p, reset ? 1 : 0));
    return p;
  }

  // Expert parallelism (moe.h): attach a communicator (empty owner: contiguous blocks).
  void set_comm(moe_comm_t comm, const std::vector<int32_t>& expert_owner = {}) {
    check(moe_layer_set_comm(layer_, comm, expert_owner.empty() ? nullptr : expert_owner.data(),
                             static_cast<int64_t>(expert_owner.size())));
  }
  std::vector<int32_t> local_experts() const {
    int64_t n = 0;
    check(moe_layer_local_experts(layer_, nullptr, 0, &n));
    std::vector<int32_t> experts(static_cast<size_t>(n));
    check(moe_layer_local_experts(layer_, experts.data(), n, &n));
    return experts;
  }
  void reduce_router_grad(const moe_tensor_t& grad) {
    check(moe_layer_reduce_router_grad(layer_, grad));
  }
  struct Traffic {
    moe_comm_traffic_t totals = MOE_COMM_TRAFFIC_INIT;
    std::vector<moe_peer_traffic_t> peers;  // [world]
  };
  Traffic traffic(bool reset = false) {
    Traffic t;
    check(moe_layer_comm_traffic(layer_, &t.totals, nullptr, 0, 0));
    t.peers.resize(static_cast<size_t>(t.totals.world));
    check(moe_layer_comm_traffic(layer_, &t.totals, t.peers.data(), t.totals.world, reset ? 1 : 0));
    return t;
  }

 private:
  moe_layer_t layer_ = nullptr;
};

}  // namespace moe
