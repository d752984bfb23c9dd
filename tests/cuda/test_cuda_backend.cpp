// The cuda backend against cpu_ref: outputs, losses, counts and every gradient, fp32
// (TF32 off) within 1e-5 and bf16 within 1e-2 (norm-wise relative error), routing
// decisions identical; determinism; edge inputs; bad input. Skips, saying so, on a
// machine without a CUDA device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/bfloat16.hpp"
#include "moe/moe.hpp"
#include "moe/moe_cuda.h"
#include "tests/cuda/device_mirror.hpp"

namespace {

using moe_test::have_gpu;
using moe_test::Mirror;
using moe_test::randn;

void cuda_ok(cudaError_t e) {
  ASSERT_EQ(e, cudaSuccess) << cudaGetErrorString(e);
}

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - want[i]) * static_cast<double>(got[i] - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

struct Shape {
  int64_t T, d, d_ff, E, k;
};

// One layer run on both backends from the same (dtype-representable) values.
struct Comparison {
  std::map<std::string, double> errors;
  bool same_routing = false;
  bool same_counts = false;
};

// What a comparison may add to the plain call: token ids for the hash router (host ids
// for cpu_ref, a device copy for cuda), a hash table built from them on both layers,
// and sequences for the sequence metrics.
struct Extra {
  std::vector<int64_t> token_ids;
  std::vector<int64_t> table_ids;  // non-empty: build a hash table from these on both layers
  int64_t vocab_size = 0;
  int64_t seq_len = 0;
};

Comparison compare(moe_layer_config_t cfg, Shape s, moe_dtype_t dtype, uint64_t seed,
                   const Extra& extra = {}) {
  const bool gated =
      cfg.activation == MOE_ACTIVATION_SWIGLU || cfg.activation == MOE_ACTIVATION_GEGLU;
  const int64_t F = gated ? 2 * s.d_ff : s.d_ff;
  cfg.d_model = s.d;
  cfg.d_ff = s.d_ff;
  cfg.num_experts = s.E;
  cfg.top_k = s.k;
  std::mt19937_64 rng(seed);
  Mirror x(dtype, randn(s.T * s.d, 1.0, rng)), dy(dtype, randn(s.T * s.d, 1.0, rng));
  Mirror router(dtype, randn(s.d * s.E, 1.0 / std::sqrt(double(s.d)), rng));
  Mirror w1(dtype, randn(s.E * s.d * F, 1.0 / std::sqrt(double(s.d)), rng));
  Mirror w2(dtype, randn(s.E * s.d_ff * s.d, 1.0 / std::sqrt(double(s.d_ff)), rng));
  Mirror b1(dtype, randn(s.E * F, 0.1, rng)), b2(dtype, randn(s.E * s.d, 0.1, rng));
  Mirror y(dtype, std::vector<float>(s.T * s.d)), dx(dtype, std::vector<float>(s.T * s.d));
  Mirror g_router(dtype, std::vector<float>(s.d * s.E)),
      g_w1(dtype, std::vector<float>(s.E * s.d * F));
  Mirror g_w2(dtype, std::vector<float>(s.E * s.d_ff * s.d));
  Mirror g_b1(dtype, std::vector<float>(s.E * F)), g_b2(dtype, std::vector<float>(s.E * s.d));

  // Reference on the host, float32, from the same values.
  moe_layer_config_t ref_cfg = cfg;
  ref_cfg.backend = "cpu_ref";
  ref_cfg.dtype = MOE_DTYPE_F32;
  const bool learned = cfg.router != MOE_ROUTER_HASH;
  moe::Layer ref(ref_cfg);
  int64_t* device_ids = nullptr;
  if (!extra.token_ids.empty()) {
    const size_t bytes = extra.token_ids.size() * sizeof(int64_t);
    cudaMalloc(reinterpret_cast<void**>(&device_ids), bytes);
    cudaMemcpy(device_ids, extra.token_ids.data(), bytes, cudaMemcpyHostToDevice);
  }
  std::vector<float> hx = x.host, hdy = dy.host, hr = router.host, h1 = w1.host, h2 = w2.host,
                     hb1 = b1.host, hb2 = b2.host, hy(s.T * s.d), hdx(s.T * s.d), gr(hr.size()),
                     g1(h1.size()), g2(h2.size()), gb1(hb1.size()), gb2(hb2.size());
  moe_weights_t hw = MOE_WEIGHTS_INIT;
  if (learned) hw.router = moe::tensor(hr.data(), {s.d, s.E});
  hw.w1 = moe::tensor(h1.data(), {s.E, s.d, F});
  hw.w2 = moe::tensor(h2.data(), {s.E, s.d_ff, s.d});
  if (cfg.expert_bias) {
    hw.b1 = moe::tensor(hb1.data(), {s.E, F});
    hw.b2 = moe::tensor(hb2.data(), {s.E, s.d});
  }
  ref.set_weights(hw);
  if (!extra.table_ids.empty()) {
    EXPECT_EQ(
        moe_layer_build_hash_table(ref.get(), extra.table_ids.data(),
                                   static_cast<int64_t>(extra.table_ids.size()), extra.vocab_size),
        MOE_STATUS_SUCCESS);
  }
  moe_forward_args_t hf = MOE_FORWARD_ARGS_INIT;
  hf.x = moe::tensor(hx.data(), {s.T, s.d});
  hf.y = moe::tensor(hy.data(), {s.T, s.d});
  hf.token_ids = extra.token_ids.empty() ? nullptr : extra.token_ids.data();
  hf.seq_len = extra.seq_len;
  moe::Context rctx = ref.forward(hf);
  moe_backward_args_t hb = MOE_BACKWARD_ARGS_INIT;
  hb.dy = moe::tensor(hdy.data(), {s.T, s.d});
  hb.dx = moe::tensor(hdx.data(), {s.T, s.d});
  hb.grads = hw;
  if (learned) hb.grads.router.data = gr.data();
  hb.grads.w1.data = g1.data();
  hb.grads.w2.data = g2.data();
  if (cfg.expert_bias) {
    hb.grads.b1.data = gb1.data();
    hb.grads.b2.data = gb2.data();
  }
  ref.backward(rctx, hb);

  cfg.backend = "cuda";
  cfg.dtype = dtype;
  moe::Layer gpu(cfg);
  moe_weights_t dw = MOE_WEIGHTS_INIT;
  if (learned) dw.router = router.tensor({s.d, s.E});
  dw.w1 = w1.tensor({s.E, s.d, F});
  dw.w2 = w2.tensor({s.E, s.d_ff, s.d});
  if (cfg.expert_bias) {
    dw.b1 = b1.tensor({s.E, F});
    dw.b2 = b2.tensor({s.E, s.d});
  }
  gpu.set_weights(dw);
  if (!extra.table_ids.empty()) {
    EXPECT_EQ(
        moe_layer_build_hash_table(gpu.get(), extra.table_ids.data(),
                                   static_cast<int64_t>(extra.table_ids.size()), extra.vocab_size),
        MOE_STATUS_SUCCESS);
  }
  moe_forward_args_t df = MOE_FORWARD_ARGS_INIT;
  df.x = x.tensor({s.T, s.d});
  df.y = y.tensor({s.T, s.d});
  df.token_ids = device_ids;
  df.seq_len = extra.seq_len;
  moe::Context gctx = gpu.forward(df);
  moe_backward_args_t db = MOE_BACKWARD_ARGS_INIT;
  db.dy = dy.tensor({s.T, s.d});
  db.dx = dx.tensor({s.T, s.d});
  if (learned) db.grads.router = g_router.tensor({s.d, s.E});
  db.grads.w1 = g_w1.tensor({s.E, s.d, F});
  db.grads.w2 = g_w2.tensor({s.E, s.d_ff, s.d});
  if (cfg.expert_bias) {
    db.grads.b1 = g_b1.tensor({s.E, F});
    db.grads.b2 = g_b2.tensor({s.E, s.d});
  }
  gpu.backward(gctx, db);

  Comparison c;
  c.errors["y"] = relative_error(y.download(), hy);
  c.errors["dx"] = relative_error(dx.download(), hdx);
  cudaFree(device_ids);
  if (learned) c.errors["d router"] = relative_error(g_router.download(), gr);
  c.errors["d w1"] = relative_error(g_w1.download(), g1);
  c.errors["d w2"] = relative_error(g_w2.download(), g2);
  if (cfg.expert_bias) {
    c.errors["d b1"] = relative_error(g_b1.download(), gb1);
    c.errors["d b2"] = relative_error(g_b2.download(), gb2);
  }
  const moe_losses_t rl = rctx.losses(), gl = gctx.losses();
  c.errors["aux_loss"] =
      std::abs(rl.aux_loss - gl.aux_loss) / std::max(1e-30, std::abs(rl.aux_loss));
  c.errors["z_loss"] = std::abs(rl.z_loss - gl.z_loss) / std::max(1e-30, std::abs(rl.z_loss));
  const auto rr = rctx.routing(), gr2 = gctx.routing();
  c.same_routing = rr.experts == gr2.experts && rr.dropped == gr2.dropped;
  const auto rs = rctx.stats(s.E), gs = gctx.stats(s.E);
  // Telemetry (summed on the device): every metric of the catalogue, scalars and
  // per-expert vectors and matrices alike, agrees (float32 probabilities on the GPU).
  int32_t metrics = 0;
  moe_metric_count(&metrics);
  double worst = 0;
  std::string worst_name = "none";
  for (int32_t i = 0; i < metrics; ++i) {
    const char* name = nullptr;
    moe_metric_shape_t shape;
    moe_metric_info(i, &name, &shape, nullptr);
    std::vector<double> a(s.E * s.E + 1), b(s.E * s.E + 1);
    int64_t na = 0, nb = 0;
    const moe_split_t split = hf.train ? MOE_SPLIT_TRAIN : MOE_SPLIT_EVAL;
    if (moe_layer_metric(ref.get(), split, MOE_SCOPE_LAST, name, a.data(),
                         static_cast<int64_t>(a.size()), &na) != MOE_STATUS_SUCCESS ||
        moe_layer_metric(gpu.get(), split, MOE_SCOPE_LAST, name, b.data(),
                         static_cast<int64_t>(b.size()), &nb) != MOE_STATUS_SUCCESS ||
        na != nb) {
      worst = INFINITY;
      worst_name = name;
      continue;
    }
    for (int64_t j = 0; j < na; ++j) {
      if (std::isnan(a[j]) && std::isnan(b[j])) continue;
      const double err = std::abs(a[j] - b[j]) / std::max(1.0, std::abs(a[j]));
      if (!(err <= worst)) {
        worst = std::isnan(err) ? INFINITY : err;
        worst_name = name;
      }
    }
  }
  c.errors["telemetry (worst: " + worst_name + ")"] = worst;
  c.same_counts = rs.demand == gs.demand && rs.served == gs.served &&
                  rs.summary.capacity == gs.summary.capacity &&
                  rs.summary.dropped_total == gs.summary.dropped_total;
  return c;
}

using Case = std::tuple<moe_router_t, moe_activation_t, bool, moe_dtype_t>;

class CudaParity : public ::testing::TestWithParam<Case> {};

TEST_P(CudaParity, MatchesCpuRef) {
  SKIP_WITHOUT_GPU();
  const auto [router, act, capacity, dtype] = GetParam();
  moe_layer_config_t cfg = MOE_LAYER_CONFIG_INIT;
  cfg.router = router;
  cfg.activation = act;
  cfg.expert_bias = 1;
  cfg.capacity_factor = capacity ? 1.0 : 0.0;
  cfg.load_balance_alpha = 0.05;
  cfg.router_z_loss_coef = 0.01;
  const double tolerance = dtype == MOE_DTYPE_F32 ? 1e-5 : 1e-2;
  for (Shape s : {Shape{257, 64, 96, 8, 2}, Shape{33, 30, 22, 5, 3}}) {
    const Comparison c = compare(cfg, s, dtype, 7);
    EXPECT_TRUE(c.same_routing) << "routing differs at T=" << s.T;
    EXPECT_TRUE(c.same_counts) << "counts differ at T=" << s.T;
    for (const auto& [name, err] : c.errors)
      EXPECT_LE(err, tolerance) << name << " at T=" << s.T << " d=" << s.d;
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  static const char* acts[] = {"relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu"};
  return std::string(std::get<0>(info.param) == MOE_ROUTER_SOFTMAX ? "softmax_" : "sigmoid_") +
         acts[std::get<1>(info.param)] + (std::get<2>(info.param) ? "_capacity" : "_dropless") +
         (std::get<3>(info.param) == MOE_DTYPE_F32 ? "_f32" : "_bf16");
}

INSTANTIATE_TEST_SUITE_P(
    All, CudaParity,
    ::testing::Combine(::testing::Values(MOE_ROUTER_SOFTMAX, MOE_ROUTER_SIGMOID),
                       ::testing::Values(MOE_ACTIVATION_RELU, MOE_ACTIVATION_GELU,
                                         MOE_ACTIVATION_GELU_TANH, MOE_ACTIVATION_SILU,
                                         MOE_ACTIVATION_SWIGLU, MOE_ACTIVATION_GEGLU),
                       ::testing::Bool(), ::testing::Values(MOE_DTYPE_F32, MOE_DTYPE_BF16)),
    case_name);

// The routers and plan options beyond token-choice softmax/sigmoid with position drops:
// the hash router in each mode, expert choice (with and without selection noise), the
// probability drop policy and pad-to-capacity, in both dtypes, with sequence metrics.
struct Variant {
  const char* name;
  void (*configure)(moe_layer_config_t&);
  bool token_ids, table;
};

const Variant kVariants[] = {
    {"hash_mix",
     [](moe_layer_config_t& c) { c.router = MOE_ROUTER_HASH, c.hash_mode = MOE_HASH_MIX; }, true,
     false},
    {"hash_table",
     [](moe_layer_config_t& c) { c.router = MOE_ROUTER_HASH, c.hash_mode = MOE_HASH_TABLE; }, true,
     true},
    {"hash_content",
     [](moe_layer_config_t& c) { c.router = MOE_ROUTER_HASH, c.hash_mode = MOE_HASH_CONTENT; },
     false, false},
    {"expert_choice", [](moe_layer_config_t& c) { c.router = MOE_ROUTER_EXPERT_CHOICE; }, false,
     false},
    {"expert_choice_noisy_1_5",
     [](moe_layer_config_t& c) {
       c.router = MOE_ROUTER_EXPERT_CHOICE, c.capacity_factor = 1.5,
       c.router_noise_type = MOE_NOISE_GAUSSIAN, c.router_noise_std_init = 0.5;
     },
     false, false},
    {"min_capacity",  // DeepSpeed's floor: C = max(6, ceil(0.25 T k / E))
     [](moe_layer_config_t& c) { c.capacity_factor = 0.25, c.min_capacity = 6; }, false, false},
    {"probability_drops",
     [](moe_layer_config_t& c) { c.capacity_factor = 0.8, c.drop_policy = MOE_DROP_PROBABILITY; },
     false, false},
    {"sigmoid_probability_drops",
     [](moe_layer_config_t& c) {
       c.router = MOE_ROUTER_SIGMOID, c.capacity_factor = 0.7, c.drop_policy = MOE_DROP_PROBABILITY;
     },
     false, false},
    {"pad_to_capacity",
     [](moe_layer_config_t& c) { c.capacity_factor = 1.25, c.pad_to_capacity = 1; }, false, false},
    {"pad_to_capacity_expert_choice",
     [](moe_layer_config_t& c) {
       c.router = MOE_ROUTER_EXPERT_CHOICE, c.capacity_factor = 1.0, c.pad_to_capacity = 1;
     },
     false, false},
};

using VariantCase = std::tuple<int, moe_dtype_t>;
class CudaVariants : public ::testing::TestWithParam<VariantCase> {};

TEST_P(CudaVariants, MatchCpuRef) {
  SKIP_WITHOUT_GPU();
  const auto [index, dtype] = GetParam();
  const Variant& v = kVariants[index];
  moe_layer_config_t cfg = MOE_LAYER_CONFIG_INIT;
  cfg.activation = MOE_ACTIVATION_SWIGLU;
  cfg.expert_bias = 1;
  cfg.load_balance_alpha = 0.05;
  cfg.router_z_loss_coef = 0.01;
  cfg.seed = 5;
  v.configure(cfg);
  const double tolerance = dtype == MOE_DTYPE_F32 ? 1e-5 : 1e-2;
  for (Shape s : {Shape{257, 64, 96, 8, 2}, Shape{33, 32, 24, 5, 3}}) {
    Extra extra;
    extra.seq_len = 16;
    if (v.token_ids) {
      std::mt19937_64 rng(s.T);
      for (int64_t t = 0; t < s.T; ++t) extra.token_ids.push_back(static_cast<int64_t>(rng() % 50));
      if (v.table) {
        extra.table_ids = extra.token_ids;
        extra.vocab_size = 64;
      }
      extra.token_ids[3] = 70;  // outside the table: the mixed choice
    }
    const Comparison c = compare(cfg, s, dtype, 13, extra);
    EXPECT_TRUE(c.same_routing) << "routing differs at T=" << s.T;
    EXPECT_TRUE(c.same_counts) << "counts differ at T=" << s.T;
    for (const auto& [name, err] : c.errors)
      EXPECT_LE(err, tolerance) << name << " at T=" << s.T << " d=" << s.d;
  }
}

std::string variant_name(const ::testing::TestParamInfo<VariantCase>& param) {
  return std::string(kVariants[std::get<0>(param.param)].name) +
         (std::get<1>(param.param) == MOE_DTYPE_F32 ? "_f32" : "_bf16");
}

// Every variant in both dtypes, except content hashing in bfloat16: it reads the row's
// bytes, which differ between float32 and bfloat16, so the float32 reference would route
// differently; HashContentBf16RoutesAsCpuRef compares it with cpu_ref in bfloat16.
std::vector<VariantCase> variant_cases() {
  std::vector<VariantCase> cases;
  for (int i = 0; i < static_cast<int>(std::size(kVariants)); ++i)
    for (moe_dtype_t dtype : {MOE_DTYPE_F32, MOE_DTYPE_BF16})
      if (std::string(kVariants[i].name) != "hash_content" || dtype == MOE_DTYPE_F32)
        cases.emplace_back(i, dtype);
  return cases;
}

INSTANTIATE_TEST_SUITE_P(All, CudaVariants, ::testing::ValuesIn(variant_cases()), variant_name);

// Content hashing of bfloat16 rows: the routing decision equals cpu_ref's on the same
// bfloat16 bytes.
TEST(CudaBackend, HashContentBf16RoutesAsCpuRef) {
  SKIP_WITHOUT_GPU();
  const int64_t T = 300, d = 40, dff = 24, E = 7, k = 2;
  moe_layer_config_t cfg = MOE_LAYER_CONFIG_INIT;
  cfg.router = MOE_ROUTER_HASH;
  cfg.hash_mode = MOE_HASH_CONTENT;
  cfg.d_model = d;
  cfg.d_ff = dff;
  cfg.num_experts = E;
  cfg.top_k = k;
  cfg.dtype = MOE_DTYPE_BF16;
  std::mt19937_64 rng(21);
  Mirror x(MOE_DTYPE_BF16, randn(T * d, 1, rng)), y(MOE_DTYPE_BF16, std::vector<float>(T * d));
  Mirror w1(MOE_DTYPE_BF16, randn(E * d * dff, 0.1, rng)),
      w2(MOE_DTYPE_BF16, randn(E * dff * d, 0.1, rng));
  x.host[7 * d + 3] = NAN;  // routed nowhere on both
  x.upload();
  auto run = [&](const char* backend, bool on_device) {
    moe_layer_config_t c = cfg;
    c.backend = backend;
    moe::Layer layer(c);
    std::vector<moe::bfloat16> hx(x.host.begin(), x.host.end()), hy(T * d),
        h1(w1.host.begin(), w1.host.end()), h2(w2.host.begin(), w2.host.end());
    moe_weights_t w = MOE_WEIGHTS_INIT;
    w.w1 = on_device ? w1.tensor({E, d, dff}) : moe::tensor(h1.data(), MOE_DTYPE_BF16, {E, d, dff});
    w.w2 = on_device ? w2.tensor({E, dff, d}) : moe::tensor(h2.data(), MOE_DTYPE_BF16, {E, dff, d});
    layer.set_weights(w);
    moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
    a.x = on_device ? x.tensor({T, d}) : moe::tensor(hx.data(), MOE_DTYPE_BF16, {T, d});
    a.y = on_device ? y.tensor({T, d}) : moe::tensor(hy.data(), MOE_DTYPE_BF16, {T, d});
    return layer.forward(a).routing().experts;
  };
  const auto want = run("cpu_ref", false), got = run("cuda", true);
  EXPECT_EQ(got, want);
  EXPECT_EQ(want[7 * k], -1);
}

TEST(CudaShapes, EdgeShapesMatchCpuRef) {
  SKIP_WITHOUT_GPU();
  moe_layer_config_t cfg = MOE_LAYER_CONFIG_INIT;
  cfg.activation = MOE_ACTIVATION_SWIGLU;
  cfg.load_balance_alpha = 0.1;
  for (Shape s : {Shape{1, 16, 16, 4, 2}, Shape{40, 16, 24, 1, 1}, Shape{40, 16, 24, 4, 4},
                  Shape{1000, 128, 64, 16, 4}}) {
    const Comparison c = compare(cfg, s, MOE_DTYPE_F32, 3);
    EXPECT_TRUE(c.same_routing && c.same_counts) << "T=" << s.T << " E=" << s.E;
    for (const auto& [name, err] : c.errors)
      EXPECT_LE(err, 1e-5) << name << " at T=" << s.T << " E=" << s.E << " k=" << s.k;
  }
}

// Every way of issuing the expert products (padded strided-batched, cuBLAS grouped,
// one call per expert) gives cpu_ref's results, with drops and with idle experts.
TEST(CudaBackend, EveryGemmModeMatchesCpuRef) {
  SKIP_WITHOUT_GPU();
  for (const char* mode : {"batched", "grouped", "loop"}) {
    setenv("MOE_CUDA_GEMM", mode, 1);
    for (double factor : {0.0, 0.8}) {
      moe_layer_config_t cfg = MOE_LAYER_CONFIG_INIT;
      cfg.activation = MOE_ACTIVATION_GEGLU;
      cfg.expert_bias = 1;
      cfg.capacity_factor = factor;
      cfg.load_balance_alpha = 0.01;
      for (Shape s : {Shape{200, 32, 40, 6, 2}, Shape{3, 16, 16, 16, 1}}) {  // 2nd: idle experts
        const Comparison c = compare(cfg, s, MOE_DTYPE_F32, 11);
        EXPECT_TRUE(c.same_routing && c.same_counts) << mode;
        for (const auto& [name, err] : c.errors)
          EXPECT_LE(err, 1e-5) << mode << " factor " << factor << " T=" << s.T << ": " << name;
      }
    }
  }
  unsetenv("MOE_CUDA_GEMM");
}

TEST(CudaBackend, NoiseAndSelectionBiasFollowCpuRef) {
  SKIP_WITHOUT_GPU();
  moe_layer_config_t cfg = MOE_LAYER_CONFIG_INIT;
  cfg.router_noise_type = MOE_NOISE_GUMBEL;
  cfg.router_noise_std_init = 1.0;
  cfg.seed = 99;
  cfg.router_temp_init = 1.7;
  const Comparison c = compare(cfg, {300, 32, 32, 8, 2}, MOE_DTYPE_F32, 5);
  EXPECT_TRUE(c.same_routing) << "the counter-based noise must match cpu_ref's draws";
  for (const auto& [name, err] : c.errors) EXPECT_LE(err, 1e-5) << name;
}

struct GpuLayer {
  Shape s{64, 32, 48, 4, 2};
  std::mt19937_64 rng{1};
  Mirror x{MOE_DTYPE_F32, randn(64 * 32, 1, rng)}, y{MOE_DTYPE_F32, std::vector<float>(64 * 32)};
  Mirror router{MOE_DTYPE_F32, randn(32 * 4, 0.2, rng)},
      w1{MOE_DTYPE_F32, randn(4 * 32 * 48, 0.2, rng)};
  Mirror w2{MOE_DTYPE_F32, randn(4 * 48 * 32, 0.2, rng)};
  Mirror dy{MOE_DTYPE_F32, randn(64 * 32, 1, rng)}, dx{MOE_DTYPE_F32, std::vector<float>(64 * 32)};
  Mirror gw1{MOE_DTYPE_F32, std::vector<float>(4 * 32 * 48)};
  moe::Layer layer{config()};
  static moe_layer_config_t config() {
    moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
    c.d_model = 32;
    c.d_ff = 48;
    c.num_experts = 4;
    c.top_k = 2;
    c.backend = "cuda";
    c.capacity_factor = 1.0;
    return c;
  }
  GpuLayer() {
    moe_weights_t w = MOE_WEIGHTS_INIT;
    w.router = router.tensor({32, 4});
    w.w1 = w1.tensor({4, 32, 48});
    w.w2 = w2.tensor({4, 48, 32});
    layer.set_weights(w);
  }
  moe::Context forward(int64_t T) {
    moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
    a.x = x.tensor({T, 32});
    a.y = y.tensor({T, 32});
    return layer.forward(a);
  }
  void backward(const moe::Context& ctx, int64_t T, uint32_t flags = 0) {
    moe_backward_args_t b = MOE_BACKWARD_ARGS_INIT;
    b.dy = dy.tensor({T, 32});
    b.dx = dx.tensor({T, 32});
    b.grads.w1 = gw1.tensor({4, 32, 48});
    b.flags = flags;
    layer.backward(ctx, b);
  }
};

TEST(CudaBackend, RepeatedRunsAreBitIdentical) {
  SKIP_WITHOUT_GPU();
  GpuLayer g;
  moe::Context a = g.forward(64);
  g.backward(a, 64);
  const auto y1 = g.y.download(), dx1 = g.dx.download(), w1 = g.gw1.download();
  moe::Context b = g.forward(64);
  g.backward(b, 64);
  EXPECT_EQ(g.y.download(), y1);
  EXPECT_EQ(g.dx.download(), dx1);
  EXPECT_EQ(g.gw1.download(), w1);
}

TEST(CudaBackend, AccumulateAndStreams) {
  SKIP_WITHOUT_GPU();
  GpuLayer g;
  cudaStream_t stream;
  cuda_ok(cudaStreamCreate(&stream));
  ASSERT_EQ(moe_layer_set_cuda_stream(g.layer.get(), stream), MOE_STATUS_SUCCESS);
  moe::Context a = g.forward(64);
  g.backward(a, 64);
  cuda_ok(cudaStreamSynchronize(stream));
  const auto once = g.gw1.download();
  g.backward(a, 64, MOE_BACKWARD_ACCUMULATE);
  cuda_ok(cudaStreamSynchronize(stream));
  const auto twice = g.gw1.download();
  for (size_t i = 0; i < once.size(); ++i) ASSERT_FLOAT_EQ(twice[i], 2 * once[i]);
  a = moe::Context();
  ASSERT_EQ(moe_layer_set_cuda_stream(g.layer.get(), nullptr), MOE_STATUS_SUCCESS);
  cuda_ok(cudaStreamSynchronize(stream));
  cuda_ok(cudaStreamDestroy(stream));
}

TEST(CudaBackend, NoTokensAndNonFiniteRows) {
  SKIP_WITHOUT_GPU();
  GpuLayer g;
  moe::Context empty = g.forward(0);
  EXPECT_EQ(empty.stats(4).summary.tokens, 0);
  g.backward(empty, 0);
  for (float v : g.gw1.download()) ASSERT_EQ(v, 0.f);

  g.x.host[3 * 32 + 5] = NAN;
  g.x.host[9 * 32] = INFINITY;
  g.x.upload();
  moe::Context ctx = g.forward(64);
  EXPECT_EQ(ctx.stats(4).summary.nonfinite_rows, 2);
  const auto r = ctx.routing();
  for (int j = 0; j < 2; ++j) {
    EXPECT_EQ(r.experts[3 * 2 + j], -1);
    EXPECT_EQ(r.experts[9 * 2 + j], -1);
  }
  const auto y = g.y.download();
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[3 * 32 + i], 0.f);
  for (float v : y) ASSERT_TRUE(std::isfinite(v));
  g.backward(ctx, 64);
  for (float v : g.gw1.download()) ASSERT_TRUE(std::isfinite(v));
  for (float v : g.dx.download()) ASSERT_TRUE(std::isfinite(v));
}

TEST(CudaBackend, BadInputIsRefused) {
  SKIP_WITHOUT_GPU();
  GpuLayer g;
  std::vector<float> host(64 * 32);
  moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
  a.x = g.x.tensor({64, 32});
  a.x.data = host.data();  // labelled CUDA, but host memory
  a.y = g.y.tensor({64, 32});
  EXPECT_EQ(moe_layer_forward(g.layer.get(), &a, nullptr), MOE_STATUS_INVALID_ARGUMENT);
  a.x = g.x.tensor({64, 32});
  a.x.device = MOE_DEVICE_CPU;
  EXPECT_EQ(moe_layer_forward(g.layer.get(), &a, nullptr), MOE_STATUS_UNSUPPORTED);
  moe_layer_config_t c = GpuLayer::config();
  c.dtype = MOE_DTYPE_F64;
  moe_layer_t layer = nullptr;
  EXPECT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(moe_last_error()).find("float64"), std::string::npos);
  g.forward(64);  // still usable
}

TEST(CudaBackend, RefusesWhatOnlyTheHostBackendsRunYet) {
  SKIP_WITHOUT_GPU();
  moe_layer_config_t c = GpuLayer::config();
  c.router = MOE_ROUTER_HASH;
  c.hash_mode = MOE_HASH_BALANCED;
  moe_layer_t layer = nullptr;
  EXPECT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(moe_last_error()).find("hash_mode balanced"), std::string::npos);
  EXPECT_EQ(layer, nullptr);
  c = GpuLayer::config();
  c.router = MOE_ROUTER_SIGMOID;
  c.n_group = 2;
  c.topk_group = 1;
  EXPECT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(moe_last_error()).find("group-limited"), std::string::npos);
  c = GpuLayer::config();
  c.routed_scaling_factor = 2.5;
  EXPECT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_UNSUPPORTED);
  EXPECT_EQ(layer, nullptr);

  // A token mask on forward, likewise; the layer stays usable.
  GpuLayer g;
  std::vector<uint8_t> mask(64, 1);
  moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
  a.x = g.x.tensor({64, 32});
  a.y = g.y.tensor({64, 32});
  a.token_mask = mask.data();
  EXPECT_EQ(moe_layer_forward(g.layer.get(), &a, nullptr), MOE_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(moe_last_error()).find("token_mask"), std::string::npos);
  g.forward(64);
}

}  // namespace
