// Bad input: every C function with NULL pointers, mismatched shapes, k > E, zero
// experts, destroyed or wrong handles returns its documented status and a message,
// and the handle stays usable with unchanged results afterwards.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <thread>

#include "problem.hpp"

namespace {

using moe_test::make_config;
using moe_test::Problem;

#define EXPECT_STATUS(call, status)                                                \
  do {                                                                             \
    const moe_status_t got = (call);                                               \
    EXPECT_EQ(got, status) << #call << " -> " << moe_status_string(got) << ": "    \
                           << moe_last_error();                                    \
    if (got != MOE_STATUS_SUCCESS) {                                               \
      EXPECT_GT(std::string(moe_last_error()).size(), 10u) << "no useful message"; \
    }                                                                              \
  } while (0)

TEST(BadInput, ConfigValidation) {
  moe_layer_t layer = nullptr;
  auto create = [&](auto mutate) {
    moe_layer_config_t c = make_config(8, 8, 4, 2);
    mutate(c);
    return moe_layer_create(&c, &layer);
  };
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.top_k = 5; }), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(moe_last_error()).find("top_k"), std::string::npos);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.top_k = 0; }), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.num_experts = 0; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.d_model = 0; }), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.d_ff = -3; }), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.router_temp_init = 0; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.load_balance_alpha = -1; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.activation = (moe_activation_t)42; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.router = (moe_router_t)-1; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.size = 0; }), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.pad_to_capacity = 1; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.backend = "no_such_backend"; }),
                MOE_STATUS_UNSUPPORTED);
  EXPECT_STATUS(create([](moe_layer_config_t& c) {
                  c.backend = "onednn";  // float32 and bfloat16 only
                  c.dtype = MOE_DTYPE_F64;
                }),
                MOE_STATUS_UNSUPPORTED);
  EXPECT_EQ(layer, nullptr) << "a rejected create must not hand out a handle";
  EXPECT_STATUS(moe_layer_create(nullptr, &layer), MOE_STATUS_NULL_POINTER);
  moe_layer_config_t ok = make_config(8, 8, 4, 2);
  EXPECT_STATUS(moe_layer_create(&ok, nullptr), MOE_STATUS_NULL_POINTER);
}

TEST(BadInput, GroupLimitedRoutingOptionsAreChecked) {
  moe_layer_t layer = nullptr;
  auto create = [&](int64_t n_group, int64_t topk_group, double scaling) {
    moe_layer_config_t c = make_config(8, 8, 8, 2);
    c.router = MOE_ROUTER_SIGMOID;
    c.n_group = n_group;
    c.topk_group = topk_group;
    c.routed_scaling_factor = scaling;
    return moe_layer_create(&c, &layer);
  };
  EXPECT_STATUS(create(-1, 0, 1.0), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create(INT64_MIN, 0, 1.0), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create(INT64_MAX, 0, 1.0), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create(4, -1, 1.0), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create(4, INT64_MAX, 1.0), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create(4, 2, -0.0), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create(4, 2, std::numeric_limits<double>::infinity()), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create(4, 2, 1e300), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(layer, nullptr);
  ASSERT_EQ(create(4, 2, 2.5), MOE_STATUS_SUCCESS) << moe_last_error();
  moe_layer_destroy(layer);
}

TEST(BadInput, OlderCallerStructGetsDefaults) {
  // A caller compiled when the config ended at `backend` passes a shorter struct.
  moe_layer_config_t c = make_config(8, 8, 4, 2);
  c.size = offsetof(moe_layer_config_t, router_temp_init);
  c.router_temp_init = -5;  // beyond the caller's size: must be ignored
  moe_layer_t layer = nullptr;
  ASSERT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_SUCCESS) << moe_last_error();
  moe_layer_config_t out = MOE_LAYER_CONFIG_INIT;
  ASSERT_EQ(moe_layer_get_config(layer, &out), MOE_STATUS_SUCCESS);
  EXPECT_EQ(out.router_temp_init, 1.0);
  EXPECT_EQ(out.renormalize, 1) << "auto resolves to on for k = 2";
  EXPECT_STREQ(out.backend, moe_test::test_backend());
  moe_layer_destroy(layer);

  // A forward caller of version 1 (before the token mask): the bytes past its size are
  // not read, so every token takes part.
  {
    Problem<float> p(make_config(8, 8, 4, 2), 6, 1);
    moe_forward_args_t args = p.forward_args();
    args.size = offsetof(moe_forward_args_t, token_mask);
    args.version = 1;
    args.token_mask = reinterpret_cast<const uint8_t*>(&args);  // garbage beyond the size
    moe_ctx_t ctx = nullptr;
    ASSERT_EQ(moe_layer_forward(p.layer.get(), &args, &ctx), MOE_STATUS_SUCCESS)
        << moe_last_error();
    std::vector<int32_t> experts(6 * 2, -1);
    ASSERT_EQ(moe_ctx_routing(ctx, experts.data(), nullptr, nullptr), MOE_STATUS_SUCCESS);
    for (int32_t e : experts) EXPECT_GE(e, 0);
    moe_ctx_destroy(ctx);
  }

  // A size that cuts a field in half is no version's size: refused, not read (half a
  // pointer read as a whole one crashed the call).
  {
    Problem<float> p(make_config(8, 8, 4, 2), 6, 1);
    std::vector<uint8_t> mask(6, 1);
    moe_forward_args_t args = p.forward_args();
    args.token_mask = mask.data();
    args.size = offsetof(moe_forward_args_t, token_mask) + 4;
    EXPECT_STATUS(moe_layer_forward(p.layer.get(), &args, nullptr), MOE_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(moe_last_error()).find("cuts a field in half"), std::string::npos);
    moe_layer_config_t half = make_config(8, 8, 4, 2);
    half.size = offsetof(moe_layer_config_t, backend) + 4;
    moe_layer_t none = nullptr;
    EXPECT_STATUS(moe_layer_create(&half, &none), MOE_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(none, nullptr);
  }

  // A caller of version 2 (before the groups): no groups, gates unscaled.
  c = make_config(8, 8, 4, 2);
  c.size = offsetof(moe_layer_config_t, n_group);
  c.version = 2;
  c.routed_scaling_factor = -1;  // beyond the caller's size
  ASSERT_EQ(moe_layer_create(&c, &layer), MOE_STATUS_SUCCESS) << moe_last_error();
  out = MOE_LAYER_CONFIG_INIT;
  ASSERT_EQ(moe_layer_get_config(layer, &out), MOE_STATUS_SUCCESS);
  EXPECT_EQ(out.n_group, 1);
  EXPECT_EQ(out.topk_group, 1);
  EXPECT_EQ(out.routed_scaling_factor, 1.0);
  moe_layer_destroy(layer);
}

TEST(BadInput, HandlesAreChecked) {
  Problem<float> p(make_config(8, 8, 4, 2), 10, 1);
  moe::Context ctx = p.forward();
  moe_forward_args_t args = p.forward_args();
  moe_layer_t layer = p.layer.get();

  // A context passed as a layer, a layer passed as a context.
  EXPECT_STATUS(moe_layer_forward(reinterpret_cast<moe_layer_t>(ctx.get()), &args, nullptr),
                MOE_STATUS_INVALID_HANDLE);
  EXPECT_STATUS(moe_ctx_losses(reinterpret_cast<moe_ctx_t>(layer), nullptr),
                MOE_STATUS_INVALID_HANDLE);
  // A forged pointer.
  int junk = 0;
  EXPECT_STATUS(moe_layer_get_step(reinterpret_cast<moe_layer_t>(&junk), nullptr),
                MOE_STATUS_INVALID_HANDLE);
  // Destroyed handles.
  moe_layer_t other = nullptr;
  moe_layer_config_t c = make_config(8, 8, 4, 2);
  ASSERT_EQ(moe_layer_create(&c, &other), MOE_STATUS_SUCCESS);
  ASSERT_EQ(moe_layer_destroy(other), MOE_STATUS_SUCCESS);
  EXPECT_STATUS(moe_layer_forward(other, &args, nullptr), MOE_STATUS_INVALID_HANDLE);
  EXPECT_STATUS(moe_layer_destroy(other), MOE_STATUS_INVALID_HANDLE);
  moe_ctx_t dead = nullptr;
  ASSERT_EQ(moe_layer_forward(layer, &args, &dead), MOE_STATUS_SUCCESS);
  ASSERT_EQ(moe_ctx_destroy(dead), MOE_STATUS_SUCCESS);
  moe_backward_args_t bargs = p.backward_args();
  EXPECT_STATUS(moe_layer_backward(layer, dead, &bargs), MOE_STATUS_INVALID_HANDLE);
  // NULL is accepted by destroy, rejected elsewhere.
  EXPECT_STATUS(moe_layer_destroy(nullptr), MOE_STATUS_SUCCESS);
  EXPECT_STATUS(moe_ctx_destroy(nullptr), MOE_STATUS_SUCCESS);
  EXPECT_STATUS(moe_layer_forward(nullptr, &args, nullptr), MOE_STATUS_NULL_POINTER);
  // A context from another layer.
  Problem<float> q(make_config(8, 8, 4, 2), 10, 1);
  moe::Context foreign = q.forward();
  EXPECT_STATUS(moe_layer_backward(layer, foreign.get(), &bargs), MOE_STATUS_INVALID_ARGUMENT);
}

// A destroyed handle stays refused even when a new object of the same kind is created at
// once (and, keyed by address, would have been found at the old one's address): forward
// must not reach the new layer, and a second destroy must not destroy it.
TEST(BadInput, StaleHandlesStayDeadWhenMemoryIsReused) {
  moe_layer_config_t c = make_config(8, 8, 4, 2);
  for (int round = 0; round < 50; ++round) {
    moe_layer_t a = nullptr, b = nullptr;
    ASSERT_EQ(moe_layer_create(&c, &a), MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_layer_destroy(a), MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_layer_create(&c, &b), MOE_STATUS_SUCCESS);
    int64_t step = 0;
    EXPECT_STATUS(moe_layer_get_step(a, &step), MOE_STATUS_INVALID_HANDLE);
    EXPECT_STATUS(moe_layer_destroy(a), MOE_STATUS_INVALID_HANDLE);
    EXPECT_NE(a, b);
    EXPECT_STATUS(moe_layer_get_step(b, &step), MOE_STATUS_SUCCESS);  // b is untouched
    ASSERT_EQ(moe_layer_destroy(b), MOE_STATUS_SUCCESS);

    moe_group_t g = nullptr, h = nullptr;
    ASSERT_EQ(moe_group_create(&g), MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_group_destroy(g), MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_group_create(&h), MOE_STATUS_SUCCESS);
    EXPECT_STATUS(moe_group_destroy(g), MOE_STATUS_INVALID_HANDLE);
    ASSERT_EQ(moe_group_destroy(h), MOE_STATUS_SUCCESS);

    moe_comm_t m = nullptr, n = nullptr;
    ASSERT_EQ(moe_comm_create_local(&m), MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_comm_destroy(m), MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_comm_create_local(&n), MOE_STATUS_SUCCESS);
    int32_t rank = -1, world = -1;
    EXPECT_STATUS(moe_comm_rank(m, &rank, &world), MOE_STATUS_INVALID_HANDLE);
    EXPECT_STATUS(moe_comm_destroy(m), MOE_STATUS_INVALID_HANDLE);
    EXPECT_STATUS(moe_comm_rank(n, &rank, &world), MOE_STATUS_SUCCESS);
    ASSERT_EQ(moe_comm_destroy(n), MOE_STATUS_SUCCESS);
  }
}

// A group that holds a destroyed layer refuses to summarise it rather than read freed memory.
TEST(BadInput, AGroupWithADestroyedLayerIsRefused) {
  moe_layer_config_t c = make_config(8, 8, 4, 2);
  moe_layer_t a = nullptr;
  moe_group_t g = nullptr;
  ASSERT_EQ(moe_layer_create(&c, &a), MOE_STATUS_SUCCESS);
  ASSERT_EQ(moe_group_create(&g), MOE_STATUS_SUCCESS);
  ASSERT_EQ(moe_group_add(g, a), MOE_STATUS_SUCCESS);
  ASSERT_EQ(moe_layer_destroy(a), MOE_STATUS_SUCCESS);
  moe_group_metrics_t m = MOE_GROUP_METRICS_INIT;
  EXPECT_STATUS(moe_group_get_metrics(g, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, &m),
                MOE_STATUS_INVALID_HANDLE);
  EXPECT_EQ(moe_group_destroy(g), MOE_STATUS_SUCCESS);
}

TEST(BadInput, NullPointersEverywhere) {
  Problem<float> p(make_config(8, 8, 4, 2), 10, 1);
  moe_layer_t layer = p.layer.get();
  moe::Context ctx = p.forward();
  EXPECT_STATUS(moe_backend_count(nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_backend_name(0, nullptr), MOE_STATUS_NULL_POINTER);
  const char* name = nullptr;
  EXPECT_STATUS(moe_backend_name(99, &name), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(moe_layer_get_config(layer, nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_set_weights(layer, nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_forward(layer, nullptr, nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_backward(layer, ctx.get(), nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_backward(layer, nullptr, nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_get_step(layer, nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_get_selection_bias(layer, nullptr, 4), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_set_selection_bias(layer, nullptr, 4), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_ctx_losses(ctx.get(), nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_ctx_routing_stats(ctx.get(), nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_ctx_routing_shape(nullptr, nullptr, nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_ctx_routing(nullptr, nullptr, nullptr, nullptr), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_set_step(nullptr, 1), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_build_hash_table(nullptr, nullptr, 0, 1), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_get_selection_bias(nullptr, nullptr, 0), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_layer_set_selection_bias(nullptr, nullptr, 0), MOE_STATUS_NULL_POINTER);
  EXPECT_STATUS(moe_ctx_destroy(reinterpret_cast<moe_ctx_t>(layer)), MOE_STATUS_INVALID_HANDLE);
  // Tensor data NULL with a non-empty shape.
  moe_forward_args_t args = p.forward_args();
  args.x.data = nullptr;
  EXPECT_STATUS(moe_layer_forward(layer, &args, nullptr), MOE_STATUS_NULL_POINTER);
  // Optional outputs may be NULL.
  int64_t tokens = 0;
  EXPECT_STATUS(moe_ctx_routing_shape(ctx.get(), &tokens, nullptr), MOE_STATUS_SUCCESS);
  EXPECT_EQ(tokens, 10);
  EXPECT_STATUS(moe_ctx_routing(ctx.get(), nullptr, nullptr, nullptr), MOE_STATUS_SUCCESS);
  EXPECT_STATUS(moe_version(nullptr, nullptr, nullptr), MOE_STATUS_SUCCESS);
}

TEST(BadInput, ShapesAndDtypesAreChecked) {
  Problem<float> p(make_config(8, 8, 4, 2), 10, 1);
  moe_layer_t layer = p.layer.get();
  p.forward();
  const std::vector<float> reference_y = p.y;

  auto forward_with = [&](auto mutate) {
    moe_forward_args_t a = p.forward_args();
    mutate(a);
    return moe_layer_forward(layer, &a, nullptr);
  };
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) { a.x.shape[1] = 7; }),
                MOE_STATUS_SHAPE_MISMATCH);
  EXPECT_NE(std::string(moe_last_error()).find("args.x"), std::string::npos);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) { a.y.shape[0] = 9; }),
                MOE_STATUS_SHAPE_MISMATCH);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) { a.x.ndim = 3; }),
                MOE_STATUS_SHAPE_MISMATCH);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) { a.x.ndim = 99; }),
                MOE_STATUS_SHAPE_MISMATCH);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) { a.x.dtype = MOE_DTYPE_F64; }),
                MOE_STATUS_SHAPE_MISMATCH);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) {
                  const int junk = 77;  // no dtype at all: an invalid argument
                  std::memcpy(&a.x.dtype, &junk, sizeof junk);
                }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) {
                  const int junk = 77;
                  std::memcpy(&a.y.device, &junk, sizeof junk);
                }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) { a.x.device = MOE_DEVICE_CUDA; }),
                MOE_STATUS_UNSUPPORTED);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) { a.x.shape[0] = -1; }),
                MOE_STATUS_SHAPE_MISMATCH);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) { a.train = 7; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(forward_with([](moe_forward_args_t& a) { a.size = 3; }),
                MOE_STATUS_INVALID_ARGUMENT);

  // Weights of the wrong shape are rejected and the old binding stays.
  std::vector<float> small(3 * 8 * 8);
  moe_weights_t w = p.weights(p.router, p.w1, p.b1, p.w2, p.b2);
  w.w1 = moe::tensor(small.data(), {3, 8, 8});
  EXPECT_STATUS(moe_layer_set_weights(layer, &w), MOE_STATUS_SHAPE_MISMATCH);
  w = p.weights(p.router, p.w1, p.b1, p.w2, p.b2);
  w.router = moe::tensor(p.router.data(), {4, 8});
  EXPECT_STATUS(moe_layer_set_weights(layer, &w), MOE_STATUS_SHAPE_MISMATCH);
  w = p.weights(p.router, p.w1, p.b1, p.w2, p.b2);
  w.b1 = moe::tensor(small.data(), {4, 8});
  EXPECT_STATUS(moe_layer_set_weights(layer, &w), MOE_STATUS_INVALID_ARGUMENT);
  w = p.weights(p.router, p.w1, p.b1, p.w2, p.b2);
  w.router = moe_tensor_t MOE_TENSOR_EMPTY;
  EXPECT_STATUS(moe_layer_set_weights(layer, &w), MOE_STATUS_NULL_POINTER);

  // Backward with mismatched buffers.
  moe::Context ctx = p.forward();
  moe_backward_args_t b = p.backward_args();
  b.dy.shape[0] = 11;
  EXPECT_STATUS(moe_layer_backward(layer, ctx.get(), &b), MOE_STATUS_SHAPE_MISMATCH);
  b = p.backward_args();
  b.grads.w2.shape[2] = 1;
  EXPECT_STATUS(moe_layer_backward(layer, ctx.get(), &b), MOE_STATUS_SHAPE_MISMATCH);
  b = p.backward_args();
  b.flags = 0x80;
  EXPECT_STATUS(moe_layer_backward(layer, ctx.get(), &b), MOE_STATUS_INVALID_ARGUMENT);
  std::vector<double> bias(3);
  EXPECT_STATUS(moe_layer_get_selection_bias(layer, bias.data(), 3), MOE_STATUS_SHAPE_MISMATCH);
  EXPECT_STATUS(moe_layer_set_step(layer, -1), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(moe_layer_build_hash_table(layer, nullptr, 0, 10), MOE_STATUS_INVALID_STATE);

  // After all of that the layer is intact: same weights, same step, same result.
  EXPECT_EQ(p.layer.step(), 2);
  p.y.assign(p.y.size(), -1.f);
  moe::Context again = p.forward(false);
  EXPECT_EQ(p.y, reference_y);
  p.backward(again);
}

TEST(BadInput, StateErrors) {
  moe_layer_config_t c = make_config(8, 8, 4, 2);
  moe::Layer layer(c);
  std::vector<float> x(16), y(16);
  moe_forward_args_t a = MOE_FORWARD_ARGS_INIT;
  a.x = moe::tensor(x.data(), {2, 8});
  a.y = moe::tensor(y.data(), {2, 8});
  EXPECT_STATUS(moe_layer_forward(layer.get(), &a, nullptr), MOE_STATUS_INVALID_STATE);

  c.router = MOE_ROUTER_HASH;
  c.hash_mode = MOE_HASH_MIX;
  Problem<float> h(c, 4, 1);
  moe_forward_args_t ha = h.forward_args();
  EXPECT_STATUS(moe_layer_forward(h.layer.get(), &ha, nullptr), MOE_STATUS_NULL_POINTER);
  const int64_t ids[] = {0, 1, 99};
  EXPECT_STATUS(moe_layer_build_hash_table(h.layer.get(), ids, 3, 10), MOE_STATUS_INVALID_ARGUMENT);
  moe_weights_t w = h.weights(h.router, h.w1, h.b1, h.w2, h.b2);
  w.router = moe::tensor(h.router.data(), {8, 4});
  EXPECT_STATUS(moe_layer_set_weights(h.layer.get(), &w), MOE_STATUS_INVALID_ARGUMENT);
}

TEST(BadInput, StatusStringsAreNamed) {
  for (int s = 0; s <= MOE_STATUS_INTERNAL_ERROR; ++s)
    EXPECT_EQ(std::string(moe_status_string(static_cast<moe_status_t>(s))).rfind("MOE_STATUS_", 0),
              0u);
  EXPECT_STREQ(moe_status_string(static_cast<moe_status_t>(1000)), "MOE_STATUS_UNKNOWN");
}

// Numbers that no layer can use are refused at create with the range in the message:
// a temperature of 1e-310 made every output NaN, a capacity factor of 1e300 overflowed
// the capacity, and sizes whose products pass 2^48 elements overflowed 64-bit products.
TEST(BadInput, RangesAndSizesAreBoundedAtCreate) {
  moe_layer_t layer = nullptr;
  auto create = [&](auto mutate) {
    moe_layer_config_t c = make_config(8, 8, 4, 2);
    mutate(c);
    const moe_status_t status = moe_layer_create(&c, &layer);
    if (status == MOE_STATUS_SUCCESS) moe_layer_destroy(layer);
    layer = nullptr;
    return status;
  };
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.router_temp_init = 1e-310; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(moe_last_error()).find("1e-06"), std::string::npos) << moe_last_error();
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.router_temp_final = 1e7; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.router_temp_init = 1e-6; }),
                MOE_STATUS_SUCCESS);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.capacity_factor = 1e300; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.capacity_factor = 1e6; }), MOE_STATUS_SUCCESS);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.load_balance_alpha = 1e300; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.router_noise_std_init = 1e7; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.bias_update_rate = 1e300; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) { c.d_ff = INT64_MAX; }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_STATUS(create([](moe_layer_config_t& c) {
                  c.d_model = int64_t{1} << 20;
                  c.d_ff = int64_t{1} << 20;
                  c.num_experts = int64_t{1} << 10;  // w1 would hold 2^51 elements
                }),
                MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(moe_last_error()).find("w1"), std::string::npos) << moe_last_error();
}

// A shape whose element count overflows, or a pointer into the middle of an element, is
// refused with a status (a [2^62, d] input was a SIGSEGV, a misaligned one a misaligned
// load), and the layer's results afterwards are unchanged.
TEST(BadInput, HugeShapesAndMisalignedDataAreRefused) {
  Problem<float> p(make_config(8, 8, 4, 2), 10, 1);
  moe_layer_t layer = p.layer.get();
  p.forward(false);
  const std::vector<float> reference_y = p.y;
  for (int64_t tokens : {int64_t{1} << 62, INT64_MAX, (int64_t{1} << 40) + 1, int64_t{1} << 45}) {
    moe_forward_args_t a = p.forward_args();
    a.x.shape[0] = a.y.shape[0] = tokens;
    EXPECT_STATUS(moe_layer_forward(layer, &a, nullptr), MOE_STATUS_INVALID_ARGUMENT);
  }
  std::vector<float> shifted(p.x.size() + 1);
  std::memcpy(reinterpret_cast<char*>(shifted.data()) + 1, p.x.data(), p.x.size() * sizeof(float));
  moe_forward_args_t a = p.forward_args();
  a.x.data = reinterpret_cast<char*>(shifted.data()) + 1;
  EXPECT_STATUS(moe_layer_forward(layer, &a, nullptr), MOE_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(moe_last_error()).find("aligned"), std::string::npos);
  moe_weights_t w = p.weights(p.router, p.w1, p.b1, p.w2, p.b2);
  w.w2.data = reinterpret_cast<char*>(w.w2.data) + 2;
  EXPECT_STATUS(moe_layer_set_weights(layer, &w), MOE_STATUS_INVALID_ARGUMENT);
  p.y.assign(p.y.size(), -1.f);
  p.forward(false);
  EXPECT_EQ(p.y, reference_y);
}

// Two threads training one layer (documented unsupported) once lost updates silently
// (step 1999 after 2000 training calls). Each call now either runs whole or is refused
// with INVALID_STATE, changing nothing: the step counts exactly the calls that ran.
TEST(BadInput, TwoThreadsOnOneLayerAreRefusedNotRaced) {
  Problem<float> p(make_config(16, 32, 4, 2), 64, 1);
  moe_layer_t layer = p.layer.get();
  std::atomic<int> ran{0}, refused{0}, other{0};
  auto hammer = [&] {
    std::vector<float> y(p.y.size());
    for (int i = 0; i < 300; ++i) {
      moe_forward_args_t a = p.forward_args(true);
      a.y.data = y.data();
      moe_ctx_t ctx = nullptr;
      const moe_status_t status = moe_layer_forward(layer, &a, &ctx);
      if (status == MOE_STATUS_SUCCESS) {
        ++ran;
        moe_ctx_destroy(ctx);
      } else if (status == MOE_STATUS_INVALID_STATE &&
                 std::string(moe_last_error()).find("another thread") != std::string::npos) {
        ++refused;
      } else {
        ++other;
      }
    }
  };
  std::thread a(hammer), b(hammer);
  a.join();
  b.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(ran.load() + refused.load(), 600);
  std::printf("two threads: %d calls ran, %d refused\n", ran.load(), refused.load());
  EXPECT_EQ(p.layer.step(), ran.load()) << refused.load() << " calls were refused";
  // Free again once both are done.
  p.forward();
  EXPECT_EQ(p.layer.step(), ran.load() + 1);
}

// moe.hpp: const buffers and bfloat16 storage make tensors (both were link errors), five
// dimensions throw instead of writing past shape[4], and ctx.stats(n) with n below E is
// refused instead of overflowing the caller's arrays.
TEST(BadInput, CppWrapperTensorsAndStatsAreChecked) {
  Problem<float> p(make_config(8, 8, 8, 2), 10, 1);
  p.forward(false);
  const std::vector<float> reference_y = p.y;
  const std::vector<float> input = p.x;
  moe_forward_args_t a = p.forward_args(false);
  a.x = moe::tensor(input.data(), {p.T, p.d});
  EXPECT_EQ(a.x.dtype, MOE_DTYPE_F32);
  p.y.assign(p.y.size(), 0.f);
  moe::Context ctx = p.layer.forward(a);
  EXPECT_EQ(p.y, reference_y);

  std::vector<uint16_t> storage(6);
  const std::vector<uint16_t> frozen(6);
  EXPECT_EQ(moe::tensor(storage.data(), {2, 3}).dtype, MOE_DTYPE_BF16);
  EXPECT_EQ(moe::tensor(frozen.data(), {2, 3}).dtype, MOE_DTYPE_BF16);
  EXPECT_THROW(moe::tensor(storage.data(), {1, 1, 1, 1, 6}), moe::Exception);

  try {
    ctx.stats(2);
    ADD_FAILURE() << "stats(2) on an 8-expert layer was accepted";
  } catch (const moe::Exception& e) {
    EXPECT_EQ(e.status(), MOE_STATUS_SHAPE_MISMATCH);
  }
  EXPECT_EQ(ctx.stats(8).demand.size(), 8u);
}

// The gradients of moe_backward_args_t are a sized struct of their own: a size that
// cannot be a struct is refused, and a size that ends before the tensors means the
// caller asks for none (as moe_layer_set_weights reads its struct).
TEST(BadInput, BackwardReadsTheGradientsByTheirSize) {
  Problem<float> p(make_config(8, 8, 4, 2), 10, 1);
  moe::Context ctx = p.forward();
  for (uint32_t size : {0u, 3u}) {
    moe_backward_args_t b = p.backward_args();
    b.grads.size = size;
    EXPECT_STATUS(moe_layer_backward(p.layer.get(), ctx.get(), &b), MOE_STATUS_INVALID_ARGUMENT);
  }
  moe_backward_args_t b = p.backward_args();
  b.grads.size = 8;  // header only: no gradient tensors
  std::fill(p.g_w1.begin(), p.g_w1.end(), 5.f);
  EXPECT_STATUS(moe_layer_backward(p.layer.get(), ctx.get(), &b), MOE_STATUS_SUCCESS);
  EXPECT_EQ(p.g_w1, std::vector<float>(p.g_w1.size(), 5.f));
  p.backward(ctx);
  EXPECT_NE(p.g_w1, std::vector<float>(p.g_w1.size(), 5.f));
}

// The step stays in the range set_step takes: a training call at 2^62 is refused, so
// every step a layer reports can be set again.
TEST(BadInput, TheStepStaysWithinWhatSetStepTakes) {
  Problem<float> p(make_config(8, 8, 4, 2), 10, 1);
  const int64_t limit = int64_t{1} << 62;
  ASSERT_EQ(moe_layer_set_step(p.layer.get(), limit - 1), MOE_STATUS_SUCCESS);
  p.forward();
  EXPECT_EQ(p.layer.step(), limit);
  moe_forward_args_t a = p.forward_args(true);
  EXPECT_STATUS(moe_layer_forward(p.layer.get(), &a, nullptr), MOE_STATUS_INVALID_STATE);
  EXPECT_EQ(p.layer.step(), limit);
  EXPECT_STATUS(moe_layer_set_step(p.layer.get(), p.layer.step()), MOE_STATUS_SUCCESS);
  p.forward(false);  // evaluation does not count
}

}  // namespace
