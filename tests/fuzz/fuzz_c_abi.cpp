// libFuzzer target over the C ABI: the input is a program of calls (create, set_weights,
// forward, backward, destroy, telemetry, exports, groups, communicators, ...) with
// hostile arguments drawn from the input's bytes. After every call it checks the ABI's
// promises and traps on a broken one:
//   - every call returns a known status, and a failing one leaves a message;
//   - a rejected forward or backward changes nothing (the step, the outputs);
//   - a destroyed handle is refused with MOE_STATUS_INVALID_HANDLE, whatever now lives
//     at its old address;
//   - every export is well formed: each JSONL line parses as JSON, the CSV has one
//     header and one row of the same width, each Prometheus line is a comment or a
//     sample of a moe_ metric.
// Built with -fsanitize=fuzzer,address,undefined (scripts/fuzz.sh), so a crash, a leak,
// an out-of-bounds access or undefined behaviour is a finding too.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "moe/moe.h"

// raw_enum_calls.c: calls that take enums by value, made from C with any int.
extern "C" {
moe_status_t fuzz_layer_metric(const_moe_layer_t layer, int split, int scope, const char* name,
                               double* values, int64_t capacity, int64_t* count);
moe_status_t fuzz_layer_export(const_moe_layer_t layer, int format, int split, int scope,
                               char* buffer, size_t capacity, size_t* length);
moe_status_t fuzz_group_export(moe_group_t group, int format, int split, int scope, char* buffer,
                               size_t capacity, size_t* length);
moe_status_t fuzz_layer_verdicts(const_moe_layer_t layer, int split, int scope,
                                 moe_verdicts_t* verdicts);
}

namespace {

// An enum field set to any int, as a C caller may: its bytes, without forming an
// out-of-range enum value in C++.
template <typename Enum>
void set_raw(Enum& field, int64_t raw) {
  static_assert(sizeof(Enum) == sizeof(int), "moe.h's enums are int-sized");
  const int value = static_cast<int>(raw);
  std::memcpy(&field, &value, sizeof field);
}

void promise(bool kept) {
  if (!kept) __builtin_trap();
}

// The program's bytes, read as values; zeros once they run out.
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool done() const { return at_ >= size_; }
  uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }
  int64_t small(int64_t lo, int64_t hi) { return lo + byte() % (hi - lo + 1); }
  // An enum's raw value: mostly lo..hi (a little past the last value), sometimes far
  // outside (UBSan reports a load only past the enum's bit range, e.g. 9 for 0..4).
  int64_t raw(int64_t lo, int64_t hi) {
    return byte() % 8 ? small(lo, hi) : pick<int64_t>({-1, 9, 77, 1 << 20, INT32_MIN});
  }
  template <typename T>
  T pick(std::initializer_list<T> values) {
    return values.begin()[byte() % values.size()];
  }
  double number() {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    return pick<double>({0.0, 1.0, -1.0, 0.5, 2.0, 1e-310, 1e300, -1e300, nan, inf, -inf, 1e-6, 1e6,
                         3.5, -800.0, 60.0});
  }
  std::string text() {
    std::string s;
    const int64_t n = small(0, 12);
    for (int64_t i = 0; i < n; ++i) s.push_back(static_cast<char>(byte() | 1));  // no NUL
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_, at_ = 0;
};

bool known(moe_status_t s) {
  return s >= MOE_STATUS_SUCCESS && s <= MOE_STATUS_INTERNAL_ERROR;
}

moe_status_t checked(moe_status_t s) {
  promise(known(s));
  promise(s != MOE_STATUS_INTERNAL_ERROR);  // hostile input is the caller's error, not ours
  if (s != MOE_STATUS_SUCCESS) promise(std::strlen(moe_last_error()) > 0);
  return s;
}

struct LayerSlot {
  moe_layer_t handle = nullptr;
  bool alive = false;
  moe_layer_config_t config = MOE_LAYER_CONFIG_INIT;
  std::vector<double> router, w1, w2, b1, b2, g_router, g_w1, g_w2, g_b1, g_b2;
  std::vector<double> s1, s2, sg, g_s1, g_s2, g_sg;  // the shared experts' weights
  std::vector<moe_ctx_t> contexts;
  std::vector<double> x, y, dy, dx;
};

moe_tensor_t tensor(std::vector<double>& v, std::initializer_list<int64_t> shape) {
  moe_tensor_t t = MOE_TENSOR_EMPTY;
  t.data = v.data();
  t.dtype = MOE_DTYPE_F64;
  for (int64_t s : shape) t.shape[t.ndim++] = s;
  return t;
}

int64_t ff_width(const moe_layer_config_t& c) {
  const bool gated = c.activation == MOE_ACTIVATION_SWIGLU || c.activation == MOE_ACTIVATION_GEGLU;
  return gated ? 2 * c.d_ff : c.d_ff;
}

moe_weights_t weights_of(LayerSlot& l, bool gradients) {
  const moe_layer_config_t& c = l.config;
  const int64_t d = c.d_model, E = c.num_experts, F = ff_width(c);
  auto& r = gradients ? l.g_router : l.router;
  auto& a = gradients ? l.g_w1 : l.w1;
  auto& b = gradients ? l.g_w2 : l.w2;
  auto& c1 = gradients ? l.g_b1 : l.b1;
  auto& c2 = gradients ? l.g_b2 : l.b2;
  r.resize(d * E, 0.1);
  a.resize(E * d * F, 0.05);
  b.resize(E * c.d_ff * d, -0.05);
  c1.resize(E * F, 0.01);
  c2.resize(E * d, 0.02);
  moe_weights_t w = MOE_WEIGHTS_INIT;
  if (c.router != MOE_ROUTER_HASH) w.router = tensor(r, {d, E});
  w.w1 = tensor(a, {E, d, F});
  w.w2 = tensor(b, {E, c.d_ff, d});
  if (c.expert_bias) {
    w.b1 = tensor(c1, {E, F});
    w.b2 = tensor(c2, {E, d});
  }
  if (c.num_shared_experts > 0) {
    const int64_t width = c.num_shared_experts * c.shared_d_ff;
    const int64_t width1 = F == c.d_ff ? width : 2 * width;
    auto& s1 = gradients ? l.g_s1 : l.s1;
    auto& s2 = gradients ? l.g_s2 : l.s2;
    auto& sg = gradients ? l.g_sg : l.sg;
    s1.resize(d * width1, 0.03);
    s2.resize(width * d, -0.03);
    sg.resize(d, 0.1);
    w.shared_w1 = tensor(s1, {d, width1});
    w.shared_w2 = tensor(s2, {width, d});
    if (c.shared_expert_gate) w.shared_gate = tensor(sg, {d, 1});
  }
  return w;
}

// One argument of a call, spoiled in one of a few ways (or left alone).
void spoil(moe_tensor_t& t, Bytes& in) {
  switch (in.small(0, 9)) {
    case 0: t.shape[in.small(0, 3)] += in.pick<int64_t>({1, -1, int64_t{1} << 62}); break;
    case 1: t.data = nullptr; break;
    case 2: t.data = static_cast<char*>(t.data) + 1; break;  // misaligned
    case 3: set_raw(t.dtype, in.raw(0, 3)); break;
    case 4: t.ndim = static_cast<int32_t>(in.small(-1, 6)); break;
    case 5: t.device = MOE_DEVICE_CUDA; break;
    default: break;
  }
}

// CSV records as RFC 4180 reads them: a line break inside quotes is part of a field.
// Returns the number of fields of each record.
std::vector<size_t> csv_record_widths(const std::string& text) {
  std::vector<size_t> widths;
  size_t fields = 1;
  bool quoted = false;
  for (char ch : text) {
    if (ch == '"') quoted = !quoted;
    if (quoted) continue;
    if (ch == ',') ++fields;
    if (ch == '\n') {
      widths.push_back(fields);
      fields = 1;
    }
  }
  promise(!quoted);
  return widths;
}

void check_export(const std::string& text, int format) {
  if (format == MOE_EXPORT_CSV) {
    const std::vector<size_t> widths = csv_record_widths(text);
    promise(widths.size() >= 2);
    for (size_t w : widths) promise(w == widths[0]);
    return;
  }
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (format == MOE_EXPORT_JSONL) {
      promise(nlohmann::json::accept(line));
    } else if (format == MOE_EXPORT_PROMETHEUS) {
      promise(line.rfind("# ", 0) == 0 || line.rfind("moe_", 0) == 0);
    }
  }
}

void export_and_check(LayerSlot& l, Bytes& in) {
  const int format = static_cast<int>(in.raw(0, 5)), split = static_cast<int>(in.raw(0, 2)),
            scope = static_cast<int>(in.raw(0, 3));
  size_t length = 0;
  if (checked(fuzz_layer_export(l.handle, format, split, scope, nullptr, 0, &length)) !=
      MOE_STATUS_SUCCESS)
    return;
  std::string text(length + 1, '\0');
  promise(checked(fuzz_layer_export(l.handle, format, split, scope, text.data(), text.size(),
                                    &length)) == MOE_STATUS_SUCCESS);
  text.resize(length);
  if (format != MOE_EXPORT_CSV_HEADER && format != MOE_EXPORT_CSV_ROW) check_export(text, format);
}

void create(LayerSlot& l, Bytes& in) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = in.small(0, 6);
  c.d_ff = in.small(0, 6);
  c.num_experts = in.pick<int64_t>({1, 2, 3, 4, 8, 0, -1, int64_t{1} << 40});
  c.top_k = in.small(0, 4);
  set_raw(c.activation, in.raw(0, 6));
  set_raw(c.router, in.raw(0, 4));
  c.dtype = MOE_DTYPE_F64;
  c.backend = in.pick<const char*>({"cpu_ref", "cpu_ref", "cpu_ref", "no_such", nullptr});
  c.capacity_factor = in.number();
  c.router_temp_init = in.byte() % 4 ? 1.0 : in.number();
  set_raw(c.router_noise_type, in.raw(0, 3));
  c.router_noise_std_init = in.byte() % 2 ? 0.0 : in.number();
  c.load_balance_alpha = in.byte() % 2 ? 0.01 : in.number();
  c.router_z_loss_coef = in.byte() % 2 ? 0.0 : in.number();
  c.bias_update_rate = in.byte() % 2 ? 0.0 : in.number();
  c.expert_bias = static_cast<int32_t>(in.small(0, 2));
  c.pad_to_capacity = static_cast<int32_t>(in.small(0, 1));
  set_raw(c.drop_policy, in.raw(0, 2));
  c.telemetry_interval = in.small(-1, 3);
  c.renormalize = static_cast<int32_t>(in.small(-2, 2));
  set_raw(c.hash_mode, in.raw(0, 4));
  c.n_group = in.byte() % 2 ? 0 : in.small(-1, 8);
  c.topk_group = in.byte() % 2 ? 0 : in.small(-1, 8);
  c.routed_scaling_factor = in.byte() % 2 ? 1.0 : in.number();
  c.min_capacity = in.byte() % 2 ? 0 : in.small(-1, 6);
  set_raw(c.capacity_order, in.byte() % 2 ? 0 : in.raw(0, 3));
  set_raw(c.aux_loss_scope, in.byte() % 2 ? 0 : in.raw(0, 2));
  c.aux_loss_unbiased_topk = static_cast<int32_t>(in.byte() % 2 ? 0 : in.small(-1, 1));
  c.renormalize_after_drops = static_cast<int32_t>(in.byte() % 2 ? 0 : in.small(-1, 1));
  c.bias_update_from_served = static_cast<int32_t>(in.byte() % 2 ? 0 : in.small(-1, 1));
  if (in.byte() % 3 == 0) {
    c.num_shared_experts = in.small(-1, 2);
    c.shared_d_ff = in.small(-1, 3);
    c.shared_expert_gate = static_cast<int32_t>(in.small(-1, 1));
  }
  moe_layer_t handle = nullptr;
  if (checked(moe_layer_create(&c, &handle)) != MOE_STATUS_SUCCESS) {
    promise(handle == nullptr);
    return;
  }
  l = LayerSlot{};
  l.handle = handle;
  l.alive = true;
  promise(checked(moe_layer_get_config(handle, &l.config)) == MOE_STATUS_SUCCESS);
}

void forward(LayerSlot& l, Bytes& in) {
  const moe_layer_config_t& c = l.config;
  const int64_t T = in.small(0, 9), d = c.d_model;
  l.x.assign(T * d + 1, 0.0);
  for (auto& v : l.x) v = in.byte() % 5 ? (in.byte() - 128) / 16.0 : in.number();
  l.y.assign(T * d + 1, 7.0);
  std::vector<int64_t> ids(T + 1);
  for (auto& id : ids) id = in.small(-2, 40);
  moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
  a.x = tensor(l.x, {T, d});
  a.y = tensor(l.y, {T, d});
  a.train = static_cast<int32_t>(in.small(0, 2));
  a.token_ids = in.byte() % 3 ? ids.data() : nullptr;
  a.seq_len = in.small(-1, 4);
  a.recompute = static_cast<int32_t>(in.byte() % 4 ? 0 : in.small(-1, 2));
  std::vector<uint8_t> mask(T + 1);
  for (auto& m : mask) m = in.byte() % 3 ? 1 : in.byte();  // any byte: nonzero keeps the token
  a.token_mask = in.byte() % 2 ? mask.data() : nullptr;
  if (in.byte() % 3 == 0) spoil(in.byte() % 2 ? a.x : a.y, in);
  int64_t step_before = -1, step_after = -1;
  checked(moe_layer_get_step(l.handle, &step_before));
  const std::vector<double> y_before = l.y;
  moe_ctx_t ctx = nullptr;
  const moe_status_t s = checked(moe_layer_forward(l.handle, &a, in.byte() % 4 ? &ctx : nullptr));
  checked(moe_layer_get_step(l.handle, &step_after));
  if (s != MOE_STATUS_SUCCESS) {
    promise(step_after == step_before && l.y == y_before && ctx == nullptr);
    return;
  }
  if (ctx) l.contexts.push_back(ctx);
}

void backward(LayerSlot& l, LayerSlot& other, Bytes& in) {
  LayerSlot& owner = in.byte() % 4 ? l : other;  // sometimes another layer's context
  if (owner.contexts.empty()) return;
  moe_ctx_t ctx = owner.contexts[in.byte() % owner.contexts.size()];
  const moe_layer_config_t& c = l.config;
  int64_t tokens = 0, slots = 0;
  if (moe_ctx_routing_shape(ctx, &tokens, &slots) != MOE_STATUS_SUCCESS) return;
  l.dy.assign(tokens * c.d_model + 1, 0.5);
  l.dx.assign(tokens * c.d_model + 1, 3.0);
  moe_backward_args_t b = MOE_BACKWARD_ARGS_INIT;
  b.dy = tensor(l.dy, {tokens, c.d_model});
  b.dx = tensor(l.dx, {tokens, c.d_model});
  b.grads = weights_of(l, true);
  b.flags = in.byte() % 4 ? 0u : static_cast<uint32_t>(in.byte());
  if (in.byte() % 4 == 0) b.aux_loss_grad = in.number();
  if (in.byte() % 4 == 0) b.z_loss_grad = in.number();
  if (in.byte() % 3 == 0) spoil(in.byte() % 2 ? b.dy : b.grads.w1, in);
  const std::vector<double> dx_before = l.dx;
  if (checked(moe_layer_backward(l.handle, ctx, &b)) != MOE_STATUS_SUCCESS)
    promise(l.dx == dx_before);
}

void telemetry(LayerSlot& l, Bytes& in) {
  switch (in.small(0, 6)) {
    case 0: {
      double values[64];
      int64_t count = 0;
      const char* name = in.pick<const char*>(
          {"load_cv", "expert_counts", "coactivation", "nope", "", "drop_rate"});
      checked(fuzz_layer_metric(l.handle, static_cast<int>(in.raw(0, 2)),
                                static_cast<int>(in.raw(0, 3)), name,
                                in.byte() % 2 ? values : nullptr, in.small(-1, 64), &count));
      break;
    }
    case 1: export_and_check(l, in); break;
    case 2: {
      const std::string name = in.text();
      checked(moe_layer_set_name(l.handle, name.c_str()));
      export_and_check(l, in);
      break;
    }
    case 3: {
      moe_verdict_thresholds_t t = MOE_VERDICT_THRESHOLDS_INIT;
      t.imbalance_load_cv = in.number();
      t.specialization_warmup_steps = in.pick<int64_t>({0, -1, 100, INT64_MAX});
      checked(moe_layer_set_verdict_thresholds(l.handle, &t));
      moe_verdicts_t v = MOE_VERDICTS_INIT;
      checked(fuzz_layer_verdicts(l.handle, static_cast<int>(in.raw(0, 2)),
                                  static_cast<int>(in.raw(0, 3)), &v));
      break;
    }
    case 4:
      checked(
          moe_layer_set_step(l.handle, in.pick<int64_t>({0, -1, 5, INT64_MAX, int64_t{1} << 62})));
      break;
    case 5: {
      std::vector<double> bias(10, in.number());
      checked(moe_layer_set_selection_bias(l.handle, bias.data(), in.small(0, 9)));
      checked(moe_layer_get_selection_bias(l.handle, bias.data(), in.small(0, 9)));
      break;
    }
    default: {
      std::vector<int64_t> ids(8);
      for (auto& id : ids) id = in.small(-1, 20);
      checked(moe_layer_build_hash_table(l.handle, ids.data(), in.small(-1, 8),
                                         in.pick<int64_t>({0, 21, 1, int64_t{1} << 40})));
    }
  }
}

void context_queries(LayerSlot& l, Bytes& in) {
  if (l.contexts.empty()) return;
  const size_t i = in.byte() % l.contexts.size();
  moe_ctx_t ctx = l.contexts[i];
  int64_t demand[16], served[16];
  moe_routing_stats_t stats = MOE_ROUTING_STATS_INIT;
  stats.demand = demand;
  stats.served = served;
  stats.entries = in.small(0, 16);
  checked(moe_ctx_routing_stats(ctx, &stats));
  moe_losses_t losses = MOE_LOSSES_INIT;
  checked(moe_ctx_losses(ctx, &losses));
  double consistency = 0, topk = 0;
  checked(
      moe_ctx_compare_routing(ctx, l.contexts[in.byte() % l.contexts.size()], &consistency, &topk));
  if (in.byte() % 3 == 0) {
    promise(checked(moe_ctx_destroy(ctx)) == MOE_STATUS_SUCCESS);
    promise(moe_ctx_losses(ctx, &losses) == MOE_STATUS_INVALID_HANDLE);
    l.contexts.erase(l.contexts.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

void destroy(LayerSlot& l) {
  for (moe_ctx_t ctx : l.contexts) moe_ctx_destroy(ctx);
  l.contexts.clear();
  promise(checked(moe_layer_destroy(l.handle)) == MOE_STATUS_SUCCESS);
  l.alive = false;
  int64_t step = 0;
  promise(moe_layer_get_step(l.handle, &step) == MOE_STATUS_INVALID_HANDLE);
  promise(moe_layer_destroy(l.handle) == MOE_STATUS_INVALID_HANDLE);
}

void group_calls(LayerSlot* layers, Bytes& in) {
  moe_group_t group = nullptr;
  promise(checked(moe_group_create(&group)) == MOE_STATUS_SUCCESS);
  for (int i = 0; i < 3; ++i)
    if (in.byte() % 2) checked(moe_group_add(group, layers[i].handle));
  const int format = static_cast<int>(in.raw(0, 5)), scope = static_cast<int>(in.raw(0, 3));
  size_t length = 0;
  if (checked(fuzz_group_export(group, format, 0, scope, nullptr, 0, &length)) ==
      MOE_STATUS_SUCCESS) {
    std::string text(length + 1, '\0');
    promise(checked(fuzz_group_export(group, format, 0, scope, text.data(), text.size(),
                                      &length)) == MOE_STATUS_SUCCESS);
    text.resize(length);
    if (format <= MOE_EXPORT_PROMETHEUS && length > 0) check_export(text, format);
  }
  moe_group_metrics_t m = MOE_GROUP_METRICS_INIT;
  checked(moe_group_get_metrics(group, MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, &m));
  promise(checked(moe_group_destroy(group)) == MOE_STATUS_SUCCESS);
  promise(moe_group_get_metrics(group, MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, &m) ==
          MOE_STATUS_INVALID_HANDLE);
}

void comm_calls(LayerSlot& l, Bytes& in) {
  moe_comm_t comm = nullptr;
  promise(checked(moe_comm_create_local(&comm)) == MOE_STATUS_SUCCESS);
  char send[16] = {1, 2, 3}, recv[16] = {};
  int64_t send_bytes = in.small(-1, 16), recv_bytes = in.small(-1, 16);
  checked(moe_comm_all_to_all(comm, in.byte() % 4 ? send : nullptr, &send_bytes,
                              in.byte() % 4 ? recv : nullptr, &recv_bytes));
  promise(checked(moe_comm_barrier(comm)) == MOE_STATUS_SUCCESS);  // still usable
  if (l.alive && in.byte() % 2) {
    if (checked(moe_layer_set_comm(l.handle, comm, nullptr, 0)) == MOE_STATUS_SUCCESS) {
      promise(moe_comm_destroy(comm) == MOE_STATUS_INVALID_STATE);  // a layer holds it
      checked(moe_layer_set_comm(l.handle, nullptr, nullptr, 0));
      for (moe_ctx_t ctx : l.contexts) moe_ctx_destroy(ctx);
      l.contexts.clear();
    }
  }
  promise(checked(moe_comm_destroy(comm)) == MOE_STATUS_SUCCESS);
  promise(moe_comm_barrier(comm) == MOE_STATUS_INVALID_HANDLE);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  LayerSlot layers[3];
  for (int step = 0; step < 64 && !in.done(); ++step) {
    LayerSlot& l = layers[in.byte() % 3];
    LayerSlot& other = layers[in.byte() % 3];
    const int op = in.small(0, 9);
    if (op == 0) {
      if (l.alive) destroy(l);
      create(l, in);
      continue;
    }
    if (!l.alive) {
      // A stale or never-made handle: refused, never dereferenced.
      int64_t step_count = 0;
      if (l.handle) promise(moe_layer_get_step(l.handle, &step_count) == MOE_STATUS_INVALID_HANDLE);
      continue;
    }
    switch (op) {
      case 1: {
        moe_weights_t w = weights_of(l, false);
        if (in.byte() % 3 == 0) spoil(in.byte() % 2 ? w.w1 : w.w2, in);
        checked(moe_layer_set_weights(l.handle, &w));
        break;
      }
      case 2:
      case 3: forward(l, in); break;
      case 4: backward(l, other, in); break;
      case 5: telemetry(l, in); break;
      case 6: context_queries(l, in); break;
      case 7: destroy(l); break;
      case 8: group_calls(layers, in); break;
      default: comm_calls(l, in); break;
    }
  }
  for (LayerSlot& l : layers)
    if (l.alive) destroy(l);
  return 0;
}
