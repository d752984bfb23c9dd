/* A plain C99 program (built with -std=c99 -pedantic -Werror) that includes moe.h and
 * exercises the whole API: create, bind, forward, backward, routing, losses, stats,
 * errors and destroy. Exits non-zero on the first unexpected result. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"

static int failures = 0;

#define CHECK(cond)                                                                           \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, #cond, \
              moe_last_error());                                                              \
      ++failures;                                                                             \
    }                                                                                         \
  } while (0)

#define CHECK_OK(call) CHECK((call) == MOE_STATUS_SUCCESS)

static moe_tensor_t tensor2(float* data, int64_t a, int64_t b) {
  moe_tensor_t t = MOE_TENSOR_EMPTY;
  t.data = data;
  t.ndim = 2;
  t.shape[0] = a;
  t.shape[1] = b;
  return t;
}

static moe_tensor_t tensor3(float* data, int64_t a, int64_t b, int64_t c) {
  moe_tensor_t t = tensor2(data, a, b);
  t.ndim = 3;
  t.shape[2] = c;
  return t;
}

static void fill(float* v, size_t n, unsigned seed) {
  size_t i;
  for (i = 0; i < n; ++i) {
    seed = seed * 1103515245u + 12345u;
    v[i] = (float)((int)((seed >> 16) % 2001) - 1000) / 1000.0f;
  }
}

int main(void) {
  enum { T = 9, D = 6, FF = 5, E = 4, K = 2 };
  float x[T * D], y[T * D], dy[T * D], dx[T * D];
  float wr[D * E], w1[E * D * FF], w2[E * FF * D];
  float gwr[D * E], gw1[E * D * FF], gw2[E * FF * D];
  int32_t experts[T * K];
  float gates[T * K];
  uint8_t dropped[T * K];
  int64_t demand[E], served[E], tokens = 0, slots = 0, step = -1;
  int32_t major = 0, count = 0, i;
  const char* name = NULL;
  moe_layer_config_t config = MOE_LAYER_CONFIG_INIT;
  moe_weights_t weights = MOE_WEIGHTS_INIT;
  moe_forward_args_t fwd = MOE_FORWARD_ARGS_INIT;
  moe_backward_args_t bwd = MOE_BACKWARD_ARGS_INIT;
  moe_losses_t losses = MOE_LOSSES_INIT;
  moe_routing_stats_t stats = MOE_ROUTING_STATS_INIT;
  moe_layer_t layer = NULL;
  moe_ctx_t ctx = NULL;

  CHECK_OK(moe_version(&major, NULL, NULL));
  CHECK(major == MOE_VERSION_MAJOR);
  CHECK_OK(moe_backend_count(&count));
  CHECK(count >= 1);
  for (i = 0; i < count; ++i) CHECK_OK(moe_backend_name(i, &name));
  CHECK(strcmp(name, "cpu_ref") == 0);

  fill(x, sizeof x / sizeof *x, 1);
  fill(dy, sizeof dy / sizeof *dy, 2);
  fill(wr, sizeof wr / sizeof *wr, 3);
  fill(w1, sizeof w1 / sizeof *w1, 4);
  fill(w2, sizeof w2 / sizeof *w2, 5);

  config.d_model = D;
  config.d_ff = FF;
  config.num_experts = E;
  config.top_k = K;
  config.activation = MOE_ACTIVATION_SILU;
  config.capacity_factor = 1.0;
  config.load_balance_alpha = 0.01;
  config.backend = "cpu_ref";
  CHECK_OK(moe_layer_create(&config, &layer));

  /* Forward before weights is refused. */
  fwd.x = tensor2(x, T, D);
  fwd.y = tensor2(y, T, D);
  CHECK(moe_layer_forward(layer, &fwd, &ctx) == MOE_STATUS_INVALID_STATE);
  CHECK(strlen(moe_last_error()) > 0);

  weights.router = tensor2(wr, D, E);
  weights.w1 = tensor3(w1, E, D, FF);
  weights.w2 = tensor3(w2, E, FF, D);
  CHECK_OK(moe_layer_set_weights(layer, &weights));
  CHECK_OK(moe_layer_forward(layer, &fwd, &ctx));
  CHECK_OK(moe_layer_get_step(layer, &step));
  CHECK(step == 1);

  CHECK_OK(moe_ctx_routing_shape(ctx, &tokens, &slots));
  CHECK(tokens == T && slots == K);
  CHECK_OK(moe_ctx_routing(ctx, experts, gates, dropped));
  for (i = 0; i < T; ++i) {
    CHECK(experts[i * K] != experts[i * K + 1]);
    CHECK(fabsf(gates[i * K] + gates[i * K + 1] - 1.0f) < 1e-5f);
  }
  CHECK_OK(moe_ctx_losses(ctx, &losses));
  CHECK(losses.aux_loss >= 1.0 - 1e-9); /* Switch loss is >= 1 ... for these counts */
  stats.demand = demand;
  stats.served = served;
  stats.entries = E - 1; /* room for fewer than E: refused, nothing written */
  demand[E - 1] = -7;
  CHECK(moe_ctx_routing_stats(ctx, &stats) == MOE_STATUS_SHAPE_MISMATCH);
  CHECK(demand[E - 1] == -7);
  stats.entries = E;
  CHECK_OK(moe_ctx_routing_stats(ctx, &stats));
  CHECK(stats.tokens == T);
  CHECK(demand[0] + demand[1] + demand[2] + demand[3] == T * K);

  bwd.dy = tensor2(dy, T, D);
  bwd.dx = tensor2(dx, T, D);
  bwd.grads.router = tensor2(gwr, D, E);
  bwd.grads.w1 = tensor3(gw1, E, D, FF);
  bwd.grads.w2 = tensor3(gw2, E, FF, D);
  CHECK_OK(moe_layer_backward(layer, ctx, &bwd));
  for (i = 0; i < T * D; ++i) CHECK(isfinite(dx[i]));

  /* Bad input: a shape mismatch is reported, and the layer keeps working. */
  fwd.x.shape[1] = D + 1;
  CHECK(moe_layer_forward(layer, &fwd, NULL) == MOE_STATUS_SHAPE_MISMATCH);
  CHECK(strstr(moe_last_error(), "args.x") != NULL);
  fwd.x.shape[1] = D;
  CHECK_OK(moe_layer_forward(layer, &fwd, NULL));

  /* An input the caller holds as const goes in without a cast (-Wcast-qual clean). */
  {
    const float* input = x;
    const int64_t shape[2] = {T, D};
    float again[T * D];
    memcpy(again, y, sizeof again);
    fwd.x = moe_tensor_const(input, MOE_DTYPE_F32, 2, shape);
    fwd.train = 0;
    CHECK_OK(moe_layer_forward(layer, &fwd, NULL));
    CHECK(memcmp(again, y, sizeof again) == 0);
    fwd.x = moe_tensor_const(input, MOE_DTYPE_F32, 5, shape); /* rank 5: rank 0, refused */
    CHECK(moe_layer_forward(layer, &fwd, NULL) == MOE_STATUS_SHAPE_MISMATCH);
    fwd.x = tensor2(x, T, D);
  }

  /* Telemetry: the catalogue, one metric by name, a snapshot, verdicts, an export. */
  {
    int32_t metrics = 0;
    double load_cv = -1, scalars[256];
    int64_t count = 0;
    size_t length = 0;
    char text[65536];
    moe_telemetry_snapshot_t snapshot = MOE_TELEMETRY_SNAPSHOT_INIT;
    moe_verdicts_t verdicts = MOE_VERDICTS_INIT;
    CHECK_OK(moe_metric_count(&metrics));
    CHECK(metrics > 50 && metrics < 256);
    CHECK_OK(
        moe_layer_metric(layer, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, "load_cv", &load_cv, 1, &count));
    CHECK(count == 1 && load_cv >= 0);
    snapshot.scalars = scalars;
    CHECK_OK(moe_layer_telemetry(layer, &snapshot));
    CHECK(snapshot.num_experts == E && snapshot.step == 1); /* the second training call */
    CHECK_OK(moe_layer_verdicts(layer, MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, &verdicts));
    CHECK(strlen(verdicts.balance.label) > 0);
    CHECK_OK(moe_layer_telemetry_export(layer, MOE_EXPORT_PROMETHEUS, MOE_SPLIT_TRAIN,
                                        MOE_SCOPE_LAST, text, sizeof text, &length));
    CHECK(length > 0 && strstr(text, "moe_load_cv{") != NULL);
  }

  /* Expert parallelism on the local (one-rank) communicator: the same output. */
  {
    moe_comm_t comm = NULL;
    moe_comm_traffic_t traffic = MOE_COMM_TRAFFIC_INIT;
    moe_peer_traffic_t peer;
    int32_t mine[E];
    int64_t held = 0;
    float y_alone[T * D];
    memcpy(y_alone, y, sizeof y);
    CHECK_OK(moe_comm_create_local(&comm));
    CHECK_OK(moe_layer_set_comm(layer, comm, NULL, 0));
    CHECK_OK(moe_layer_local_experts(layer, mine, E, &held));
    CHECK(held == E && mine[0] == 0 && mine[E - 1] == E - 1);
    CHECK(moe_layer_forward(layer, &fwd, NULL) == MOE_STATUS_INVALID_STATE); /* unbound */
    CHECK_OK(moe_layer_set_weights(layer, &weights));
    CHECK_OK(moe_layer_set_step(layer, 1)); /* the step of the call being repeated */
    CHECK_OK(moe_layer_forward(layer, &fwd, NULL));
    CHECK(memcmp(y, y_alone, sizeof y) == 0);
    CHECK_OK(moe_layer_reduce_router_grad(layer, bwd.grads.router));
    CHECK_OK(moe_layer_comm_traffic(layer, &traffic, &peer, 1, 0));
    CHECK(traffic.world == 1 && traffic.exchanges > 0 && peer.tokens_sent > 0);
    CHECK(moe_comm_destroy(comm) == MOE_STATUS_INVALID_STATE); /* still attached */
    CHECK_OK(moe_layer_set_comm(layer, NULL, NULL, 0));
    CHECK_OK(moe_comm_destroy(comm));
  }

  CHECK_OK(moe_ctx_destroy(ctx));
  CHECK(moe_ctx_destroy(ctx) == MOE_STATUS_INVALID_HANDLE);
  CHECK_OK(moe_layer_destroy(layer));
  CHECK(moe_layer_destroy(layer) == MOE_STATUS_INVALID_HANDLE);
  CHECK_OK(moe_layer_destroy(NULL));

  if (failures) {
    fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  printf("C API test passed\n");
  return 0;
}
