// GPU benchmark of the cuda backend: layer forward and forward+backward throughput
// against a dense cuBLAS FFN of the same FLOPs measured in the same run, and the
// permute and combine kernels against a device-to-device copy, and (--ep 1) the
// expert-parallel pipeline on one rank: the same layer through a local communicator
// (rows staged through host memory) and, when built with NCCL, through a one-rank NCCL
// communicator, against the layer without one. Times are medians of CUDA-event timings
// after warm-up. Prints a table and writes JSON (--json FILE).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "backends/cuda/gemm.hpp"
#include "backends/cuda/kernels.hpp"
#include "moe/moe.hpp"
#ifdef MOE_BENCH_NCCL
#include "moe/moe_nccl.h"
#endif

namespace {

void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

__global__ void fill_kernel(__nv_bfloat16* p, int64_t n, float scale, uint64_t seed) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  uint64_t h = (static_cast<uint64_t>(i) + seed) * 0x9e3779b97f4a7c15ULL;
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 29;
  const float u = static_cast<float>(h >> 40) / static_cast<float>(1ULL << 24);  // [0,1)
  p[i] = __float2bfloat16((2.f * u - 1.f) * 1.7320508f * scale);                 // variance scale^2
}

struct Buffer {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buffer(size_t n) : bytes(n) { cuda_ok(cudaMalloc(&p, n), "cudaMalloc"); }
  ~Buffer() { cudaFree(p); }
};

void fill(Buffer& b, float scale, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(b.bytes / 2);
  fill_kernel<<<static_cast<unsigned>((n + 255) / 256), 256>>>(static_cast<__nv_bfloat16*>(b.p), n,
                                                               scale, seed);
  cuda_ok(cudaGetLastError(), "fill");
}

double median_ms(int iters, const std::function<void()>& body) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 3; ++i) body();
  cuda_ok(cudaDeviceSynchronize(), "warm-up");
  std::vector<float> times;
  for (int i = 0; i < iters; ++i) {
    cudaEventRecord(start);
    body();
    cudaEventRecord(stop);
    cuda_ok(cudaEventSynchronize(stop), "timing");
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return times[times.size() / 2];
}

moe_tensor_t tensor(void* p, std::initializer_list<int64_t> shape) {
  moe_tensor_t t = MOE_TENSOR_EMPTY;
  t.data = p;
  t.dtype = MOE_DTYPE_BF16;
  t.device = MOE_DEVICE_CUDA;
  for (int64_t s : shape) t.shape[t.ndim++] = s;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t T = 8192, d = 4096, dff = 14336, E = 8, k = 2;
  int iters = 20;
  int64_t telemetry = 1, ep = 0, pad = 0, graph = 0;
  double capacity = 0.0;  // dropless
  const char* json = nullptr;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int64_t v = std::atoll(argv[i + 1]);
    if (a == "--tokens")
      T = v;
    else if (a == "--d")
      d = v;
    else if (a == "--dff")
      dff = v;
    else if (a == "--experts")
      E = v;
    else if (a == "--topk")
      k = v;
    else if (a == "--iters")
      iters = static_cast<int>(v);
    else if (a == "--telemetry")
      telemetry = v;
    else if (a == "--ep")
      ep = v;
    else if (a == "--json")
      json = argv[i + 1];
    else if (a == "--capacity")
      capacity = std::atof(argv[i + 1]);
    else if (a == "--pad")
      pad = v;
    else if (a == "--graph")  // also time forward+backward replayed from a CUDA graph
      graph = v;
  }
  const int64_t F = 2 * dff;  // swiglu
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);

  Buffer x(T * d * 2), y(T * d * 2), dy(T * d * 2), dx(T * d * 2);
  Buffer router(d * E * 2), w1(E * d * F * 2), w2(E * dff * d * 2);
  Buffer g_router(d * E * 2), g_w1(E * d * F * 2), g_w2(E * dff * d * 2);
  fill(x, 1.f, 1);
  fill(dy, 1.f, 2);
  fill(router, 1.f / std::sqrt(float(d)), 3);
  fill(w1, 1.f / std::sqrt(float(d)), 4);
  fill(w2, 1.f / std::sqrt(float(dff)), 5);

  moe_layer_config_t cfg = MOE_LAYER_CONFIG_INIT;
  cfg.d_model = d;
  cfg.d_ff = dff;
  cfg.num_experts = E;
  cfg.top_k = k;
  cfg.activation = MOE_ACTIVATION_SWIGLU;
  cfg.dtype = MOE_DTYPE_BF16;
  cfg.backend = "cuda";
  cfg.telemetry_interval = telemetry;
  cfg.capacity_factor = capacity;
  cfg.pad_to_capacity = static_cast<int32_t>(pad);
  moe::Layer layer(cfg);
  moe_weights_t w = MOE_WEIGHTS_INIT;
  w.router = tensor(router.p, {d, E});
  w.w1 = tensor(w1.p, {E, d, F});
  w.w2 = tensor(w2.p, {E, dff, d});
  layer.set_weights(w);
  moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
  fa.x = tensor(x.p, {T, d});
  fa.y = tensor(y.p, {T, d});
  fa.train = 0;
  moe_backward_args_t ba = MOE_BACKWARD_ARGS_INIT;
  ba.dy = tensor(dy.p, {T, d});
  ba.dx = tensor(dx.p, {T, d});
  ba.grads.router = tensor(g_router.p, {d, E});
  ba.grads.w1 = tensor(g_w1.p, {E, d, F});
  ba.grads.w2 = tensor(g_w2.p, {E, dff, d});

  const double forward_ms =
      median_ms(iters, [&] { moe::check(moe_layer_forward(layer.get(), &fa, nullptr)); });
  auto step = [&] {  // one forward and backward
    moe::Context ctx = layer.forward(fa);
    layer.backward(ctx, ba);
  };
  const double train_ms = median_ms(iters, step);
  // Static shapes (capacity and padding): one forward and backward captured into a CUDA
  // graph and replayed, which takes the host out of the step (docs/cuda.md).
  double graph_ms = -1;
  if (graph && capacity > 0 && pad) {
    cudaStream_t stream;
    cuda_ok(cudaStreamCreate(&stream), "cudaStreamCreate");
    moe::check(moe_layer_set_stream(layer.get(), stream));
    step();
    cuda_ok(cudaStreamSynchronize(stream), "warm-up");
    cudaGraph_t captured;
    cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
    step();
    cuda_ok(cudaStreamEndCapture(stream, &captured), "capture");
    cudaGraphExec_t exec;
    cuda_ok(cudaGraphInstantiate(&exec, captured, 0), "cudaGraphInstantiate");
    graph_ms = median_ms(iters, [&] { cuda_ok(cudaGraphLaunch(exec, stream), "cudaGraphLaunch"); });
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(captured);
    moe::check(moe_layer_set_stream(layer.get(), nullptr));
    cudaStreamDestroy(stream);
  }
  moe::Context probe = layer.forward(fa);
  const auto stats = probe.stats(E);
  probe = moe::Context();

  // The expert-parallel pipeline on one rank: every row still travels through the
  // communicator, so this is its cost over the plain pipeline (dispatch on the host,
  // the exchanges' synchronisations, and host staging for a host communicator).
  struct Attached {
    const char* name;
    double forward_ms, train_ms;
  };
  std::vector<Attached> attached;
  auto time_attached = [&](const char* name, moe_comm_t comm) {
    layer.set_comm(comm);
    layer.set_weights(w);
    const double f =
        median_ms(iters, [&] { moe::check(moe_layer_forward(layer.get(), &fa, nullptr)); });
    const double t = median_ms(iters, step);
    layer.set_comm(nullptr);
    layer.set_weights(w);
    attached.push_back({name, f, t});
  };
  if (ep) {
    moe_comm_t local = nullptr;
    moe::check(moe_comm_create_local(&local));
    time_attached("local communicator (host staging)", local);
    moe::check(moe_comm_destroy(local));
#ifdef MOE_BENCH_NCCL
    ncclComm_t nccl;
    int device = 0;
    if (ncclCommInitAll(&nccl, 1, &device) != ncclSuccess) {
      std::fprintf(stderr, "ncclCommInitAll failed\n");
      return 1;
    }
    moe_comm_t comm = nullptr;
    moe::check(moe_comm_create_nccl(nccl, nullptr, 60.0, &comm));
    time_attached("one-rank NCCL communicator", comm);
    moe::check(moe_comm_destroy(comm));
    ncclCommDestroy(nccl);
#endif
  }

  // A dense FFN of the same FLOPs: T*k rows through [d, F] and [d_ff, d].
  const int64_t R = T * k;
  Buffer a(R * d * 2), h(R * F * 2), hh(R * dff * 2), out(R * d * 2), dW1(d * F * 2),
      dW2(dff * d * 2);
  fill(a, 1.f, 6);
  fill(hh, 1.f, 7);
  cublasHandle_t handle;
  cublasCreate(&handle);
  using moe::cuda::gemm;
  const moe_dtype_t bf = MOE_DTYPE_BF16;
  auto dense_forward = [&] {
    gemm(handle, bf, bf, R, F, d, {a.p, d, false}, {w1.p, F, false}, h.p, F, false);
    gemm(handle, bf, bf, R, d, dff, {hh.p, dff, false}, {w2.p, d, false}, out.p, d, false);
  };
  const double dense_forward_ms = median_ms(iters, dense_forward);
  const double dense_train_ms = median_ms(iters, [&] {
    dense_forward();
    gemm(handle, bf, bf, R, dff, d, {out.p, d, false}, {w2.p, d, true}, hh.p, dff, false);
    gemm(handle, bf, bf, dff, d, R, {hh.p, dff, true}, {out.p, d, false}, dW2.p, d, false);
    gemm(handle, bf, bf, d, F, R, {a.p, d, true}, {h.p, F, false}, dW1.p, F, false);
    gemm(handle, bf, bf, R, d, F, {h.p, F, false}, {w1.p, F, true}, a.p, d, false);
  });

  // Permute and combine kernels against a device-to-device copy of the same rows.
  std::vector<int64_t> host_rows(R);
  for (int64_t r = 0; r < R; ++r) host_rows[r] = r / k;  // row -> token
  std::vector<int64_t> host_slots(R);
  for (int64_t c = 0; c < R; ++c) host_slots[c] = (c % k) * T + c / k;  // slot -> row, scattered
  std::vector<float> host_gates(R, 0.5f);
  Buffer row_token(R * 8), slot_row(R * 8), gates(R * 4);
  cudaMemcpy(row_token.p, host_rows.data(), R * 8, cudaMemcpyHostToDevice);
  cudaMemcpy(slot_row.p, host_slots.data(), R * 8, cudaMemcpyHostToDevice);
  cudaMemcpy(gates.p, host_gates.data(), R * 4, cudaMemcpyHostToDevice);
  const double permute_ms = median_ms(iters, [&] {
    moe::cuda::permute(bf, R, d, x.p, static_cast<int64_t*>(row_token.p), out.p, nullptr);
  });
  const double combine_ms = median_ms(iters, [&] {
    moe::cuda::combine(bf, T, k, d, static_cast<float*>(gates.p), static_cast<int64_t*>(slot_row.p),
                       out.p, y.p, nullptr);
  });
  const double copy_ms =
      median_ms(iters, [&] { cudaMemcpyAsync(a.p, out.p, R * d * 2, cudaMemcpyDeviceToDevice); });
  const double row_bytes = static_cast<double>(d) * 2;
  const double permute_gbs = 2.0 * R * row_bytes / permute_ms / 1e6;
  const double combine_gbs = (R + T) * row_bytes / combine_ms / 1e6;
  const double copy_gbs = 2.0 * R * row_bytes / copy_ms / 1e6;

  const double expert_flops = 2.0 * R * (static_cast<double>(d) * F + static_cast<double>(dff) * d);
  const double tf = 1e-9;  // flops per ms -> TFLOP/s
  std::printf("device: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  std::printf(
      "shape: T=%lld d=%lld d_ff=%lld E=%lld k=%lld swiglu bf16, capacity %g%s, telemetry every "
      "%lld; demand",
      (long long)T, (long long)d, (long long)dff, (long long)E, (long long)k, capacity,
      pad ? " padded" : "", (long long)telemetry);
  for (int64_t c : stats.demand) std::printf(" %lld", (long long)c);
  std::printf("\n%-34s %10s %10s\n", "what", "ms", "TFLOP/s");
  std::printf("%-34s %10.3f %10.1f\n", "layer forward", forward_ms, expert_flops / forward_ms * tf);
  std::printf("%-34s %10.3f %10.1f\n", "dense FFN forward (same FLOPs)", dense_forward_ms,
              expert_flops / dense_forward_ms * tf);
  std::printf("%-34s %10.3f %10.1f\n", "layer forward+backward", train_ms,
              3 * expert_flops / train_ms * tf);
  std::printf("%-34s %10.3f %10.1f\n", "dense FFN forward+backward", dense_train_ms,
              3 * expert_flops / dense_train_ms * tf);
  if (graph_ms > 0)
    std::printf("%-34s %10.3f %10.1f\n", "layer fwd+bwd, CUDA graph replay", graph_ms,
                3 * expert_flops / graph_ms * tf);
  std::printf("forward ratio to dense: %.3f   forward+backward ratio: %.3f\n",
              dense_forward_ms / forward_ms, dense_train_ms / train_ms);
  std::printf("permute %.1f GB/s, combine %.1f GB/s, device copy %.1f GB/s -> %.2f, %.2f of copy\n",
              permute_gbs, combine_gbs, copy_gbs, permute_gbs / copy_gbs, combine_gbs / copy_gbs);
  for (const Attached& a : attached)
    std::printf(
        "expert parallel, %s: forward %.3f ms (%.3fx plain), forward+backward %.3f ms "
        "(%.3fx plain)\n",
        a.name, a.forward_ms, a.forward_ms / forward_ms, a.train_ms, a.train_ms / train_ms);
  if (json) {
    FILE* f = std::fopen(json, "w");
    std::fprintf(f,
                 "{\"device\":\"%s\",\"T\":%lld,\"d\":%lld,\"d_ff\":%lld,\"E\":%lld,\"k\":%lld,"
                 "\"forward_ms\":%.4f,\"dense_forward_ms\":%.4f,\"train_ms\":%.4f,"
                 "\"dense_train_ms\":%.4f,\"permute_gbs\":%.1f,\"combine_gbs\":%.1f,"
                 "\"copy_gbs\":%.1f,\"expert_tflop\":%.4f,\"capacity\":%g,\"pad\":%lld,"
                 "\"train_graph_ms\":%.4f}\n",
                 prop.name, (long long)T, (long long)d, (long long)dff, (long long)E, (long long)k,
                 forward_ms, dense_forward_ms, train_ms, dense_train_ms, permute_gbs, combine_gbs,
                 copy_gbs, expert_flops * 1e-12, capacity, (long long)pad, graph_ms);
    std::fclose(f);
  }
  cublasDestroy(handle);
  return 0;
}
