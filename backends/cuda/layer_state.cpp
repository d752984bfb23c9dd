#include "backends/cuda/layer_state.hpp"

#include <cstring>

#include "backends/cuda/cuda_check.hpp"
#include "core/error.hpp"
#include "core/telemetry/step_stats.hpp"

namespace moe::cuda {
namespace {

// cuBLAS's advice for Hopper: 32 MiB (fewer algorithms are open with less).
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

}  // namespace

LayerState::LayerState(int64_t experts) {
  check(cublasCreate(&cublas), "cublasCreate");
  check(cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  check(cudaMalloc(reinterpret_cast<void**>(&selection_bias),
                   static_cast<size_t>(experts) * sizeof(double)),
        "cudaMalloc");
  check(cudaMallocHost(reinterpret_cast<void**>(&readback),
                       static_cast<size_t>(ReadbackLayout{experts}.words()) * sizeof(int64_t)),
        "cudaMallocHost");
  check(cudaMallocHost(reinterpret_cast<void**>(&selection_bias_host),
                       static_cast<size_t>(experts) * sizeof(double)),
        "cudaMallocHost");
  check(cudaMalloc(&cublas_workspace, kCublasWorkspaceBytes), "cudaMalloc");
  check(cudaEventCreateWithFlags(&readback_done, cudaEventDisableTiming), "cudaEventCreate");
}

LayerState::~LayerState() {
  cudaFree(selection_bias);
  cudaFreeHost(selection_bias_host);
  cudaFree(cublas_workspace);
  cudaFree(hash_table);
  cudaFreeHost(readback);
  cudaEventDestroy(readback_done);
  cublasDestroy(cublas);
}

void LayerState::use_stream(cudaStream_t stream) {
  check(cublasSetStream(cublas, stream), "cublasSetStream");
  check(cublasSetWorkspace(cublas, cublas_workspace, kCublasWorkspaceBytes), "cublasSetWorkspace");
}

void LayerState::upload_selection_bias(const std::vector<double>& bias, cudaStream_t stream) {
  // The previous upload has been consumed: its forward's read-back, which follows it on
  // the stream, has been waited for (or the forward synchronised).
  std::memcpy(selection_bias_host, bias.data(), bias.size() * sizeof(double));
  check(cudaMemcpyAsync(selection_bias, selection_bias_host, bias.size() * sizeof(double),
                        cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync");
}

const int32_t* LayerState::device_hash_table(const DeviceLayer& layer) {
  const HashTable& table = layer.hash_table;
  if (table.empty()) return nullptr;
  if (hash_table_generation != layer.hash_table_generation || hash_table == nullptr) {
    cudaFree(hash_table);
    hash_table = nullptr;
    check(cudaMalloc(reinterpret_cast<void**>(&hash_table), table.experts.size() * sizeof(int32_t)),
          "cudaMalloc");
    check(cudaMemcpy(hash_table, table.experts.data(), table.experts.size() * sizeof(int32_t),
                     cudaMemcpyHostToDevice),
          "cudaMemcpy");
    hash_table_generation = layer.hash_table_generation;
  }
  return hash_table;
}

void SavedOnDevice::take_counts(const int64_t* counts, const double* sums) {
  const int64_t T = params.tokens, E = params.experts;
  routing.tokens = T;
  routing.slots = params.top_k;
  routing.experts = E;
  routing.temperature = params.temperature;
  routing.nonfinite_rows = counts[SummaryLayout{E}.nonfinite_rows()];
  routing.valid_tokens = T - routing.nonfinite_rows;
  routing.batch_valid_tokens = routing.valid_tokens;
  routing.aux_loss = sums[0];
  routing.z_loss = sums[1];
  routing.prob_sum.assign(sums + 2, sums + 2 + E);
  routing.lse_sq_sum = sums[E + 2];
  importance = routing.prob_sum;
  batch_valid_tokens = routing.valid_tokens;
}

void SavedOnDevice::take_readback(const int64_t* host, bool by_experts) {
  const int64_t E = params.experts;
  const SummaryLayout L{E};
  const ReadbackLayout R{E};
  const int64_t* counts = host + R.summary();
  std::vector<double> sums(E + 4);
  std::memcpy(sums.data(), host + R.losses(), (E + 4) * sizeof(double));
  take_counts(counts, sums.data());
  // The statistics buffer exists only in calls where telemetry was due.
  if (stats.bytes() > 0)
    device_stats.assign(host + R.stats(), host + R.stats() + StatsLayout{E}.words());
  plan.capacity = counts[L.capacity()];
  plan.demand.assign(counts + L.demand(), counts + L.demand() + E);
  plan.served.assign(counts + L.served(), counts + L.served() + E);
  routing.fixed_capacity = by_experts ? plan.capacity : -1;
}

void SavedOnDevice::settle_counts() {
  if (readback_owner == nullptr) return;
  check(cudaEventSynchronize(readback_owner->readback_done), "cudaEventSynchronize");
  take_readback(readback_owner->readback, false);
  readback_owner = nullptr;
}

void SavedOnDevice::sum_step_stats(const LayerConfig& c, int64_t seq_len) const {
  StatsInputs in;
  in.tokens = params.tokens;
  in.experts = c.num_experts;
  in.slots = c.slots();
  in.top_k = c.top_k;
  in.seq_len = seq_len;
  in.expert_choice = c.router == MOE_ROUTER_EXPERT_CHOICE;
  in.prob = prob.get<float>();
  in.logits = c.learned_router() ? logits.get<float>() : nullptr;
  in.nonfinite = nonfinite.get<uint8_t>();
  in.experts_of = experts.get<int32_t>();
  in.gates = gates.get<float>();
  in.dropped = dropped.get<uint8_t>();
  cuda::step_stats(in, stats.get<int64_t>(), stream);
}

void SavedOnDevice::copy_routing(int32_t* out_experts, float* out_gates,
                                 uint8_t* out_dropped) const {
  const size_t n = static_cast<size_t>(params.tokens * params.top_k);
  if (n == 0) return;
  if (out_experts)
    check(cudaMemcpyAsync(out_experts, experts.get(), n * sizeof(int32_t), cudaMemcpyDeviceToHost,
                          stream),
          "cudaMemcpyAsync");
  if (out_gates)
    check(
        cudaMemcpyAsync(out_gates, gates.get(), n * sizeof(float), cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync");
  if (out_dropped)
    check(cudaMemcpyAsync(out_dropped, dropped.get(), n, cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

StepStats SavedOnDevice::step_stats(const LayerConfig& config,
                                    int64_t /*seq_len: forward's*/) const {
  require(!device_stats.empty(), MOE_STATUS_INTERNAL_ERROR,
          "cuda: telemetry was not collected in this forward call");
  const int64_t E = params.experts;
  const StatsLayout L{E};
  const int64_t* w = device_stats.data();
  auto value = [&](int field) {
    double v;
    std::memcpy(&v, w + field, sizeof v);
    return v;
  };
  StepStats s = count_step_stats(config, routing, plan);
  s.importance = importance;
  s.entropy_sum = value(StatsLayout::kEntropy);
  s.top1_sum = value(StatsLayout::kTop1);
  s.topk_mass_sum = value(StatsLayout::kTopkMass);
  s.margin_sum = value(StatsLayout::kMargin);
  s.logit_max_abs = value(StatsLayout::kLogitMaxAbs);
  s.seq_overlap_sum = value(StatsLayout::kSeqOverlap);
  s.seq_cosine_sum = value(StatsLayout::kSeqCosine);
  s.tokens_fully_dropped = w[L.tokens_fully_dropped()];
  s.seq_pairs = w[L.seq_pairs()];
  s.seq_same_top1 = w[L.seq_same_top1()];
  s.coactivation.assign(w + L.coactivation(), w + L.coactivation() + L.coactivation_words());
  return s;
}

LayerDeviceMemory::~LayerDeviceMemory() {
  for (Pinned& p : staging_) cudaFreeHost(p.data);
}

void* LayerDeviceMemory::host_staging(int slot, size_t bytes) {
  Pinned& p = staging_[slot];
  if (p.bytes < bytes) {
    cudaFreeHost(p.data);
    p = Pinned{};
    check(cudaHostAlloc(&p.data, bytes, cudaHostAllocDefault), "cudaHostAlloc");
    p.bytes = bytes;
  }
  return p.data;
}

void* LayerDeviceMemory::allocate(size_t bytes) {
  void* data = nullptr;
  check(cudaMallocFromPoolAsync(&data, bytes, memory_pool(), stream()), "cudaMallocFromPoolAsync");
  return data;
}

void LayerDeviceMemory::release(void* data) {
  cudaFreeAsync(data, stream());
}

void LayerDeviceMemory::to_device(void* device, const void* host, size_t bytes) {
  check(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream()), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
}

void LayerDeviceMemory::to_host(void* host, const void* device, size_t bytes) {
  check(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream()), "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
}

}  // namespace moe::cuda
