/* A downstream C99 program: one MoE layer on the `auto` backend, forward and backward on
 * a small batch, checked against the `cpu_ref` backend (the library's reference) and
 * against plain finite-difference arithmetic on the output; then the routing telemetry
 * and its verdicts. Exits 0 when every check holds. It uses only <moe/moe.h>; build it
 * with find_package(moe CONFIG) (CMakeLists.txt here) or `pkg-config --cflags --libs moe`. */
#include <math.h>
#include <moe/moe.h>
#include <stdio.h>
#include <string.h>

enum { T = 64, D = 16, FF = 32, E = 4, K = 2 };

static float x[T * D], y_auto[T * D], y_ref[T * D], dy[T * D], dx[T * D];
static float router[D * E], w1[E * D * FF], w2[E * FF * D];
static float g_router[D * E], g_w1[E * D * FF], g_w2[E * FF * D];

static moe_tensor_t tensor(float* data, int ndim, int64_t a, int64_t b, int64_t c) {
  moe_tensor_t t = MOE_TENSOR_EMPTY;
  t.data = data;
  t.ndim = ndim;
  t.shape[0] = a;
  t.shape[1] = b;
  t.shape[2] = c;
  return t;
}

static void fill(float* v, int n, unsigned seed, float scale) {
  int i;
  for (i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    v[i] = scale * ((float)(seed >> 8) / 16777216.0f - 0.5f);
  }
}

static int ok(moe_status_t status, const char* what) {
  if (status == MOE_STATUS_SUCCESS) return 1;
  fprintf(stderr, "%s: %s: %s\n", what, moe_status_string(status), moe_last_error());
  return 0;
}

/* y = MoE(x) on the named backend; keeps the saved state in *ctx when ctx is not NULL. */
static int run(const char* backend, float* y, moe_layer_t* out_layer, moe_ctx_t* ctx) {
  moe_layer_config_t cfg = MOE_LAYER_CONFIG_INIT;
  moe_weights_t w = MOE_WEIGHTS_INIT;
  moe_forward_args_t fa = MOE_FORWARD_ARGS_INIT;
  moe_layer_t layer = NULL;
  cfg.d_model = D;
  cfg.d_ff = FF;
  cfg.num_experts = E;
  cfg.top_k = K;
  cfg.activation = MOE_ACTIVATION_GELU;
  cfg.backend = backend;
  cfg.load_balance_alpha = 0.01;
  if (!ok(moe_layer_create(&cfg, &layer), "moe_layer_create")) return 0;
  w.router = tensor(router, 2, D, E, 0);
  w.w1 = tensor(w1, 3, E, D, FF);
  w.w2 = tensor(w2, 3, E, FF, D);
  fa.x = tensor(x, 2, T, D, 0);
  fa.y = tensor(y, 2, T, D, 0);
  if (!ok(moe_layer_set_weights(layer, &w), "moe_layer_set_weights") ||
      !ok(moe_layer_forward(layer, &fa, ctx), "moe_layer_forward")) {
    moe_layer_destroy(layer);
    return 0;
  }
  *out_layer = layer;
  return 1;
}

int main(void) {
  moe_layer_t layer = NULL, reference = NULL;
  moe_ctx_t ctx = NULL;
  moe_backward_args_t ba = MOE_BACKWARD_ARGS_INIT;
  moe_layer_config_t effective = MOE_LAYER_CONFIG_INIT;
  moe_verdicts_t verdicts = MOE_VERDICTS_INIT;
  double max_diff = 0, load_cv = 0, dot = 0;
  int64_t n = 0;
  int i, failures = 0;

  fill(x, T * D, 1, 2.f);
  fill(router, D * E, 2, 1.f);
  fill(w1, E * D * FF, 3, 0.5f);
  fill(w2, E * FF * D, 4, 0.5f);
  fill(dy, T * D, 5, 1.f);
  if (!run("auto", y_auto, &layer, &ctx) || !run("cpu_ref", y_ref, &reference, NULL)) return 1;
  if (!ok(moe_layer_get_config(layer, &effective), "moe_layer_get_config")) return 1;
  for (i = 0; i < T * D; ++i) {
    const double diff = fabs((double)y_auto[i] - (double)y_ref[i]);
    if (!(diff <= max_diff)) max_diff = diff; /* NaN counts as the largest */
  }
  printf("backend %s: max |y - y_cpu_ref| = %.3g\n", effective.backend, max_diff);
  if (!(max_diff < 1e-4)) {
    fprintf(stderr, "the %s backend disagrees with cpu_ref\n", effective.backend);
    ++failures;
  }

  ba.dy = tensor(dy, 2, T, D, 0);
  ba.dx = tensor(dx, 2, T, D, 0);
  ba.grads.router = tensor(g_router, 2, D, E, 0);
  ba.grads.w1 = tensor(g_w1, 3, E, D, FF);
  ba.grads.w2 = tensor(g_w2, 3, E, FF, D);
  if (!ok(moe_layer_backward(layer, ctx, &ba), "moe_layer_backward")) return 1;
  /* y is linear in W2: <dy, y> = <g_w2, w2> exactly when the aux loss does not touch W2. */
  for (i = 0; i < T * D; ++i) dot += (double)dy[i] * (double)y_auto[i];
  {
    double via_grad = 0;
    for (i = 0; i < E * FF * D; ++i) via_grad += (double)g_w2[i] * (double)w2[i];
    printf("<dy, y> = %.6f, <dL/dW2, W2> = %.6f\n", dot, via_grad);
    if (!(fabs(dot - via_grad) <= 1e-3 * (1 + fabs(dot)))) {
      fprintf(stderr, "the W2 gradient is inconsistent with the forward\n");
      ++failures;
    }
  }

  if (!ok(moe_layer_metric(layer, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, "load_cv", &load_cv, 1, &n),
          "moe_layer_metric") ||
      !ok(moe_layer_verdicts(layer, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST, &verdicts),
          "moe_layer_verdicts"))
    return 1;
  printf("load_cv %.3f, balance verdict: %s\n", load_cv, verdicts.balance.label);
  if (!(load_cv >= 0) || strlen(verdicts.balance.label) == 0) ++failures;

  moe_ctx_destroy(ctx);
  moe_layer_destroy(layer);
  moe_layer_destroy(reference);
  printf(failures ? "FAILED\n" : "ok\n");
  return failures ? 1 : 0;
}
