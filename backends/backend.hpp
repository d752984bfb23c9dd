// The compute backend interface. Each numeric stage of the pipeline is a virtual
// function whose base implementation is the plain C++ reference (cpu_ref), so a
// backend overrides only the stages it accelerates and falls back stage by stage to
// the reference for the rest (the way oneDNN's implementation lists work).
// Routing and planning (O(T*E) integer and scalar work) run in core/ for now.
// Backends sit below the layer (core/layer/): they see a layer only through the
// arguments of their stages, or through DeviceLayer when they run the whole pipeline.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backends/saved_state.hpp"
#include "core/bfloat16.hpp"
#include "core/config.hpp"
#include "core/hash_router.hpp"
#include "core/plan.hpp"
#include "dist/device_memory.hpp"

namespace moe {
namespace dist {
class ExpertParallel;
struct ForwardCheckIn;
}  // namespace dist

// The caller's bound weights of a layer.
struct BoundWeights {
  bool bound = false;
  moe_tensor_t router{}, w1{}, b1{}, w2{}, b2{};
  moe_tensor_t shared_w1{}, shared_w2{}, shared_gate{};
};

// Expert weights of one layer, as bound by the caller (b1, b2 may be null).
template <typename S>
struct ExpertWeights {
  const S* w1 = nullptr;  // [E, d, F]
  const S* b1 = nullptr;  // [E, F]
  const S* w2 = nullptr;  // [E, d_ff, d]
  const S* b2 = nullptr;  // [E, d]
};

// Buffers of the expert stage, each [plan.rows, width].
template <typename S>
struct ExpertActivations {
  S* xp = nullptr;     // permuted inputs, width d
  S* h_pre = nullptr;  // x W1 + b1, width F
  S* h = nullptr;      // act(h_pre), width d_ff
  S* yp = nullptr;     // expert outputs, width d
};

template <typename S>
struct ExpertGradients {
  S* dw1 = nullptr;  // accumulated into (the pipeline zeroes them when overwriting)
  S* db1 = nullptr;
  S* dw2 = nullptr;
  S* db2 = nullptr;
};

#define MOE_BACKEND_STAGES(S)                                                                      \
  /* z[T,E] = x[T,d] Wr[d,E] */                                                                    \
  virtual void router_logits(const LayerConfig& c, int64_t tokens, const S* x, const S* wr, S* z); \
  /* dx[T,d] += dz Wr^T (if dx); dwr[d,E] += x^T dz (if dwr) */                                    \
  virtual void router_logits_backward(const LayerConfig& c, int64_t tokens, const S* x,            \
                                      const S* wr, const S* dz, S* dx, S* dwr);                    \
  /* xp[r] = x[token_of_row[r]], zero rows for padding */                                          \
  virtual void permute(const LayerConfig& c, const Plan& plan, const S* x, S* xp);                 \
  virtual void experts_forward(const LayerConfig& c, const Plan& plan, const ExpertWeights<S>& w,  \
                               ExpertActivations<S>& a);                                           \
  /* y[t] = sum over kept slots, in slot order, of gate * yp[row] */                               \
  virtual void combine(const LayerConfig& c, const Plan& plan, const double* gate, const S* yp,    \
                       S* y);                                                                      \
  /* dyp[row] = gate * dy[t]; dgate[slot] = <dy[t], yp[row]> (0 for dropped slots) */              \
  virtual void combine_backward(const LayerConfig& c, const Plan& plan, const double* gate,        \
                                const S* yp, const S* dy, S* dyp, double* dgate);                  \
  /* expert weight gradients (accumulated) and dxp */                                              \
  virtual void experts_backward(const LayerConfig& c, const Plan& plan, const ExpertWeights<S>& w, \
                                const ExpertActivations<S>& a, const S* dyp, S* dxp,               \
                                ExpertGradients<S>& g);                                            \
  /* dx[t] += sum over kept slots, in slot order, of dxp[row] */                                   \
  virtual void permute_backward(const LayerConfig& c, const Plan& plan, const S* dxp, S* dx);

// Per-layer state a backend keeps (handles, device copies); owned by the layer.
class BackendState {
 public:
  virtual ~BackendState() = default;
};

// What a device pipeline sees of a layer for one call: what the step reads, nothing
// it could change behind the layer's back (the layer advances its own step).
struct DeviceLayer {
  const LayerConfig& config;
  const BoundWeights& weights;
  BackendState& state;  // this backend's, from create_state
  void* stream;         // the caller's device stream (cudaStream_t), if any
  uint64_t serial;      // stamped into the saved state
  int64_t step;
  const std::vector<double>& selection_bias;  // [E]
  const HashTable& hash_table;
  uint64_t hash_table_generation;  // bumped by every build, so device copies know to refresh
  bool telemetry_due;              // this call's step statistics are wanted
  dist::ExpertParallel* ep;        // set while a communicator is attached
};

// A backend whose data lives on its own device runs the whole pipeline there,
// rather than stage by stage on host memory.
class DevicePipeline {
 public:
  virtual ~DevicePipeline() = default;
  // `group`: this call's place in the expert-parallel group (when layer.ep is set).
  virtual std::unique_ptr<SavedState> forward(const DeviceLayer& layer,
                                              const moe_forward_args_t& args,
                                              const dist::ForwardCheckIn& group) = 0;
  virtual void backward(const DeviceLayer& layer, const SavedState& saved,
                        const moe_backward_args_t& args) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // "" when this backend can run a layer of this config, else why not.
  virtual std::string unsupported_reason(const LayerConfig& config) const = 0;
  // Where the layer's tensors must live.
  virtual moe_device_t device() const { return MOE_DEVICE_CPU; }
  // "auto" only picks backends that take host memory, like the default tensors.
  virtual bool selectable_by_auto() const { return device() == MOE_DEVICE_CPU; }
  virtual std::unique_ptr<BackendState> create_state(const LayerConfig&) { return nullptr; }
  virtual DevicePipeline* device_pipeline() { return nullptr; }
  // Copies a tensor of this backend's device into host memory (weight metrics).
  virtual void read_to_host(const moe_tensor_t& tensor, void* host, size_t bytes);
  // A device backend's memory on a layer's stream (expert parallelism stages its
  // exchanges through it); null for host backends. `stream` is the layer's own
  // member, read at each use, since the caller may set another stream later.
  virtual std::unique_ptr<DeviceMemory> device_memory(void* const& /*stream*/) { return nullptr; }

  MOE_BACKEND_STAGES(float)
  MOE_BACKEND_STAGES(double)
  MOE_BACKEND_STAGES(bfloat16)
};

}  // namespace moe
