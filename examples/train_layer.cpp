// Trains one MoE layer with Adam to imitate a hidden teacher MoE on clustered inputs
// (a task where expert specialisation pays) and prints the loss as it falls. It uses
// only the public C++ wrapper, moe.hpp, as an embedding framework would.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "moe/moe.hpp"

namespace {

struct Parameter {
  std::vector<float> value, grad, m, v;
  explicit Parameter(size_t n) : value(n), grad(n), m(n), v(n) {}
};

void adam_step(Parameter& p, int t, float lr) {
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  const float c1 = 1.f - std::pow(b1, static_cast<float>(t));
  const float c2 = 1.f - std::pow(b2, static_cast<float>(t));
  for (size_t i = 0; i < p.value.size(); ++i) {
    p.m[i] = b1 * p.m[i] + (1 - b1) * p.grad[i];
    p.v[i] = b2 * p.v[i] + (1 - b2) * p.grad[i] * p.grad[i];
    p.value[i] -= lr * (p.m[i] / c1) / (std::sqrt(p.v[i] / c2) + eps);
  }
}

moe_layer_config_t config(int64_t d, int64_t d_ff, int64_t E, int64_t k) {
  moe_layer_config_t c = MOE_LAYER_CONFIG_INIT;
  c.d_model = d;
  c.d_ff = d_ff;
  c.num_experts = E;
  c.top_k = k;
  c.activation = MOE_ACTIVATION_GELU;
  c.backend = "auto";
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 200;
  const int64_t T = 256, d = 32, d_ff = 64, E = 8, k = 2;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto randomize = [&](std::vector<float>& v, float scale) {
    for (auto& x : v) x = scale * normal(rng);
  };

  // The hidden teacher, and a student that starts from other random weights.
  moe::Layer teacher(config(d, d_ff, E, k));
  std::vector<float> t_router(d * E), t_w1(E * d * d_ff), t_w2(E * d_ff * d);
  randomize(t_router, 1.f);
  randomize(t_w1, 1.f / std::sqrt(float(d)));
  randomize(t_w2, 1.f / std::sqrt(float(d_ff)));
  moe_weights_t tw = MOE_WEIGHTS_INIT;
  tw.router = moe::tensor(t_router.data(), {d, E});
  tw.w1 = moe::tensor(t_w1.data(), {E, d, d_ff});
  tw.w2 = moe::tensor(t_w2.data(), {E, d_ff, d});
  teacher.set_weights(tw);

  moe_layer_config_t sc = config(d, d_ff, E, k);
  sc.load_balance_alpha = 0.01;
  sc.router_z_loss_coef = 1e-3;
  moe::Layer student(sc);
  Parameter router(d * E), w1(E * d * d_ff), w2(E * d_ff * d);
  randomize(router.value, 0.1f);
  randomize(w1.value, 1.f / std::sqrt(float(d)));
  randomize(w2.value, 1.f / std::sqrt(float(d_ff)));
  moe_weights_t sw = MOE_WEIGHTS_INIT;
  sw.router = moe::tensor(router.value.data(), {d, E});
  sw.w1 = moe::tensor(w1.value.data(), {E, d, d_ff});
  sw.w2 = moe::tensor(w2.value.data(), {E, d_ff, d});
  student.set_weights(sw);

  // Clustered inputs: 16 centres plus noise.
  std::vector<float> centres(16 * d);
  randomize(centres, 2.f);
  std::vector<float> x(T * d), target(T * d), y(T * d), dy(T * d);
  std::uniform_int_distribution<int> pick(0, 15);

  std::printf(
      "training one MoE layer (T=%lld d=%lld d_ff=%lld E=%lld k=%lld, backend %s) for %d steps\n",
      (long long)T, (long long)d, (long long)d_ff, (long long)E, (long long)k,
      student.config().backend, steps);
  const auto start = std::chrono::steady_clock::now();
  double first_loss = 0, loss = 0;
  for (int step = 1; step <= steps; ++step) {
    for (int64_t t = 0; t < T; ++t) {
      const int c = pick(rng);
      for (int64_t i = 0; i < d; ++i) x[t * d + i] = centres[c * d + i] + 0.3f * normal(rng);
    }
    moe_forward_args_t ta = MOE_FORWARD_ARGS_INIT;
    ta.x = moe::tensor(x.data(), {T, d});
    ta.y = moe::tensor(target.data(), {T, d});
    ta.train = 0;
    moe::check(moe_layer_forward(teacher.get(), &ta, nullptr));

    moe_forward_args_t fa = ta;
    fa.y = moe::tensor(y.data(), {T, d});
    fa.train = 1;
    moe::Context ctx = student.forward(fa);
    loss = 0;
    for (int64_t i = 0; i < T * d; ++i) {
      const float diff = y[i] - target[i];
      loss += diff * diff;
      dy[i] = 2.f * diff / static_cast<float>(T * d);
    }
    loss /= static_cast<double>(T * d);
    if (step == 1) first_loss = loss;

    moe_backward_args_t ba = MOE_BACKWARD_ARGS_INIT;
    ba.dy = moe::tensor(dy.data(), {T, d});
    ba.grads.router = moe::tensor(router.grad.data(), {d, E});
    ba.grads.w1 = moe::tensor(w1.grad.data(), {E, d, d_ff});
    ba.grads.w2 = moe::tensor(w2.grad.data(), {E, d_ff, d});
    student.backward(ctx, ba);
    for (Parameter* p : {&router, &w1, &w2}) adam_step(*p, step, 3e-3f);

    if (step == 1 || step % 20 == 0 || step == steps) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const auto stats = ctx.stats(E);
      int64_t max_count = 0, active = 0;
      for (int64_t c : stats.demand) {
        max_count = std::max(max_count, c);
        active += c > 0;
      }
      std::printf("iter %5d | loss %.5f | aux %.4f | %6.0f tok/s | r_max %.2f act %lld\n", step,
                  loss, ctx.losses().aux_loss, step * T / seconds,
                  double(max_count) / double(T * k), (long long)active);
    }
  }
  std::printf("loss %.5f -> %.5f (%.1fx lower)\n", first_loss, loss, first_loss / loss);
  return loss < first_loss ? 0 : 1;
}
