// moe.hpp: a thin header-only C++17 wrapper over the whole of moe.h. Statuses become
// moe::Exception, handles (layers, contexts, groups, communicators) move-only RAII
// objects, caller arrays std::vector, exports std::string. Nothing here is compiled into
// the library, so it adds no ABI of its own; the raw handle of every object is get().
#pragma once

#if (defined(_MSVC_LANG) ? _MSVC_LANG : __cplusplus) < 201703L
#error "moe.hpp needs C++17 or later (-std=c++17)"
#else  // the whole header: an older standard sees the one message above, nothing else

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

// The library's version, and its compiled-in backends in "auto"'s order.
struct Version {
  int32_t major = 0, minor = 0, patch = 0;
};
inline Version version() {
  Version v;
  check(moe_version(&v.major, &v.minor, &v.patch));
  return v;
}
inline std::vector<std::string> backends() {
  int32_t count = 0;
  check(moe_backend_count(&count));
  std::vector<std::string> names;
  for (int32_t i = 0; i < count; ++i) {
    const char* name = nullptr;
    check(moe_backend_name(i, &name));
    names.emplace_back(name);
  }
  return names;
}

// The metric catalogue (docs/metrics.md), scalars first.
struct CatalogueEntry {
  std::string name, help;
  moe_metric_shape_t shape;
};
inline std::vector<CatalogueEntry> metric_catalogue() {
  int32_t count = 0;
  check(moe_metric_count(&count));
  std::vector<CatalogueEntry> out;
  for (int32_t i = 0; i < count; ++i) {
    const char *name = nullptr, *help = nullptr;
    moe_metric_shape_t shape = MOE_METRIC_SCALAR;
    check(moe_metric_info(i, &name, &shape, &help));
    out.push_back({name, help ? help : "", shape});
  }
  return out;
}

namespace detail {
// Text out of an export call: asks for the length, then fills a string of it.
template <typename Call>
std::string exported_text(Call&& call) {
  size_t length = 0;
  check(call(nullptr, size_t{0}, &length));
  std::string text(length + 1, '\0');
  check(call(text.data(), text.size(), &length));
  text.resize(length);
  return text;
}
}  // namespace detail

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
  // num_experts: the layer's E (fewer is refused with MOE_STATUS_SHAPE_MISMATCH).
  Stats stats(int64_t num_experts) const {
    if (num_experts < 1)
      throw Exception(
          MOE_STATUS_SHAPE_MISMATCH,
          "Context::stats: num_experts must be the layer's E, got " + std::to_string(num_experts));
    Stats s;
    s.demand.resize(static_cast<size_t>(num_experts));
    s.served.resize(static_cast<size_t>(num_experts));
    s.summary.demand = s.demand.data();
    s.summary.served = s.served.data();
    s.summary.entries = num_experts;
    check(moe_ctx_routing_stats(ctx_, &s.summary));
    return s;
  }

  // Routing consistency against another saved state of the same probe batch.
  struct Consistency {
    double top1 = 0, topk = 0;
  };
  Consistency compare_routing(const Context& other) const {
    Consistency c;
    check(moe_ctx_compare_routing(ctx_, other.ctx_, &c.top1, &c.topk));
    return c;
  }

 private:
  moe_ctx_t ctx_ = nullptr;
};

// A communicator (expert parallelism, docs/distributed.md).
class Comm {
 public:
  Comm() = default;
  // Over the caller's transport callbacks.
  Comm(const moe_comm_ops_t& ops, double timeout_s) {
    check(moe_comm_create(&ops, timeout_s, &comm_));
  }
  // Takes ownership of a communicator made by moe_mpi.h or moe_nccl.h.
  static Comm adopt(moe_comm_t comm) {
    Comm c;
    c.comm_ = comm;
    return c;
  }
  // The built-in one-rank communicator.
  static Comm local() {
    moe_comm_t comm = nullptr;
    check(moe_comm_create_local(&comm));
    return adopt(comm);
  }
  Comm(Comm&& other) noexcept : comm_(std::exchange(other.comm_, nullptr)) {}
  Comm& operator=(Comm&& other) noexcept {
    std::swap(comm_, other.comm_);
    return *this;
  }
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;
  ~Comm() { moe_comm_destroy(comm_); }

  moe_comm_t get() const { return comm_; }
  int32_t rank() const { return rank_and_world().first; }
  int32_t world() const { return rank_and_world().second; }
  // send_bytes[p] to rank p, recv_bytes[p] from rank p, packed in rank order.
  void all_to_all(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                  const std::vector<int64_t>& recv_bytes) {
    check(moe_comm_all_to_all(comm_, send, send_bytes.data(), recv, recv_bytes.data()));
  }
  void all_reduce_sum(std::vector<double>& values) {
    check(moe_comm_all_reduce_sum(comm_, values.data(), static_cast<int64_t>(values.size())));
  }
  void barrier() { check(moe_comm_barrier(comm_)); }

 private:
  std::pair<int32_t, int32_t> rank_and_world() const {
    int32_t rank = 0, world = 0;
    check(moe_comm_rank(comm_, &rank, &world));
    return {rank, world};
  }
  moe_comm_t comm_ = nullptr;
};

// A model family's routing conventions over `config` (moe_layer_config_preset).
inline moe_layer_config_t preset(const char* family,
                                 moe_layer_config_t config = MOE_LAYER_CONFIG_INIT) {
  check(moe_layer_config_preset(&config, family));
  return config;
}

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
  // Forward when no backward follows (evaluation): no saved state is kept.
  void forward_only(const moe_forward_args_t& args) {
    check(moe_layer_forward(layer_, &args, nullptr));
  }

  void backward(const Context& ctx, const moe_backward_args_t& args) {
    check(moe_layer_backward(layer_, ctx.get(), &args));
  }

  moe_layer_config_t config() const {
    moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
    check(moe_layer_get_config(layer_, &c));
    return c;
  }

  void set_stream(void* stream) { check(moe_layer_set_stream(layer_, stream)); }

  int64_t step() const {
    int64_t s = 0;
    check(moe_layer_get_step(layer_, &s));
    return s;
  }
  void set_step(int64_t step) { check(moe_layer_set_step(layer_, step)); }

  std::vector<double> selection_bias() const {
    std::vector<double> bias(static_cast<size_t>(config().num_experts));
    check(moe_layer_get_selection_bias(layer_, bias.data(), static_cast<int64_t>(bias.size())));
    return bias;
  }
  void set_selection_bias(const std::vector<double>& bias) {
    check(moe_layer_set_selection_bias(layer_, bias.data(), static_cast<int64_t>(bias.size())));
  }
  // The global-batch aux loss (aux_loss_scope MOE_AUX_LOSS_GLOBAL): reset after each
  // optimizer step; the accumulated counts [E] and the calls they hold.
  void reset_aux_counts() { check(moe_layer_reset_aux_counts(layer_)); }
  std::vector<double> aux_counts(int64_t* calls = nullptr) const {
    std::vector<double> counts(static_cast<size_t>(config().num_experts));
    check(moe_layer_get_aux_counts(layer_, counts.data(), static_cast<int64_t>(counts.size()),
                                   calls));
    return counts;
  }
  void build_hash_table(const std::vector<int64_t>& ids, int64_t vocab_size) {
    check(moe_layer_build_hash_table(layer_, ids.data(), static_cast<int64_t>(ids.size()),
                                     vocab_size));
  }

  moe_stage_profile_t stage_profile(bool reset = false) {
    moe_stage_profile_t p = MOE_STAGE_PROFILE_INIT;
    check(moe_layer_stage_profile(layer_, &p, reset ? 1 : 0));
    return p;
  }

  // Telemetry (docs/telemetry.md): one metric by name (1, E or E*E values).
  std::vector<double> metric(const std::string& name, moe_split_t split = MOE_SPLIT_TRAIN,
                             moe_scope_t scope = MOE_SCOPE_LAST) const {
    int64_t count = 0;
    check(moe_layer_metric(layer_, split, scope, name.c_str(), nullptr, 0, &count));
    std::vector<double> values(static_cast<size_t>(count));
    check(moe_layer_metric(layer_, split, scope, name.c_str(), values.data(), count, &count));
    return values;
  }
  // Every metric at once, in catalogue order.
  struct Snapshot {
    std::vector<double> scalars, per_expert, coactivation;
    int64_t num_experts = 0, step = -1;
  };
  Snapshot telemetry(moe_split_t split = MOE_SPLIT_TRAIN,
                     moe_scope_t scope = MOE_SCOPE_LAST) const {
    moe_telemetry_snapshot_t s = MOE_TELEMETRY_SNAPSHOT_INIT;
    s.split = split;
    s.scope = scope;
    check(moe_layer_telemetry(layer_, &s));  // the counts
    Snapshot out;
    out.scalars.resize(static_cast<size_t>(s.num_scalars));
    out.per_expert.resize(static_cast<size_t>(s.num_per_expert * s.num_experts));
    out.coactivation.resize(static_cast<size_t>(metric("coactivation", split, scope).size()));
    s.scalars = out.scalars.data();
    s.per_expert = out.per_expert.data();
    s.coactivation = out.coactivation.empty() ? nullptr : out.coactivation.data();
    check(moe_layer_telemetry(layer_, &s));
    out.num_experts = s.num_experts;
    out.step = s.step;
    return out;
  }
  void reset_telemetry() { check(moe_layer_telemetry_reset(layer_)); }
  void set_name(const std::string& name) { check(moe_layer_set_name(layer_, name.c_str())); }
  std::string export_text(moe_export_format_t format, moe_split_t split = MOE_SPLIT_TRAIN,
                          moe_scope_t scope = MOE_SCOPE_LAST) const {
    return detail::exported_text([&](char* buffer, size_t capacity, size_t* length) {
      return moe_layer_telemetry_export(layer_, format, split, scope, buffer, capacity, length);
    });
  }
  void set_verdict_thresholds(const moe_verdict_thresholds_t& thresholds) {
    check(moe_layer_set_verdict_thresholds(layer_, &thresholds));
  }
  moe_verdicts_t verdicts(moe_split_t split = MOE_SPLIT_TRAIN,
                          moe_scope_t scope = MOE_SCOPE_WINDOW) const {
    moe_verdicts_t v = MOE_VERDICTS_INIT;
    check(moe_layer_verdicts(layer_, split, scope, &v));
    return v;
  }
  moe_weight_metrics_t weight_metrics() const {
    moe_weight_metrics_t m = MOE_WEIGHT_METRICS_INIT;
    check(moe_layer_weight_metrics(layer_, &m));
    return m;
  }

  // Expert parallelism (moe.h): attach a communicator (empty owner: contiguous blocks);
  // detach() to go back to one process. The communicator must outlive the attachment.
  // An empty Comm (default-made or moved-from) throws: detach() detaches. A temporary
  // is refused at compile time: the communicator must outlive the attachment.
  void set_comm(const Comm& comm, const std::vector<int32_t>& expert_owner = {}) {
    if (comm.get() == nullptr)
      throw Exception(MOE_STATUS_NULL_POINTER,
                      "Layer::set_comm: the Comm is empty (default-made or moved-from); "
                      "detach() detaches");
    set_comm(comm.get(), expert_owner);
  }
  void set_comm(Comm&& comm, const std::vector<int32_t>& expert_owner = {}) = delete;
  void set_comm(moe_comm_t comm, const std::vector<int32_t>& expert_owner = {}) {
    check(moe_layer_set_comm(layer_, comm, expert_owner.empty() ? nullptr : expert_owner.data(),
                             static_cast<int64_t>(expert_owner.size())));
  }
  void detach() { check(moe_layer_set_comm(layer_, nullptr, nullptr, 0)); }
  // The data-parallel communicator of the global-batch aux loss (it must outlive this).
  void set_aux_comm(const Comm& comm) { check(moe_layer_set_aux_comm(layer_, comm.get())); }
  void set_aux_comm(Comm&& comm) = delete;
  void detach_aux_comm() { check(moe_layer_set_aux_comm(layer_, nullptr)); }
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
  // Each token once per rank (moe_ep_options_t.dedup), its forward pipelined in
  // `chunks`. Collective.
  void set_dedup(bool dedup, int32_t chunks = 1) {
    moe_ep_options_t o = MOE_EP_OPTIONS_INIT;
    o.dedup = dedup ? 1 : 0;
    o.chunks = chunks;
    check(moe_layer_set_ep_options(layer_, &o));
  }
  // Each expert's pre-drop demand over the training forwards since the last reset.
  std::vector<double> expert_load(bool reset = false) {
    std::vector<double> load(static_cast<size_t>(config().num_experts));
    check(moe_layer_expert_load(layer_, load.data(), static_cast<int64_t>(load.size()),
                                reset ? 1 : 0));
    return load;
  }
  // Moves this rank's [local experts, bytes_per_expert] tensor to the slot table's
  // placement (collective); returns the new local experts' rows.
  template <typename T>
  std::vector<T> move_expert_tensor(const std::vector<int32_t>& slot_expert,
                                    const std::vector<T>& src, int64_t elements_per_expert) {
    moe_comm_traffic_t where = MOE_COMM_TRAFFIC_INIT;  // this rank and the world size
    check(moe_layer_comm_traffic(layer_, &where, nullptr, 0, 0));
    const int64_t n = static_cast<int64_t>(slot_expert.size());
    const int64_t per_rank = where.world > 0 && n % where.world == 0 ? n / where.world : 0;
    int64_t held = 0;
    for (int64_t i = 0; per_rank > 0 && i < n; ++i)
      if (slot_expert[i] >= 0 && i / per_rank == where.rank) ++held;
    std::vector<T> dst(static_cast<size_t>(held * elements_per_expert));
    check(moe_layer_move_expert_tensor(
        layer_, slot_expert.data(), static_cast<int64_t>(slot_expert.size()), src.data(),
        dst.data(), elements_per_expert * static_cast<int64_t>(sizeof(T))));
    return dst;
  }
  // Installs a slot-table placement (collective); unbinds the weights.
  void set_placement(const std::vector<int32_t>& slot_expert) {
    check(moe_layer_set_placement(layer_, slot_expert.data(),
                                  static_cast<int64_t>(slot_expert.size())));
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

// A telemetry group: the layers of one model, summarised and exported together. The
// layers are not owned: they must outlive the group's queries.
class Group {
 public:
  Group() { check(moe_group_create(&group_)); }
  Group(Group&& other) noexcept : group_(std::exchange(other.group_, nullptr)) {}
  Group& operator=(Group&& other) noexcept {
    std::swap(group_, other.group_);
    return *this;
  }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;
  ~Group() { moe_group_destroy(group_); }

  moe_group_t get() const { return group_; }
  void add(const Layer& layer) { check(moe_group_add(group_, layer.get())); }
  void add(Layer&& layer) = delete;  // the layer must outlive the group's queries
  moe_group_metrics_t metrics(moe_split_t split = MOE_SPLIT_TRAIN,
                              moe_scope_t scope = MOE_SCOPE_LAST) const {
    moe_group_metrics_t m = MOE_GROUP_METRICS_INIT;
    check(moe_group_get_metrics(group_, split, scope, &m));
    return m;
  }
  std::string export_text(moe_export_format_t format, moe_split_t split = MOE_SPLIT_TRAIN,
                          moe_scope_t scope = MOE_SCOPE_LAST) const {
    return detail::exported_text([&](char* buffer, size_t capacity, size_t* length) {
      return moe_group_telemetry_export(group_, format, split, scope, buffer, capacity, length);
    });
  }

 private:
  moe_group_t group_ = nullptr;
};

}  // namespace moe

#endif  // C++17
