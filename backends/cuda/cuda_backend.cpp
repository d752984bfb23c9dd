#include "backends/cuda/cuda_backend.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/device_buffer.hpp"
#include "backends/cuda/event_timer.hpp"
#include "backends/cuda/expert_mlp.hpp"
#include "backends/cuda/expert_parallel.hpp"
#include "backends/cuda/gemm.hpp"
#include "backends/cuda/kernels.hpp"
#include "backends/cuda/layer_state.hpp"
#include "backends/cuda/plan_kernels.hpp"
#include "backends/cuda/router_kernels.hpp"
#include "backends/cuda/telemetry_kernels.hpp"
#include "core/tensor_check.hpp"
#include "dist/check_in.hpp"

namespace moe {
namespace {

using cuda::check;
using cuda::DeviceBuffer;

// Device (or managed) memory; host memory and pointers CUDA does not know are not.
bool is_device_memory(const void* p) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
    cudaGetLastError();  // clear the error, which is not sticky
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

// A pointer labelled as CUDA memory must really be device memory: a host pointer
// would otherwise crash a kernel instead of returning a status.
void require_device_pointer(const moe_tensor_t& t, const char* name) {
  if (t.data == nullptr) return;
  require(is_device_memory(t.data), MOE_STATUS_INVALID_ARGUMENT,
          std::string(name) + ".data is not CUDA device memory (allocate it with cudaMalloc)");
}

// Every tensor of a weight set (bound weights, or gradient buffers) that is given.
template <typename WeightSet>
void require_device_weights(const WeightSet& w, const std::string& prefix) {
  require_device_pointer(w.router, (prefix + "router").c_str());
  require_device_pointer(w.w1, (prefix + "w1").c_str());
  require_device_pointer(w.b1, (prefix + "b1").c_str());
  require_device_pointer(w.w2, (prefix + "w2").c_str());
  require_device_pointer(w.b2, (prefix + "b2").c_str());
}

cuda::RouteParams route_params(const DeviceLayer& layer, int64_t tokens, bool train) {
  const LayerConfig& c = layer.config;
  cuda::RouteParams p;
  p.tokens = tokens;
  p.experts = c.num_experts;
  p.top_k = c.slots();  // expert choice: one slot per expert
  p.sigmoid_router = c.router == MOE_ROUTER_SIGMOID;
  p.renormalize = c.renormalize && c.router != MOE_ROUTER_EXPERT_CHOICE;
  p.temperature = c.temperature(layer.step);
  p.noise_std = train ? c.noise_std(layer.step) : 0.0;
  p.noise_type = c.noise_type;
  p.seed = c.seed;
  p.step = layer.step;
  return p;
}

}  // namespace

std::string CudaBackend::unsupported_reason(const LayerConfig& c) const {
  int devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess) {
    cudaGetLastError();
    // The runtime's own reason: "no device", or a driver that is too old or missing
    // (where no NVIDIA driver is installed the runtime calls it insufficient, too).
    return std::string("this machine: no usable CUDA device (cudaGetDeviceCount: ") +
           cudaGetErrorName(status) + ", " + cudaGetErrorString(status) +
           (status == cudaErrorInsufficientDriver ? "; also what it says where no NVIDIA driver "
                                                    "is installed)"
                                                  : ")");
  }
  if (devices == 0) return "this machine: no usable CUDA device (cudaGetDeviceCount found none)";
  if (c.capacity_order != MOE_CAPACITY_TOKEN_ORDER || c.renormalize_after_drops)
    return std::string("capacity_order ") + capacity_order_name(c.capacity_order) +
           " and renormalize_after_drops (the host backends run them, not yet cuda)";
  if (c.aux_loss_scope != MOE_AUX_LOSS_BATCH || c.aux_loss_unbiased_topk)
    return "aux_loss_scope sequence or global and aux_loss_unbiased_topk (the host backends "
           "run them, not yet cuda)";
  if (c.num_shared_experts > 0) return "shared experts (the host backends run them, not yet cuda)";
  if (c.group_limited())
    return "group-limited routing (n_group, topk_group; the host backends run it, not yet cuda)";
  if (c.routed_scaling_factor != 1.0)
    return "routed_scaling_factor other than 1 (the host backends run it, not yet cuda)";
  if (c.router == MOE_ROUTER_HASH && c.hash_mode == MOE_HASH_BALANCED)
    return "hash_mode balanced (the host backends run it; not yet on cuda)";
  if (c.dtype != MOE_DTYPE_F32 && c.dtype != MOE_DTYPE_BF16)
    return std::string("dtype ") + dtype_name(c.dtype) + " (cuda runs float32 and bfloat16)";
  return "";
}

std::unique_ptr<BackendState> CudaBackend::create_state(const LayerConfig& config) {
  return std::make_unique<cuda::LayerState>(config.num_experts);
}

std::unique_ptr<DeviceMemory> CudaBackend::device_memory(void* const& stream) {
  return std::make_unique<cuda::LayerDeviceMemory>(stream);
}

void CudaBackend::read_to_host(const moe_tensor_t& tensor, void* host, size_t bytes) {
  check(cudaMemcpy(host, tensor.data, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
}

namespace {

// Token ids for the hash router, on the device: used in place when the caller's are
// device memory, else copied (T int64 words) on the stream.
const int64_t* device_token_ids(const int64_t* ids, int64_t tokens, cudaStream_t stream,
                                cuda::DeviceBuffer& copy) {
  if (ids == nullptr || tokens == 0) return nullptr;
  if (is_device_memory(ids)) return ids;
  copy = cuda::DeviceBuffer(tokens * sizeof(int64_t), stream);
  check(cudaMemcpyAsync(copy.get(), ids, tokens * sizeof(int64_t), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync");
  return copy.get<int64_t>();
}

// The hash router's mode for this call, as core/router.cpp resolves "auto".
moe_hash_mode_t resolved_hash_mode(const DeviceLayer& layer, const int64_t* token_ids) {
  const moe_hash_mode_t mode = layer.config.hash_mode;
  if (mode != MOE_HASH_AUTO) return mode;
  if (token_ids == nullptr) return MOE_HASH_CONTENT;
  return layer.hash_table.empty() ? MOE_HASH_MIX : MOE_HASH_TABLE;
}

// Static shapes: every expert's buffer holds min(C, T) rows, with C fixed by the
// capacity factor, so the buffer layout needs no count from the device and forward
// need not wait for its read-back (docs/cuda.md#no-host-synchronisation).
bool static_shapes(const LayerConfig& c) {
  return c.router != MOE_ROUTER_EXPERT_CHOICE && !c.dropless() && c.pad_to_capacity;
}

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

// Single process: drops, telemetry and the counts' one read-back, then the expert
// buffer, the experts and combine. `fixed_capacity`: the capacity the host fixed, -1
// when the device's counts decide it; `captured`: the stream is capturing a CUDA graph
// (forward has refused that unless the shapes are static).
void forward_single(const DeviceLayer& layer, cuda::LayerState& state, cuda::SavedOnDevice& s,
                    const moe_forward_args_t& args, int64_t fixed_capacity, bool captured,
                    cuda::EventTimer& timer) {
  const LayerConfig& c = layer.config;
  const cudaStream_t stream = s.stream;
  const moe_dtype_t dtype = c.dtype;
  const int64_t T = s.params.tokens, d = c.d_model, E = c.num_experts, slots = c.slots();
  const int64_t copies = T * slots;
  const bool expert_choice = c.router == MOE_ROUTER_EXPERT_CHOICE;
  const bool telemetry = layer.telemetry_due;
  const cuda::SummaryLayout L{E};
  const cuda::ReadbackLayout R{E};
  int64_t* summary = s.summary.get<int64_t>();

  // Drops are decided before the read-back, so that its telemetry knows them.
  if (!expert_choice && !c.dropless() && c.drop_policy == MOE_DROP_PROBABILITY)
    cuda::drop_lowest_gates(copies, E, s.experts.get<int32_t>(), s.gates.get<float>(), summary,
                            s.dropped.get<uint8_t>(), stream);
  cuda::rank_kept_copies(copies, E, s.experts.get<int32_t>(), summary, s.row.get<int64_t>(),
                         s.dropped.get<uint8_t>(), stream);
  if (telemetry) s.sum_step_stats(c, args.seq_len);
  timer.mark("route");
  // The one read-back of the step: counts (grouped GEMM sizes, telemetry), loss sums,
  // and the step's statistics when telemetry is due. A captured forward has none: its
  // replays would overwrite the counts an eager call has yet to read.
  int64_t* host = state.readback;
  if (!captured) {
    check(cudaMemcpyAsync(host + R.summary(), summary, L.words() * sizeof(int64_t),
                          cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync");
    check(cudaMemcpyAsync(host + R.losses(), s.loss_sums.get(), (E + 4) * sizeof(double),
                          cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync");
    if (telemetry)
      check(cudaMemcpyAsync(host + R.stats(), s.stats.get(), s.stats.bytes(),
                            cudaMemcpyDeviceToHost, stream),
            "cudaMemcpyAsync");
  }
  s.batch_demand = summary + L.demand();
  s.device_nonfinite_rows = summary + L.nonfinite_rows();
  Plan& plan = s.plan;
  plan.tokens = T;
  plan.slots = slots;
  cuda::ExpertLayout layout;
  if (static_shapes(c)) {
    // The layout follows from the capacity; the counts land while the device works on,
    // and the core's bookkeeping waits for them (SavedOnDevice::settle_counts).
    if (!captured) check(cudaEventRecord(state.readback_done, stream), "cudaEventRecord");
    s.counts_pending = true;
    s.captured = captured;
    s.readback_owner = captured ? nullptr : &state;
    plan.capacity = fixed_capacity;
    layout = cuda::choose_layout(std::vector<int64_t>(E, 0), state.grouped_mode,
                                 std::min(fixed_capacity, T));
  } else {
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    s.take_readback(host, expert_choice);
    // The buffer layout follows the counts: padded for one batched product per matrix
    // when that wastes little (or when asked to pad to capacity), packed otherwise.
    layout = cuda::choose_layout(plan.served, state.grouped_mode,
                                 c.pad_to_capacity ? std::min(plan.capacity, T) : -1);
  }
  plan.order.resize(E);
  std::iota(plan.order.begin(), plan.order.end(), 0);
  plan.offset = layout.offsets;
  plan.rows = plan.offset[E];
  cuda::prepare_expert_rows(c, s.expert_rows, std::move(layout), E, stream);
  cuda::ExpertRows& rows = s.expert_rows;
  s.row_token = DeviceBuffer(plan.rows * sizeof(int64_t), stream);
  check(cudaMemsetAsync(s.row_token.get(), 0xff, s.row_token.bytes(), stream), "cudaMemsetAsync");
  cuda::place_rows(copies, slots, s.experts.get<int32_t>(), rows.offsets.get<int64_t>(),
                   s.row.get<int64_t>(), s.row_token.get<int64_t>(), stream);
  timer.mark("readback");
  cuda::copy_finite_rows(dtype, T, d, args.x.data, s.nonfinite.get<uint8_t>(), s.x.get(), stream);
  cuda::permute(dtype, plan.rows, d, s.x.get(), s.row_token.get<int64_t>(), rows.xp.get(), stream);
  timer.mark("plan_permute");
  cuda::experts_forward(state, stream, c, layer.weights, rows, timer);
  cuda::combine(dtype, T, slots, d, s.gates.get<float>(), s.row.get<int64_t>(), rows.yp.get(),
                args.y.data, stream);
  timer.mark("combine");
}

// Single process: combine's gradient, the experts', and dx's share through them.
void backward_single(const DeviceLayer& layer, cuda::LayerState& state,
                     const cuda::SavedOnDevice& s, const moe_backward_args_t& args, float* dgate,
                     cuda::EventTimer& timer) {
  const LayerConfig& c = layer.config;
  const cudaStream_t stream = s.stream;
  const moe_dtype_t dtype = c.dtype;
  const int64_t T = s.plan.tokens, d = c.d_model, k = c.slots();
  const cuda::ExpertRows& rows = s.expert_rows;
  const int64_t row_bytes = d * static_cast<int64_t>(dtype_size(dtype));
  const bool accumulate = (args.flags & MOE_BACKWARD_ACCUMULATE) != 0;
  DeviceBuffer dyp(rows.rows() * row_bytes, stream);
  if (rows.layout.padded)  // padding rows get no gradient
    check(cudaMemsetAsync(dyp.get(), 0, dyp.bytes(), stream), "cudaMemsetAsync");
  cuda::combine_backward(dtype, T, k, d, s.gates.get<float>(), s.row.get<int64_t>(), rows.yp.get(),
                         args.dy.data, dyp.get(), dgate, stream);
  timer.mark("combine_backward");
  DeviceBuffer dxp(args.dx.data ? rows.rows() * row_bytes : 0, stream);
  cuda::experts_backward(state, stream, c, layer.weights, args.grads, accumulate, rows, dyp.get(),
                         args.dx.data ? dxp.get() : nullptr, timer);
  if (args.dx.data)
    cuda::gather_rows(dtype, T, k, d, s.row.get<int64_t>(), dxp.get(), args.dx.data, accumulate,
                      stream);
  timer.mark("dx_experts");
}

void zero_tensor(const moe_tensor_t& t, size_t element, cudaStream_t stream) {
  if (!t.data) return;
  int64_t n = 1;
  for (int i = 0; i < t.ndim; ++i) n *= t.shape[i];
  check(cudaMemsetAsync(t.data, 0, n * element, stream), "cudaMemsetAsync");
}

}  // namespace

std::unique_ptr<SavedState> CudaBackend::forward(const DeviceLayer& layer,
                                                 const moe_forward_args_t& args,
                                                 const dist::ForwardCheckIn& group) {
  const LayerConfig& c = layer.config;
  auto& state = static_cast<cuda::LayerState&>(layer.state);
  const BoundWeights& w = layer.weights;
  require_device_pointer(args.x, "args.x");
  require_device_pointer(args.y, "args.y");
  require_device_weights(w, "weights.");

  auto stream = static_cast<cudaStream_t>(layer.stream);
  const bool captured = capturing(stream);
  if (captured) {
    require(!layer.ep && static_shapes(c), MOE_STATUS_UNSUPPORTED,
            "cuda: a forward captured into a CUDA graph needs static shapes (token-choice "
            "routing, capacity_factor > 0 and pad_to_capacity, no communicator): the buffer "
            "layout of the others follows the device's counts, which a capture cannot wait for");
    require(args.token_ids == nullptr || is_device_memory(args.token_ids), MOE_STATUS_UNSUPPORTED,
            "cuda: a forward captured into a CUDA graph takes token_ids in device memory (a "
            "copy from host memory would be replayed from the same host address)");
  }
  state.use_stream(stream);
  const moe_dtype_t dtype = c.dtype;
  const size_t es = dtype_size(dtype);
  const int64_t T = args.x.shape[0], d = c.d_model, E = c.num_experts, k = c.top_k;
  const int64_t copies = T * c.slots();
  const bool expert_choice = c.router == MOE_ROUTER_EXPERT_CHOICE;
  const cuda::SummaryLayout L{E};

  auto s = std::make_unique<cuda::SavedOnDevice>();
  s->layer_serial = layer.serial;
  s->dtype = dtype;
  s->stream = stream;
  s->params = route_params(layer, T, args.train != 0);
  if (layer.ep) s->params.token_offset = group.token_offset;
  const cuda::RouteParams& p = s->params;
  // Expert choice fixes each expert's intake (at most the finite rows); token choice
  // fixes it by the capacity factor, or not at all when dropless. (Under expert
  // parallelism the group's batch decides instead.)
  const int64_t fixed_capacity =
      expert_choice ? capacity_for(c.capacity_factor > 0.0 ? c.capacity_factor : 1.0, T, k, E)
                    : (c.dropless() ? -1 : configured_capacity(c, T, {}));

  s->summary = DeviceBuffer(L.words() * sizeof(int64_t), stream);
  s->loss_sums = DeviceBuffer((E + 4) * sizeof(double), stream);
  s->stats = DeviceBuffer(layer.telemetry_due ? cuda::StatsLayout{E}.words() * sizeof(int64_t) : 0,
                          stream);
  check(cudaMemsetAsync(s->summary.get(), 0, s->summary.bytes(), stream), "cudaMemsetAsync");
  s->logits = DeviceBuffer(c.learned_router() ? T * E * sizeof(float) : 0, stream);
  s->prob = DeviceBuffer(T * E * sizeof(float), stream);
  s->sig = DeviceBuffer(p.sigmoid_router ? T * E * sizeof(float) : 0, stream);
  s->lse = DeviceBuffer(T * sizeof(float), stream);
  s->nonfinite = DeviceBuffer(T, stream);
  s->experts = DeviceBuffer(copies * sizeof(int32_t), stream);
  s->gates = DeviceBuffer(copies * sizeof(float), stream);
  s->row = DeviceBuffer(copies * sizeof(int64_t), stream);
  s->dropped = DeviceBuffer(copies, stream);
  s->x = DeviceBuffer(T * d * es, stream);

  cuda::EventTimer timer(stream, "forward");
  if (T > 0) {
    if (c.learned_router())
      cuda::gemm(state.cublas, dtype, MOE_DTYPE_F32, T, E, d, {args.x.data, d, false},
                 {w.router.data, E, false}, s->logits.get(), E, false);
    // A captured forward reads the device copy as the last eager forward left it: a
    // replay must not read host memory the host may be rewriting.
    if (!captured) state.upload_selection_bias(layer.selection_bias, stream);
    check(cudaMemsetAsync(s->row.get(), 0xff, s->row.bytes(), stream), "cudaMemsetAsync");
    check(cudaMemsetAsync(s->dropped.get(), 0, s->dropped.bytes(), stream), "cudaMemsetAsync");
  }
  timer.mark("router_logits");
  int64_t* demand = s->summary.get<int64_t>() + L.demand();
  if (c.router == MOE_ROUTER_HASH) {
    DeviceBuffer ids_copy;
    cuda::HashParams h;
    h.tokens = T;
    h.experts = E;
    h.top_k = k;
    h.d_model = d;
    h.mode = resolved_hash_mode(layer, args.token_ids);
    h.token_ids = device_token_ids(args.token_ids, T, stream, ids_copy);
    h.table = h.mode == MOE_HASH_TABLE ? state.device_hash_table(layer) : nullptr;
    h.vocab_size = layer.hash_table.vocab_size;
    cuda::route_hash(h, dtype, args.x.data, s->experts.get<int32_t>(), s->gates.get<float>(),
                     s->prob.get<float>(), s->lse.get<float>(), s->nonfinite.get<uint8_t>(), demand,
                     stream);
  } else {
    cuda::RouteParams scoring = p;
    if (expert_choice) scoring.top_k = 0;  // probabilities only; the experts choose below
    cuda::route(scoring, s->logits.get<float>(), state.selection_bias, s->experts.get<int32_t>(),
                s->gates.get<float>(), s->prob.get<float>(), s->sig.get<float>(),
                s->lse.get<float>(), s->nonfinite.get<uint8_t>(), demand, stream);
    if (expert_choice)
      cuda::select_expert_choice(p, fixed_capacity, s->logits.get<float>(), s->prob.get<float>(),
                                 s->nonfinite.get<uint8_t>(), s->experts.get<int32_t>(),
                                 s->gates.get<float>(), demand, stream);
  }
  cuda::summarize(p, fixed_capacity, expert_choice, s->prob.get<float>(), s->lse.get<float>(),
                  s->nonfinite.get<uint8_t>(), s->summary.get<int64_t>(),
                  s->loss_sums.get<double>(), stream);
  if (layer.ep)
    cuda::forward_expert_parallel(layer, state, *s, args, group, timer);
  else
    forward_single(layer, state, *s, args, fixed_capacity, captured, timer);
  return s;
}

void CudaBackend::backward(const DeviceLayer& layer, const SavedState& saved,
                           const moe_backward_args_t& args) {
  const LayerConfig& c = layer.config;
  const auto& s = static_cast<const cuda::SavedOnDevice&>(saved);
  auto& state = static_cast<cuda::LayerState&>(layer.state);
  const BoundWeights& w = layer.weights;
  const moe_weights_t& g = args.grads;
  require_device_pointer(args.dy, "args.dy");
  require_device_pointer(args.dx, "args.dx");
  require_device_weights(g, "args.grads.");

  auto stream = static_cast<cudaStream_t>(layer.stream);
  const bool captured = capturing(stream);
  require(!layer.ep || !captured, MOE_STATUS_UNSUPPORTED,
          "cuda: expert parallelism's backward waits for its exchanges and cannot be captured "
          "into a CUDA graph");
  require(s.expert_rows.layout.padded || state.grouped_mode != cuda::GemmMode::Grouped || !captured,
          MOE_STATUS_UNSUPPORTED,
          "cuda: MOE_CUDA_GEMM=grouped stages its pointer arrays from the host and cannot be "
          "captured into a CUDA graph");
  state.use_stream(stream);
  const moe_dtype_t dtype = c.dtype;
  const size_t es = dtype_size(dtype);
  const int64_t T = s.plan.tokens, d = c.d_model, E = c.num_experts, k = c.slots();
  const bool accumulate = (args.flags & MOE_BACKWARD_ACCUMULATE) != 0;

  // Without tokens there is nothing to compute, unless this rank's experts serve others.
  if (T == 0 && !accumulate) zero_tensor(g.router, es, stream);
  if (T == 0 && !layer.ep) {
    if (!accumulate)
      for (const moe_tensor_t* t : {&g.w1, &g.b1, &g.w2, &g.b2}) zero_tensor(*t, es, stream);
    return;
  }

  cuda::EventTimer timer(stream, "backward");
  DeviceBuffer dgate(T * k * sizeof(float), stream);
  if (layer.ep)
    cuda::backward_expert_parallel(layer, state, s, args, dgate.get<float>(), timer);
  else
    backward_single(layer, state, s, args, dgate.get<float>(), timer);
  if (!c.learned_router() || T == 0) return;  // the hash router has no weights and no logits
  // Router: logit gradients (gates, aux loss, z-loss), then through x Wr.
  DeviceBuffer dz(T * E * sizeof(float), stream);
  cuda::route_backward(
      s.params, args.aux_loss_grad * c.load_balance_alpha, args.z_loss_grad * c.z_loss_coef,
      s.experts.get<int32_t>(), s.gates.get<float>(), dgate.get<float>(), s.prob.get<float>(),
      s.sig.get<float>(), s.logits.get<float>(), s.lse.get<float>(), s.nonfinite.get<uint8_t>(),
      s.batch_demand, s.batch_valid_tokens, s.device_nonfinite_rows, dz.get<float>(), stream);
  DeviceBuffer dz_typed;
  const void* dz_data = dz.get();
  if (dtype != MOE_DTYPE_F32) {
    dz_typed = DeviceBuffer(T * E * es, stream);
    cuda::convert_from_float(dtype, T * E, dz.get<float>(), dz_typed.get(), stream);
    dz_data = dz_typed.get();
  }
  if (args.dx.data)
    cuda::gemm(state.cublas, dtype, dtype, T, d, E, {dz_data, E, false}, {w.router.data, E, true},
               args.dx.data, d, true);
  if (g.router.data)
    cuda::gemm(state.cublas, dtype, dtype, d, E, T, {s.x.get(), d, true}, {dz_data, E, false},
               g.router.data, E, accumulate);
  timer.mark("router");
}

}  // namespace moe
