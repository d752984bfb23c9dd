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
#include "backends/cuda/gemm.hpp"
#include "backends/cuda/kernels.hpp"
#include "backends/cuda/plan_kernels.hpp"
#include "backends/cuda/router_kernels.hpp"
#include "backends/cuda/telemetry_kernels.hpp"
#include "core/layer.hpp"
#include "core/telemetry/step_stats.hpp"
#include "core/tensor_check.hpp"

namespace moe {
namespace {

using cuda::check;
using cuda::DeviceBuffer;
using cuda::ExpertOperand;
using cuda::GroupedProblem;
constexpr int64_t kRows = GroupedProblem::kRows;

// What forward reads back, in one copy per step: the summary's counts, the loss sums
// (E + 4 doubles), and when telemetry is due, the step's statistics.
struct ReadbackLayout {
  int64_t experts;
  int64_t summary() const { return 0; }
  int64_t losses() const { return cuda::SummaryLayout{experts}.words(); }
  int64_t stats() const { return losses() + experts + 4; }
  int64_t words() const { return stats() + cuda::StatsLayout{experts}.words(); }
};

class CudaLayerState final : public BackendState {
 public:
  explicit CudaLayerState(int64_t experts) {
    check(cublasCreate(&cublas), "cublasCreate");
    check(cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    check(cudaMalloc(reinterpret_cast<void**>(&selection_bias),
                     static_cast<size_t>(experts) * sizeof(double)),
          "cudaMalloc");
    check(cudaMallocHost(reinterpret_cast<void**>(&readback),
                         static_cast<size_t>(ReadbackLayout{experts}.words()) * sizeof(int64_t)),
          "cudaMallocHost");
  }
  ~CudaLayerState() override {
    cudaFree(selection_bias);
    cudaFree(hash_table);
    cudaFreeHost(readback);
    cublasDestroy(cublas);
  }
  // The layer's hash table on the device, copied again when the layer builds a new one.
  const int32_t* device_hash_table(const Layer& layer) {
    const HashTable& table = layer.hash_table;
    if (table.empty()) return nullptr;
    if (hash_table_generation != layer.hash_table_generation || hash_table == nullptr) {
      cudaFree(hash_table);
      hash_table = nullptr;
      check(
          cudaMalloc(reinterpret_cast<void**>(&hash_table), table.experts.size() * sizeof(int32_t)),
          "cudaMalloc");
      check(cudaMemcpy(hash_table, table.experts.data(), table.experts.size() * sizeof(int32_t),
                       cudaMemcpyHostToDevice),
            "cudaMemcpy");
      hash_table_generation = layer.hash_table_generation;
    }
    return hash_table;
  }
  cublasHandle_t cublas = nullptr;
  cuda::GroupedGemm grouped;
  cuda::GemmMode grouped_mode = cuda::gemm_mode_from_environment();
  double* selection_bias = nullptr;  // device copy, uploaded before each forward
  int64_t* readback = nullptr;       // pinned, ReadbackLayout
  int32_t* hash_table = nullptr;
  uint64_t hash_table_generation = 0;
};

// What forward leaves on the device for backward (and for routing()).
struct CudaSavedState final : SavedState {
  cudaStream_t stream = nullptr;
  cuda::RouteParams params;
  cuda::ExpertLayout layout;
  DeviceBuffer x, logits, prob, sig, lse, nonfinite, experts, gates, row, dropped, row_token,
      row_expert, summary, loss_sums, stats, xp, h_pre, h, yp;

  void copy_routing(int32_t* out_experts, float* out_gates, uint8_t* out_dropped) const override {
    const size_t n = static_cast<size_t>(params.tokens * params.top_k);
    if (n == 0) return;
    if (out_experts)
      check(cudaMemcpyAsync(out_experts, experts.get(), n * sizeof(int32_t), cudaMemcpyDeviceToHost,
                            stream),
            "cudaMemcpyAsync");
    if (out_gates)
      check(cudaMemcpyAsync(out_gates, gates.get(), n * sizeof(float), cudaMemcpyDeviceToHost,
                            stream),
            "cudaMemcpyAsync");
    if (out_dropped)
      check(cudaMemcpyAsync(out_dropped, dropped.get(), n, cudaMemcpyDeviceToHost, stream),
            "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }

  // The statistics were summed on the device in forward and read back with the counts.
  StepStats step_stats(const LayerConfig& config, int64_t /*seq_len: forward's*/) const override {
    require(!device_stats.empty(), MOE_STATUS_INTERNAL_ERROR,
            "cuda: telemetry was not collected in this forward call");
    const int64_t E = params.experts;
    const cuda::StatsLayout L{E};
    const int64_t* w = device_stats.data();
    auto value = [&](int field) {
      double v;
      std::memcpy(&v, w + field, sizeof v);
      return v;
    };
    StepStats s = count_step_stats(config, routing, plan);
    s.importance = importance;
    s.entropy_sum = value(cuda::StatsLayout::kEntropy);
    s.top1_sum = value(cuda::StatsLayout::kTop1);
    s.topk_mass_sum = value(cuda::StatsLayout::kTopkMass);
    s.margin_sum = value(cuda::StatsLayout::kMargin);
    s.logit_max_abs = value(cuda::StatsLayout::kLogitMaxAbs);
    s.seq_overlap_sum = value(cuda::StatsLayout::kSeqOverlap);
    s.seq_cosine_sum = value(cuda::StatsLayout::kSeqCosine);
    s.tokens_fully_dropped = w[L.tokens_fully_dropped()];
    s.seq_pairs = w[L.seq_pairs()];
    s.seq_same_top1 = w[L.seq_same_top1()];
    s.coactivation.assign(w + L.coactivation(), w + L.coactivation() + E * E);
    return s;
  }
  std::vector<int64_t> device_stats;  // StatsLayout words, when telemetry was due
  std::vector<double> importance;     // [E]: the sum of P[:, e] over finite rows
};

// A pointer labelled as CUDA memory must really be device memory: a host pointer
// would otherwise crash a kernel instead of returning a status.
void require_device_pointer(const moe_tensor_t& t, const char* name) {
  if (t.data == nullptr) return;
  cudaPointerAttributes attributes{};
  const cudaError_t status = cudaPointerGetAttributes(&attributes, t.data);
  if (status != cudaSuccess) cudaGetLastError();  // clear the sticky-free error
  require(status == cudaSuccess &&
              (attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged),
          MOE_STATUS_INVALID_ARGUMENT,
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

cuda::RouteParams route_params(const Layer& layer, int64_t tokens, bool train) {
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

// Opt-in stage timing (MOE_CUDA_PROFILE=1): an event after each stage, and the times
// between them printed to stderr when the call ends (this synchronises, so it is for
// finding where time goes, not for production).
class StageTimer {
 public:
  StageTimer(cudaStream_t stream, const char* call)
      : enabled_(std::getenv("MOE_CUDA_PROFILE") != nullptr), stream_(stream), call_(call) {
    mark("begin");
  }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;
  void mark(const char* stage) {
    if (!enabled_) return;
    cudaEvent_t event;
    cudaEventCreate(&event);
    cudaEventRecord(event, stream_);
    marks_.push_back({stage, event});
  }
  ~StageTimer() {
    if (!enabled_ || marks_.empty()) return;
    cudaEventSynchronize(marks_.back().second);
    std::string line = std::string("moe cuda ") + call_ + ":";
    float total = 0.f;
    for (size_t i = 1; i < marks_.size(); ++i) {
      float ms = 0.f;
      cudaEventElapsedTime(&ms, marks_[i - 1].second, marks_[i].second);
      total += ms;
      char item[96];
      std::snprintf(item, sizeof item, " %s %.3f", marks_[i].first, ms);
      line += item;
    }
    for (auto& m : marks_) cudaEventDestroy(m.second);
    std::fprintf(stderr, "%s | total %.3f ms\n", line.c_str(), total);
  }

 private:
  bool enabled_;
  cudaStream_t stream_;
  const char* call_;
  std::vector<std::pair<const char*, cudaEvent_t>> marks_;
};

ExpertOperand rows_of(const void* base, int64_t ld, bool transpose = false) {
  return {base, ld, transpose, 0, true};
}

ExpertOperand per_expert(const void* base, int64_t ld, int64_t stride, bool transpose = false) {
  return {base, ld, transpose, stride, false};
}

}  // namespace

std::string CudaBackend::unsupported_reason(const LayerConfig& c) const {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    return "this machine: no CUDA device found";
  }
  if (c.dtype != MOE_DTYPE_F32 && c.dtype != MOE_DTYPE_BF16)
    return std::string("dtype ") + dtype_name(c.dtype) + " (cuda runs float32 and bfloat16)";
  return "";
}

std::unique_ptr<BackendState> CudaBackend::create_state(const LayerConfig& config) {
  return std::make_unique<CudaLayerState>(config.num_experts);
}

namespace {

// Token ids for the hash router, on the device: used in place when the caller's are
// device memory, else copied (T int64 words) on the stream.
const int64_t* device_token_ids(const int64_t* ids, int64_t tokens, cudaStream_t stream,
                                cuda::DeviceBuffer& copy) {
  if (ids == nullptr || tokens == 0) return nullptr;
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, ids) != cudaSuccess) cudaGetLastError();
  if (attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged)
    return ids;
  copy = cuda::DeviceBuffer(tokens * sizeof(int64_t), stream);
  check(cudaMemcpyAsync(copy.get(), ids, tokens * sizeof(int64_t), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync");
  return copy.get<int64_t>();
}

// The hash router's mode for this call, as core/router.cpp resolves "auto".
moe_hash_mode_t resolved_hash_mode(const Layer& layer, const int64_t* token_ids) {
  const moe_hash_mode_t mode = layer.config.hash_mode;
  if (mode != MOE_HASH_AUTO) return mode;
  if (token_ids == nullptr) return MOE_HASH_CONTENT;
  return layer.hash_table.empty() ? MOE_HASH_MIX : MOE_HASH_TABLE;
}

}  // namespace

std::unique_ptr<SavedState> CudaBackend::forward(Layer& layer, const moe_forward_args_t& args) {
  const LayerConfig& c = layer.config;
  auto& state = static_cast<CudaLayerState&>(*layer.backend_state);
  const BoundWeights& w = layer.weights;
  require_device_pointer(args.x, "args.x");
  require_device_pointer(args.y, "args.y");
  require_device_weights(w, "weights.");

  auto stream = static_cast<cudaStream_t>(layer.stream);
  check(cublasSetStream(state.cublas, stream), "cublasSetStream");
  const moe_dtype_t dtype = c.dtype;
  const size_t es = dtype_size(dtype);
  const int64_t T = args.x.shape[0], d = c.d_model, E = c.num_experts, k = c.top_k;
  const int64_t F = c.ff_width(), dff = c.d_ff, slots = c.slots(), copies = T * slots;
  const bool expert_choice = c.router == MOE_ROUTER_EXPERT_CHOICE;
  const bool telemetry = layer.telemetry.due();
  const cuda::SummaryLayout L{E};
  const ReadbackLayout R{E};

  auto s = std::make_unique<CudaSavedState>();
  s->layer_serial = layer.serial;
  s->dtype = dtype;
  s->stream = stream;
  s->params = route_params(layer, T, args.train != 0);
  const cuda::RouteParams& p = s->params;
  // Expert choice fixes each expert's intake (at most the finite rows); token choice
  // fixes it by the capacity factor, or not at all when dropless.
  const int64_t fixed_capacity =
      expert_choice ? capacity_for(c.capacity_factor > 0.0 ? c.capacity_factor : 1.0, T, k, E)
                    : (c.dropless() ? -1 : capacity_for(c.capacity_factor, T, k, E));

  s->summary = DeviceBuffer(L.words() * sizeof(int64_t), stream);
  s->loss_sums = DeviceBuffer((E + 4) * sizeof(double), stream);
  s->stats = DeviceBuffer(telemetry ? cuda::StatsLayout{E}.words() * sizeof(int64_t) : 0, stream);
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

  StageTimer timer(stream, "forward");
  if (T > 0) {
    if (c.learned_router())
      cuda::gemm(state.cublas, dtype, MOE_DTYPE_F32, T, E, d, {args.x.data, d, false},
                 {w.router.data, E, false}, s->logits.get(), E, false);
    check(cudaMemcpyAsync(state.selection_bias, layer.selection_bias.data(), E * sizeof(double),
                          cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");
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
  // Drops are decided before the read-back, so that its telemetry knows them.
  if (!expert_choice && !c.dropless() && c.drop_policy == MOE_DROP_PROBABILITY)
    cuda::drop_lowest_gates(copies, E, s->experts.get<int32_t>(), s->gates.get<float>(),
                            s->summary.get<int64_t>(), s->dropped.get<uint8_t>(), stream);
  cuda::rank_kept_copies(copies, E, s->experts.get<int32_t>(), s->summary.get<int64_t>(),
                         s->row.get<int64_t>(), s->dropped.get<uint8_t>(), stream);
  if (telemetry) {
    cuda::StatsInputs in;
    in.tokens = T;
    in.experts = E;
    in.slots = slots;
    in.top_k = k;
    in.seq_len = args.seq_len;
    in.expert_choice = expert_choice;
    in.prob = s->prob.get<float>();
    in.logits = c.learned_router() ? s->logits.get<float>() : nullptr;
    in.nonfinite = s->nonfinite.get<uint8_t>();
    in.experts_of = s->experts.get<int32_t>();
    in.gates = s->gates.get<float>();
    in.dropped = s->dropped.get<uint8_t>();
    cuda::step_stats(in, s->stats.get<int64_t>(), stream);
  }
  timer.mark("route");
  // The one read-back of the step: counts (grouped GEMM sizes, telemetry), loss sums,
  // and the step's statistics when telemetry is due.
  int64_t* host = state.readback;
  check(cudaMemcpyAsync(host + R.summary(), s->summary.get(), L.words() * sizeof(int64_t),
                        cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync");
  check(cudaMemcpyAsync(host + R.losses(), s->loss_sums.get(), (E + 4) * sizeof(double),
                        cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync");
  if (telemetry)
    check(cudaMemcpyAsync(host + R.stats(), s->stats.get(), s->stats.bytes(),
                          cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");

  std::vector<double> loss_sums(E + 4);
  std::memcpy(loss_sums.data(), host + R.losses(), (E + 4) * sizeof(double));
  s->importance.assign(loss_sums.begin() + 2, loss_sums.begin() + 2 + E);
  if (telemetry)
    s->device_stats.assign(host + R.stats(), host + R.stats() + cuda::StatsLayout{E}.words());
  Plan& plan = s->plan;
  plan.tokens = T;
  plan.slots = slots;
  plan.capacity = host[L.capacity()];
  plan.demand.assign(host + L.demand(), host + L.demand() + E);
  plan.served.assign(host + L.served(), host + L.served() + E);
  // The buffer layout follows the counts: padded for one batched product per matrix
  // when that wastes little (or when asked to pad to capacity), packed otherwise.
  s->layout = cuda::choose_layout(plan.served, state.grouped_mode,
                                  c.pad_to_capacity ? std::min(plan.capacity, T) : -1);
  plan.order.resize(E);
  std::iota(plan.order.begin(), plan.order.end(), 0);
  plan.offset = s->layout.offsets;
  plan.rows = plan.offset[E];
  Routing& routing = s->routing;
  routing.tokens = T;
  routing.slots = slots;
  routing.experts = E;
  routing.temperature = p.temperature;
  routing.fixed_capacity = expert_choice ? plan.capacity : -1;
  routing.nonfinite_rows = host[L.nonfinite_rows()];
  routing.valid_tokens = T - routing.nonfinite_rows;
  routing.batch_valid_tokens = routing.valid_tokens;
  routing.aux_loss = loss_sums[0];
  routing.z_loss = loss_sums[1];

  const int64_t rows = plan.rows;
  check(cudaMemcpyAsync(s->summary.get<int64_t>() + L.offsets(), plan.offset.data(),
                        (E + 1) * sizeof(int64_t), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync");
  s->row_token = DeviceBuffer(rows * sizeof(int64_t), stream);
  s->row_expert = DeviceBuffer(rows * sizeof(int32_t), stream);
  check(cudaMemsetAsync(s->row_token.get(), 0xff, s->row_token.bytes(), stream), "cudaMemsetAsync");
  cuda::place_rows(copies, slots, E, s->experts.get<int32_t>(), s->summary.get<int64_t>(),
                   s->row.get<int64_t>(), s->row_token.get<int64_t>(), stream);
  cuda::row_experts(E, rows, s->summary.get<int64_t>(), s->row_expert.get<int32_t>(), stream);
  timer.mark("readback");
  s->xp = DeviceBuffer(rows * d * es, stream);
  s->h_pre = DeviceBuffer(rows * F * es, stream);
  s->h = DeviceBuffer(rows * dff * es, stream);
  s->yp = DeviceBuffer(rows * d * es, stream);
  cuda::copy_finite_rows(dtype, T, d, args.x.data, s->nonfinite.get<uint8_t>(), s->x.get(), stream);
  cuda::permute(dtype, rows, d, s->x.get(), s->row_token.get<int64_t>(), s->xp.get(), stream);
  timer.mark("plan_permute");
  state.grouped.run(state.cublas, stream, dtype, s->layout,
                    {kRows, F, d, rows_of(s->xp.get(), d), per_expert(w.w1.data, F, d * F),
                     rows_of(s->h_pre.get(), F), false});
  timer.mark("gemm1");
  cuda::bias_activation(dtype, c.activation, rows, dff, s->h_pre.get(), w.b1.data,
                        s->row_expert.get<int32_t>(), s->h.get(), stream);
  state.grouped.run(state.cublas, stream, dtype, s->layout,
                    {kRows, d, dff, rows_of(s->h.get(), dff), per_expert(w.w2.data, d, dff * d),
                     rows_of(s->yp.get(), d), false});
  if (w.b2.data)
    cuda::add_row_bias(dtype, rows, d, s->yp.get(), w.b2.data, s->row_expert.get<int32_t>(),
                       stream);
  timer.mark("gemm2");
  cuda::combine(dtype, T, slots, d, s->gates.get<float>(), s->row.get<int64_t>(), s->yp.get(),
                args.y.data, stream);
  timer.mark("combine");
  return s;
}

void CudaBackend::backward(Layer& layer, const SavedState& saved, const moe_backward_args_t& args) {
  const LayerConfig& c = layer.config;
  const auto& s = static_cast<const CudaSavedState&>(saved);
  auto& state = static_cast<CudaLayerState&>(*layer.backend_state);
  const BoundWeights& w = layer.weights;
  const moe_weights_t& g = args.grads;
  require_device_pointer(args.dy, "args.dy");
  require_device_pointer(args.dx, "args.dx");
  require_device_weights(g, "args.grads.");

  auto stream = static_cast<cudaStream_t>(layer.stream);
  check(cublasSetStream(state.cublas, stream), "cublasSetStream");
  const moe_dtype_t dtype = c.dtype;
  const size_t es = dtype_size(dtype);
  const Plan& plan = s.plan;
  const int64_t T = plan.tokens, d = c.d_model, E = c.num_experts, k = c.slots();
  const int64_t F = c.ff_width(), dff = c.d_ff, rows = plan.rows;
  const bool accumulate = (args.flags & MOE_BACKWARD_ACCUMULATE) != 0;

  if (T == 0) {
    if (!accumulate)
      for (const moe_tensor_t* t : {&g.router, &g.w1, &g.b1, &g.w2, &g.b2}) {
        if (!t->data) continue;
        int64_t n = 1;
        for (int i = 0; i < t->ndim; ++i) n *= t->shape[i];
        check(cudaMemsetAsync(t->data, 0, n * es, stream), "cudaMemsetAsync");
      }
    return;
  }

  StageTimer timer(stream, "backward");
  DeviceBuffer dyp(rows * d * es, stream), dgate(T * k * sizeof(float), stream);
  if (s.layout.padded)  // padding rows get no gradient
    check(cudaMemsetAsync(dyp.get(), 0, dyp.bytes(), stream), "cudaMemsetAsync");
  cuda::combine_backward(dtype, T, k, d, s.gates.get<float>(), s.row.get<int64_t>(), s.yp.get(),
                         args.dy.data, dyp.get(), dgate.get<float>(), stream);
  timer.mark("combine_backward");
  DeviceBuffer dh(rows * dff * es, stream);
  state.grouped.run(state.cublas, stream, dtype, s.layout,
                    {kRows, dff, d, rows_of(dyp.get(), d), per_expert(w.w2.data, d, dff * d, true),
                     rows_of(dh.get(), dff), false});
  timer.mark("dh");
  if (g.w2.data)
    state.grouped.run(state.cublas, stream, dtype, s.layout,
                      {dff, d, kRows, rows_of(s.h.get(), dff, true), rows_of(dyp.get(), d),
                       per_expert(g.w2.data, d, dff * d), accumulate});
  if (g.b2.data)
    cuda::expert_column_sums(dtype, E, d, dyp.get(), s.summary.get<int64_t>(), g.b2.data,
                             accumulate, stream);
  timer.mark("dw2_db2");
  DeviceBuffer dh_pre(rows * F * es, stream);
  cuda::activation_backward(dtype, c.activation, rows, dff, s.h_pre.get(), dh.get(), dh_pre.get(),
                            stream);
  if (g.b1.data)
    cuda::expert_column_sums(dtype, E, F, dh_pre.get(), s.summary.get<int64_t>(), g.b1.data,
                             accumulate, stream);
  timer.mark("activation_backward");
  if (g.w1.data)
    state.grouped.run(state.cublas, stream, dtype, s.layout,
                      {d, F, kRows, rows_of(s.xp.get(), d, true), rows_of(dh_pre.get(), F),
                       per_expert(g.w1.data, F, d * F), accumulate});
  timer.mark("dw1");
  if (args.dx.data) {
    DeviceBuffer dxp(rows * d * es, stream);
    state.grouped.run(state.cublas, stream, dtype, s.layout,
                      {kRows, d, F, rows_of(dh_pre.get(), F), per_expert(w.w1.data, F, d * F, true),
                       rows_of(dxp.get(), d), false});
    cuda::gather_rows(dtype, T, k, d, s.row.get<int64_t>(), dxp.get(), args.dx.data, accumulate,
                      stream);
  }

  timer.mark("dx_experts");
  if (!c.learned_router()) return;  // the hash router has no weights and no logits
  // Router: logit gradients (gates, aux loss, z-loss), then through x Wr.
  DeviceBuffer dz(T * E * sizeof(float), stream);
  cuda::route_backward(s.params, c.load_balance_alpha, c.z_loss_coef, s.experts.get<int32_t>(),
                       s.gates.get<float>(), dgate.get<float>(), s.prob.get<float>(),
                       s.sig.get<float>(), s.logits.get<float>(), s.lse.get<float>(),
                       s.nonfinite.get<uint8_t>(), s.summary.get<int64_t>(), dz.get<float>(),
                       stream);
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
