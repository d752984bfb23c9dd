// The cuda backend's state: what a layer keeps between calls (cuBLAS handle, grouped
// GEMM, device copies of the selection bias and hash table, the pinned read-back
// area), what forward leaves on the device for backward, and the layer's device memory
// as expert parallelism stages exchanges through it.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "backends/backend.hpp"
#include "backends/cuda/device_buffer.hpp"
#include "backends/cuda/gemm.hpp"
#include "backends/cuda/kernels.hpp"
#include "backends/cuda/telemetry_kernels.hpp"

namespace moe::cuda {

// What forward reads back, in one copy per step: the summary's counts, the loss sums
// (E + 4 doubles), and when telemetry is due, the step's statistics.
struct ReadbackLayout {
  int64_t experts;
  int64_t summary() const { return 0; }
  int64_t losses() const { return SummaryLayout{experts}.words(); }
  int64_t stats() const { return losses() + experts + 4; }
  int64_t words() const { return stats() + StatsLayout{experts}.words(); }
};

class LayerState final : public BackendState {
 public:
  explicit LayerState(int64_t experts);
  ~LayerState() override;
  LayerState(const LayerState&) = delete;
  LayerState& operator=(const LayerState&) = delete;
  // The layer's hash table on the device, copied again when the layer builds a new one.
  const int32_t* device_hash_table(const DeviceLayer& layer);
  // Points cuBLAS at `stream` with the layer's own workspace: cublasSetStream resets the
  // workspace to cuBLAS's pool, which may allocate, and a CUDA graph's capture may not.
  void use_stream(cudaStream_t stream);
  // The selection bias onto the device, in stream order and from pinned memory (a copy
  // from pageable memory waits for the stream; a graph's replay reads the pinned copy).
  void upload_selection_bias(const std::vector<double>& bias, cudaStream_t stream);

  cublasHandle_t cublas = nullptr;
  GroupedGemm grouped;
  GemmMode grouped_mode = gemm_mode_from_environment();
  double* selection_bias = nullptr;       // device copy, uploaded before each forward
  double* selection_bias_host = nullptr;  // pinned, [E]
  void* cublas_workspace = nullptr;
  int64_t* readback = nullptr;          // pinned, ReadbackLayout
  cudaEvent_t readback_done = nullptr;  // recorded after a forward's read-back copies
  int32_t* hash_table = nullptr;
  uint64_t hash_table_generation = 0;
};

// The expert-grouped row buffer the expert MLP runs over: every expert's rows, or
// under expert parallelism this rank's experts' rows as received from the group.
struct ExpertRows {
  ExpertLayout layout;
  int64_t experts = 0;
  DeviceBuffer offsets;     // [experts + 1] int64, the layout's
  DeviceBuffer row_expert;  // [rows] int32
  DeviceBuffer xp, h_pre, h, yp;
  int64_t rows() const { return layout.offsets.empty() ? 0 : layout.offsets.back(); }
};

// Where expert parallelism moved this rank's rows (device index maps, and the returned
// expert outputs that combine read).
struct ExchangeMaps {
  DeviceBuffer expert_source;  // [expert rows] the received row each holds, -1: padding
  DeviceBuffer received_row;   // [received rows] the expert row each went to
  DeviceBuffer returned;       // [sent rows, d] expert outputs of this rank's copies
  DeviceBuffer batch_demand;   // [E] int64, the group's pre-drop demand
};

// What forward leaves on the device for backward (and for routing()).
struct SavedOnDevice final : SavedState {
  cudaStream_t stream = nullptr;
  RouteParams params;
  // Routing, [T, slots] copies: expert, gate, drop mark, and `row`: the copy's row in
  // the expert buffer, or under expert parallelism in the send buffer (-1 if none).
  DeviceBuffer x, logits, prob, sig, lse, nonfinite, experts, gates, row, dropped;
  // row_token: the token of each expert-buffer row (send-buffer row under expert
  // parallelism), -1 for padding.
  DeviceBuffer row_token, summary, loss_sums, stats;
  ExpertRows expert_rows;
  ExchangeMaps exchange;  // expert parallelism only
  // The batch the aux loss averages over: its demand (device, [E]) and finite rows.
  const int64_t* batch_demand = nullptr;
  int64_t batch_valid_tokens = 0;

  // From forward's read-back: the routing's scalars, its local losses and importance.
  // `counts`: SummaryLayout words; `sums`: summarize's E + 4 loss sums.
  void take_counts(const int64_t* counts, const double* sums);
  // The whole read-back (ReadbackLayout) of a single-process forward: counts, losses,
  // the plan's demand, served and capacity, and the statistics when telemetry was due.
  void take_readback(const int64_t* host, bool by_experts);
  // A forward that returned before its read-back landed (static shapes): waits for it.
  void settle_counts() override;
  LayerState* readback_owner = nullptr;  // whose pinned read-back holds this call's
  // Single process: the device word counting non-finite rows, which backward's aux-loss
  // gradient reads instead of the host's count, so that backward need not wait for it.
  const int64_t* device_nonfinite_rows = nullptr;

  // Launches the step's statistics over the routing decision and drop marks into `stats`.
  void sum_step_stats(const LayerConfig& config, int64_t seq_len) const;

  void copy_routing(int32_t* out_experts, float* out_gates, uint8_t* out_dropped) const override;
  // The statistics were summed on the device in forward and read back with the counts.
  StepStats step_stats(const LayerConfig& config, int64_t seq_len) const override;
  std::vector<int64_t> device_stats;  // StatsLayout words, when telemetry was due
  std::vector<double> importance;     // [E]: the sum of P[:, e] over finite rows
};

// The layer's stream, for allocations and synchronous copies.
class LayerDeviceMemory final : public DeviceMemory {
 public:
  explicit LayerDeviceMemory(void* const& stream) : stream_(stream) {}
  ~LayerDeviceMemory() override;
  LayerDeviceMemory(const LayerDeviceMemory&) = delete;
  LayerDeviceMemory& operator=(const LayerDeviceMemory&) = delete;
  void* allocate(size_t bytes) override;
  void release(void* data) override;
  void to_device(void* device, const void* host, size_t bytes) override;
  void to_host(void* host, const void* device, size_t bytes) override;
  void* host_staging(int slot, size_t bytes) override;

 private:
  cudaStream_t stream() const { return static_cast<cudaStream_t>(stream_); }
  void* const& stream_;  // the layer's, read at each use
  struct Pinned {
    void* data = nullptr;
    size_t bytes = 0;
  };
  Pinned staging_[2];  // cudaHostAlloc'd; every copy through them has completed
};

}  // namespace moe::cuda
