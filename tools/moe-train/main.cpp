// moe-train: trains a residual stack of MoE layers on the CPU on a synthetic task where
// specialisation pays (regression to a hidden teacher MoE over clustered inputs), shows
// routing health live, streams every metric of every layer to DIR/metrics.jsonl, and
// ends with a health report, DIR/summary.json and DIR/dashboard.png.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "tools/common/backend_option.hpp"
#include "tools/common/cli.hpp"
#include "tools/common/verdict_json.hpp"
#include "tools/moe-train/dashboard.hpp"
#include "tools/moe-train/model.hpp"
#include "tools/moe-train/option_names.hpp"
#include "tools/moe-train/preset_options.hpp"

namespace {

using moe::train::kActivationNames;
using moe::train::kAuxLossScopeNames;
using moe::train::kCapacityOrderNames;
using moe::train::kRouterNames;
using moe::train::Options;
using moe::train::Stack;

// Sequences of 32 tokens; a token stays in its predecessor's cluster with probability 0.7,
// so neighbouring tokens share experts when the router learns the clusters.
struct Batch {
  std::vector<float> x;
  std::vector<int64_t> cluster;
};

constexpr int64_t kSeqLen = 32;

class Data {
 public:
  // The centres share a common offset, as real embeddings do: a router left to itself
  // can then send everything one way.
  Data(const Options& o, uint64_t seed) : o_(o), rng_(seed), centres_(o.clusters * o.d_model) {
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<float> offset(o.d_model);
    for (float& v : offset) v = normal(rng_);
    for (size_t i = 0; i < centres_.size(); ++i) centres_[i] = offset[i % o.d_model] + normal(rng_);
  }
  Batch next() {
    Batch b;
    b.x.resize(o_.batch_size * o_.d_model);
    b.cluster.resize(o_.batch_size);
    std::uniform_int_distribution<int64_t> pick(0, o_.clusters - 1);
    std::uniform_real_distribution<double> coin(0, 1);
    std::normal_distribution<float> noise(0.f, 0.2f);
    for (int64_t t = 0; t < o_.batch_size; ++t) {
      const bool stay = t % kSeqLen != 0 && coin(rng_) < 0.7;
      b.cluster[t] = stay ? b.cluster[t - 1] : pick(rng_);
      for (int64_t i = 0; i < o_.d_model; ++i)
        b.x[t * o_.d_model + i] = centres_[b.cluster[t] * o_.d_model + i] + noise(rng_);
    }
    return b;
  }

 private:
  Options o_;
  std::mt19937_64 rng_;
  std::vector<float> centres_;
};

double learning_rate(const Options& o, int64_t step) {
  if (step <= o.warmup_iters) return o.learning_rate * step / std::max<int64_t>(1, o.warmup_iters);
  const double progress =
      double(step - o.warmup_iters) / std::max<int64_t>(1, o.max_iters - o.warmup_iters);
  return o.learning_rate * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * std::min(1.0, progress))));
}

double mse(const std::vector<float>& y, const std::vector<float>& target, std::vector<float>* dy) {
  double sum = 0;
  const double n = static_cast<double>(y.size());
  if (dy) dy->resize(y.size());
  for (size_t i = 0; i < y.size(); ++i) {
    const double diff = y[i] - target[i];
    sum += diff * diff;
    if (dy) (*dy)[i] = static_cast<float>(2 * diff / n);
  }
  return sum / n;
}

double scalar(const moe::Layer& layer, moe_split_t split, moe_scope_t scope, const char* name) {
  return layer.metric(name, split, scope).at(0);
}

// The sizes are checked against this machine's memory before anything is allocated: a
// run that cannot fit is refused at once instead of failing minutes later.
std::string memory_problem(const Options& o) {
  const long double d = o.d_model, E = o.n_experts, k = o.top_k, T = o.batch_size;
  const long double F = moe::train::ff_width(o);
  // Per layer: the teacher's weights, the student's with gradients and Adam moments
  // (5 copies in all), the stack's inputs and outputs, and the layer's routed rows.
  const long double S = moe::train::shared_width(o);
  const long double per_layer = 5 * (d * E + E * d * F + E * o.d_ff * d + 3 * d * S + d) +
                                8 * T * d + 4 * T * k * (F + o.d_ff + d) + 4 * T * S;
  const long double bytes = 4.0L * o.layers * per_layer;
  const long double physical = static_cast<long double>(sysconf(_SC_PHYS_PAGES)) *
                               static_cast<long double>(sysconf(_SC_PAGE_SIZE));
  if (physical <= 0 || bytes <= 0.8L * physical) return "";
  char text[200];
  std::snprintf(text, sizeof text,
                "these sizes need about %.1f GiB; this machine has %.1f GiB (reduce --layers, "
                "--d_model, --d_ff, --n_experts or --batch_size)",
                static_cast<double>(bytes / 1073741824.0L),
                static_cast<double>(physical / 1073741824.0L));
  return text;
}

// A figure of the health report: "n/a" where there was no data.
std::string figure(double v) {
  if (!std::isfinite(v)) return "n/a";
  char text[32];
  std::snprintf(text, sizeof text, "%.3g", v);
  return text;
}

std::string figure(const nlohmann::json& v) {
  return v.is_number() ? figure(v.get<double>()) : "n/a";
}

nlohmann::json verdicts_json(const moe_verdicts_t& v) {
  return {{"balance", moe::tools::verdict_json(v.balance)},
          {"specialization", moe::tools::verdict_json(v.specialization)},
          {"capacity", moe::tools::verdict_json(v.capacity)}};
}

// A flag whose values are the names of one of the library's enums.
template <size_t N>
CLI::IsMember member_of(const char* const (&names)[N]) {
  return CLI::IsMember(std::vector<std::string>(std::begin(names), std::end(names)));
}

// Every option with its check: a bad value is a usage error (exit 2), never replaced.
void add_options(CLI::App& app, Options& o, bool& dropless, bool& json, bool& no_dashboard) {
  using moe::tools::finite_at_least;
  using moe::tools::integer_in;
  // Bounds a CPU training run can mean; the memory the sizes need is checked after parsing.
  const auto steps = integer_in(1, 1e9);
  const auto schedule = integer_in(0, 1e12);
  app.set_config("--config", "", "read options from a TOML/INI file (key = value)");
  app.add_option("--layers", o.layers, "MoE layers in the residual stack")
      ->capture_default_str()
      ->check(integer_in(1, 1024));
  app.add_option("--d_model", o.d_model, "model width")
      ->capture_default_str()
      ->check(integer_in(1, 1 << 20));
  app.add_option("--d_ff", o.d_ff, "expert hidden width")
      ->capture_default_str()
      ->check(integer_in(1, 1 << 20));
  app.add_option("--n_experts", o.n_experts, "experts per layer")
      ->capture_default_str()
      ->check(integer_in(1, 1024));
  app.add_option("--top_k", o.top_k, "experts per token (at most n_experts)")
      ->capture_default_str()
      ->check(integer_in(1, 1024));
  app.add_option("--router", o.router, "softmax | sigmoid | hash | expert_choice")
      ->capture_default_str()
      ->check(member_of(kRouterNames));
  app.add_option("--hash_mode", o.hash_mode,
                 "the hash router's: auto | mix | content | balanced (docs/routing.md)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "mix", "content", "balanced"}));
  app.add_option("--n_group", o.n_group,
                 "expert groups for group-limited routing (0 = none; divides n_experts)")
      ->capture_default_str()
      ->check(integer_in(0, 1 << 20));
  app.add_option("--topk_group", o.topk_group, "groups each token keeps (0 = all)")
      ->capture_default_str()
      ->check(integer_in(0, 1 << 20));
  app.add_option("--routed_scaling_factor", o.routed_scaling_factor, "gates times this")
      ->capture_default_str()
      ->check(finite_at_least(0, false));
  app.add_option("--min_capacity", o.min_capacity,
                 "DeepSpeed's floor under the capacity (0 = none; needs --capacity_factor)")
      ->capture_default_str()
      ->check(integer_in(0, 1099511627776.0L));
  app.add_option("--capacity_order", o.capacity_order,
                 "token | slot_major (all first choices before any second) | "
                 "batch_prioritized (by top-1 probability) | random (seeded)")
      ->capture_default_str()
      ->check(member_of(kCapacityOrderNames));
  app.add_option("--renormalize", o.renormalize,
                 "renormalise the k gates to sum to 1: auto (k > 1) | on | off")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "on", "off"}));
  app.add_option("--num_shared_experts", o.num_shared_experts,
                 "shared experts every token goes through (DeepSeek, Qwen2-MoE)")
      ->capture_default_str()
      ->check(integer_in(0, 1024));
  app.add_option("--shared_d_ff", o.shared_d_ff, "each shared expert's width (0 = d_ff)")
      ->capture_default_str()
      ->check(integer_in(0, 1 << 20));
  app.add_flag("--shared_expert_gate", o.shared_expert_gate,
               "a per-token sigmoid gate on the shared output (Qwen2-MoE)");
  app.add_option("--aux_loss_scope", o.aux_loss_scope,
                 "batch | sequence (per sequence of 32 tokens, DeepSeek-V3) | global (over "
                 "micro-batches until the optimizer step, Qwen3)")
      ->capture_default_str()
      ->check(member_of(kAuxLossScopeNames));
  app.add_flag("--aux_loss_unbiased_topk", o.aux_loss_unbiased_topk,
               "the aux loss counts each token's top-k without the selection bias");
  app.add_option("--preset", o.preset,
                 "a model family's routing conventions: mixtral | qwen2_moe | qwen3_moe | "
                 "deepseek_v3 | switch (flags given win; docs/routing.md)")
      ->check(CLI::IsMember({"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "switch"}));
  app.add_flag("--renormalize_after_drops", o.renormalize_after_drops,
               "renormalise the gates over the copies kept after drops (DeepSpeed)");
  app.add_flag("--bias_update_from_served", o.bias_update_from_served,
               "the bias update counts served copies, min(demand, C), not demand");
  app.add_option("--activation", o.activation, "relu | gelu | gelu_tanh | silu | swiglu | geglu")
      ->capture_default_str()
      ->check(member_of(kActivationNames));
  CLI::Option* dropless_flag = app.add_flag(
      "--dropless", dropless, "no capacity limit (the default unless --capacity_factor)");
  app.add_option("--capacity_factor", o.capacity_factor, "C = ceil(f T k / E); 0 = dropless")
      ->capture_default_str()
      ->check(finite_at_least(0))
      ->excludes(dropless_flag);
  app.add_option("--load_balance_alpha", o.load_balance_alpha, "Switch aux-loss weight")
      ->capture_default_str()
      ->check(finite_at_least(0));
  app.add_option("--router_z_loss_coef", o.router_z_loss_coef, "z-loss weight")
      ->capture_default_str()
      ->check(finite_at_least(0));
  app.add_option("--router_temp_init", o.router_temp_init, "router temperature at step 0")
      ->capture_default_str()
      ->check(finite_at_least(0, false));
  app.add_option("--router_temp_final", o.router_temp_final, "router temperature after the anneal")
      ->capture_default_str()
      ->check(finite_at_least(0, false));
  app.add_option("--router_temp_anneal_iters", o.router_temp_anneal_iters,
                 "anneal length (0 = constant)")
      ->capture_default_str()
      ->check(schedule);
  app.add_option("--router_noise_std_init", o.router_noise_std_init,
                 "selection noise std at step 0")
      ->capture_default_str()
      ->check(finite_at_least(0));
  app.add_option("--router_noise_decay_iters", o.router_noise_decay_iters,
                 "noise decay length (0 = constant)")
      ->capture_default_str()
      ->check(schedule);
  app.add_option("--router_noise_type", o.router_noise_type, "gaussian | gumbel")
      ->capture_default_str()
      ->check(CLI::IsMember({"gaussian", "gumbel"}));
  app.add_option("--bias_update_rate", o.bias_update_rate, "aux-loss-free balancing rate (0 = off)")
      ->capture_default_str()
      ->check(finite_at_least(0));
  app.add_option("--seed", o.seed, "seed of data, weights and noise (>= 0)")
      ->capture_default_str()
      ->check(integer_in(0, 18446744073709551615.0L));
  app.add_option("--max_iters", o.max_iters, "training steps")->capture_default_str()->check(steps);
  app.add_option("--eval_interval", o.eval_interval, "steps between evaluations")
      ->capture_default_str()
      ->check(steps);
  app.add_option("--log_interval", o.log_interval, "steps between log lines and JSONL records")
      ->capture_default_str()
      ->check(steps);
  app.add_option("--batch_size", o.batch_size, "tokens per step")
      ->capture_default_str()
      ->check(integer_in(1, 1 << 24));
  app.add_option("--learning_rate", o.learning_rate, "Adam learning rate (warm-up, then cosine)")
      ->capture_default_str()
      ->check(finite_at_least(0, false));
  app.add_option("--backend", o.backend, "compute backend: auto or one of moe_backend_name()")
      ->capture_default_str()
      ->check(moe::tools::backend_validator());
  app.add_option("--threads", o.threads, "CPU threads for backends that use them (cpu_ref: 1)")
      ->capture_default_str()
      ->check(integer_in(0, 4096));
  app.add_option("--out", o.out, "output folder")->capture_default_str();
  app.add_flag("--json", json,
               "print the summary as JSON on stdout instead of the text health report");
  app.add_flag("--no-dashboard", no_dashboard, "do not draw dashboard.png");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool dropless = false, json = false, no_dashboard = false;
  CLI::App app{"moe-train: train a stack of MoE layers on the CPU and watch its routing health",
               "moe-train"};
  moe::tools::add_version_flag(app, "moe-train");
  add_options(app, o, dropless, json, no_dashboard);
  if (auto exit_code = moe::tools::parse_command_line(app, argc, argv)) return *exit_code;
  moe::train::apply_preset(app, o);
  if (dropless) o.capacity_factor = 0.0;
  // Dropless has no capacity to fill in order: a preset's order gives way to --dropless.
  if (o.capacity_factor == 0.0 && app.count("--capacity_order") == 0) o.capacity_order = "token";
  if (o.aux_loss_scope == "sequence" && o.batch_size % kSeqLen != 0)
    return moe::tools::usage_error("moe-train",
                                   "--aux_loss_scope sequence averages over sequences of " +
                                       std::to_string(kSeqLen) + " tokens: --batch_size (" +
                                       std::to_string(o.batch_size) + ") must be a multiple of " +
                                       std::to_string(kSeqLen));
  if (o.top_k > o.n_experts)
    return moe::tools::usage_error("moe-train", "--top_k (" + std::to_string(o.top_k) +
                                                    ") must be at most --n_experts (" +
                                                    std::to_string(o.n_experts) + ")");
  if (const std::string problem = memory_problem(o); !problem.empty())
    return moe::tools::usage_error("moe-train", problem);
  // The library checks the config as a whole (combinations such as --n_group with
  // --topk_group, which no single flag's check sees): its refusal of a value is a usage
  // error too, before anything runs or is written.
  try {
    moe::Layer probe(layer_config(o, false));
  } catch (const moe::Exception& e) {
    if (e.status() == MOE_STATUS_INVALID_ARGUMENT)
      return moe::tools::usage_error("moe-train", e.what());
  }
  try {
    std::filesystem::create_directories(o.out);
    std::ofstream jsonl(o.out + "/metrics.jsonl");
    if (!jsonl) throw std::runtime_error("cannot write " + o.out + "/metrics.jsonl");
    Stack teacher(o, true, o.seed + 1000), student(o, false, o.seed);
    // Evaluation draws the same clusters as training, from a stream one batch ahead.
    Data train_data(o, o.seed + 7), eval_stream(o, o.seed + 7);
    eval_stream.next();
    moe::Group group;
    for (auto& b : student.blocks()) group.add(b.layer);

    const bool live = isatty(STDERR_FILENO);
    std::fprintf(
        stderr,
        "moe-train: %lld layers, d=%lld d_ff=%lld E=%lld k=%lld, router %s, %s, backend %s, "
        "%lld steps of %lld tokens -> %s\n",
        (long long)o.layers, (long long)o.d_model, (long long)o.d_ff, (long long)o.n_experts,
        (long long)o.top_k, o.router.c_str(),
        o.capacity_factor > 0 ? ("capacity factor " + std::to_string(o.capacity_factor)).c_str()
                              : "dropless",
        o.backend.c_str(), (long long)o.max_iters, (long long)o.batch_size, o.out.c_str());
    const auto start = std::chrono::steady_clock::now();
    double first_loss = NAN, loss = NAN, val_loss = NAN;
    const int64_t final_window_start = std::max<int64_t>(1, o.max_iters - o.max_iters / 5);
    std::vector<float> dy;
    for (int64_t step = 1; step <= o.max_iters; ++step) {
      // The health report judges the last 20% of training as one window.
      if (step == final_window_start)
        for (auto& b : student.blocks()) b.layer.reset_telemetry();
      const Batch batch = train_data.next();
      const std::vector<float> target = teacher.forward(batch.x, batch.cluster, false, 0);
      const std::vector<float> y = student.forward(batch.x, batch.cluster, true, kSeqLen);
      const double fit = mse(y, target, &dy);
      double aux = 0;
      for (auto& b : student.blocks()) {
        const moe_losses_t l = b.ctx.losses();
        aux += l.aux_loss_scaled + l.z_loss_scaled;
      }
      loss = fit + aux;
      if (step == 1) first_loss = loss;  // the same measure as the final loss: fit + aux
      student.zero_grads();
      student.backward(dy);
      const double lr = learning_rate(o, step);
      student.adam_step(lr, step);

      const bool log_now = step % o.log_interval == 0 || step == 1 || step == o.max_iters;
      const bool eval_now = step % o.eval_interval == 0 || step == o.max_iters;
      if (eval_now) {
        const Batch eb = eval_stream.next();
        val_loss = mse(student.forward(eb.x, eb.cluster, false, kSeqLen),
                       teacher.forward(eb.x, eb.cluster, false, 0), nullptr);
        jsonl << nlohmann::json{{"step", step}, {"kind", "eval"}, {"val_loss", val_loss}}.dump()
              << "\n";
        for (auto& b : student.blocks())
          jsonl << b.layer.export_text(MOE_EXPORT_JSONL, MOE_SPLIT_EVAL, MOE_SCOPE_LAST);
      }
      if (log_now) {
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double tok_s = step * o.batch_size / seconds;
        const moe_group_metrics_t g = group.metrics(MOE_SPLIT_TRAIN, MOE_SCOPE_LAST);
        jsonl << nlohmann::json{{"step", step},
                                {"kind", "train"},
                                {"loss", loss},
                                {"mse", fit},
                                {"aux", aux},
                                {"lr", lr},
                                {"tok_s", tok_s},
                                {"max_frac_max", g.max_frac_max},
                                {"active_min", g.active_min},
                                {"collapsed", g.collapsed}}
                     .dump()
              << "\n";
        for (auto& b : student.blocks())
          jsonl << b.layer.export_text(MOE_EXPORT_JSONL, MOE_SPLIT_TRAIN, MOE_SCOPE_LAST);
        char line[256];
        std::snprintf(
            line, sizeof line,
            "iter %6lld | loss %.4f | lr %.3e | %6.0f tok/s | r_max %.2f act_min %.0f col %d",
            (long long)step, loss, lr, tok_s, g.max_frac_max, g.active_min, g.collapsed);
        if (live) {
          const int width = 24, filled = static_cast<int>(width * step / o.max_iters);
          std::fprintf(stderr, "\r[%s%s] %s", std::string(filled, '#').c_str(),
                       std::string(width - filled, '.').c_str(), line);
          if (step == o.max_iters) std::fprintf(stderr, "\n");
        } else {
          std::fprintf(stderr, "%s\n", line);
        }
      }
      if (eval_now) {
        if (live) std::fprintf(stderr, "\n");
        std::fprintf(stderr, "eval | step %lld | val_loss %.4f\n", (long long)step, val_loss);
      }
    }
    jsonl.flush();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    // Health report: verdicts on each layer's training figures pooled over the last 20%
    // of the steps (the telemetry window restarted there). Figures without data (NaN)
    // print as n/a and are null in summary.json.
    nlohmann::json layers = nlohmann::json::array();
    FILE* report = json ? stderr : stdout;
    std::fprintf(report,
                 "\nhealth report after %lld steps (%.1f s): loss %.4f -> %.4f, val_loss %.4f\n"
                 "(routing pooled over steps %lld-%lld)\n",
                 (long long)o.max_iters, seconds, first_loss, loss, val_loss,
                 (long long)final_window_start, (long long)o.max_iters);
    for (auto& b : student.blocks()) {
      const moe_verdicts_t v = b.layer.verdicts(MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW);
      nlohmann::json metrics;
      for (const char* name :
           {"max_frac", "load_cv", "load_entropy_norm", "kl_to_uniform", "gini", "min_max_ratio",
            "dead_experts", "drop_rate", "router_entropy_norm_mean", "top1_p_mean", "aux_loss",
            "seq_consistency"})
        metrics[name] =
            moe::tools::finite_or_null(scalar(b.layer, MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW, name));
      const std::string name = "layer" + std::to_string(layers.size());
      std::fprintf(report, "  %s: balance %s (%s %s vs %s)", name.c_str(), v.balance.label,
                   v.balance.metric, figure(v.balance.value).c_str(),
                   figure(v.balance.threshold).c_str());
      std::fprintf(report, ", specialization %s", v.specialization.label);
      if (*v.specialization.metric)
        std::fprintf(report, " (%s %s)", v.specialization.metric,
                     figure(v.specialization.value).c_str());
      std::fprintf(report, ", capacity %s\n", v.capacity.label);
      for (const moe_verdict_t* x : {&v.balance, &v.specialization, &v.capacity})
        if (*x->hint) std::fprintf(report, "    hint: %s\n", x->hint);
      std::fprintf(report, "   ");
      for (const auto& [label, key] : {std::pair{"max_frac", "max_frac"},
                                       {"load_cv", "load_cv"},
                                       {"gini", "gini"},
                                       {"min/max", "min_max_ratio"},
                                       {"entropy_norm", "load_entropy_norm"},
                                       {"top1_p", "top1_p_mean"}})
        std::fprintf(report, " %s %s", label, figure(metrics[key]).c_str());
      std::fprintf(report, "\n");
      layers.push_back({{"name", name}, {"final_window", metrics}, {"verdicts", verdicts_json(v)}});
    }
    const moe_group_metrics_t g = group.metrics(MOE_SPLIT_TRAIN, MOE_SCOPE_WINDOW);
    std::fprintf(report, "  model: max_frac_mean %s max_frac_max %s active_min %s collapsed %d\n",
                 figure(g.max_frac_mean).c_str(), figure(g.max_frac_max).c_str(),
                 figure(g.active_min).c_str(), g.collapsed);

    using moe::tools::finite_or_null;
    nlohmann::json summary{{"steps", o.max_iters},
                           {"seconds", seconds},
                           {"initial_loss", finite_or_null(first_loss)},
                           {"final_loss", finite_or_null(loss)},
                           {"final_val_loss", finite_or_null(val_loss)},
                           {"final_window_steps", {final_window_start, o.max_iters}},
                           {"layers", layers},
                           {"model",
                            {{"max_frac_mean", finite_or_null(g.max_frac_mean)},
                             {"max_frac_max", finite_or_null(g.max_frac_max)},
                             {"active_min", finite_or_null(g.active_min)},
                             {"collapsed", g.collapsed}}},
                           {"options",
                            {{"layers", o.layers},
                             {"d_model", o.d_model},
                             {"d_ff", o.d_ff},
                             {"n_experts", o.n_experts},
                             {"top_k", o.top_k},
                             {"router", o.router},
                             {"hash_mode", o.hash_mode},
                             {"n_group", o.n_group},
                             {"topk_group", o.topk_group},
                             {"routed_scaling_factor", o.routed_scaling_factor},
                             {"min_capacity", o.min_capacity},
                             {"capacity_order", o.capacity_order},
                             {"renormalize_after_drops", o.renormalize_after_drops},
                             {"bias_update_from_served", o.bias_update_from_served},
                             {"renormalize", o.renormalize},
                             {"num_shared_experts", o.num_shared_experts},
                             {"shared_d_ff", o.shared_d_ff},
                             {"shared_expert_gate", o.shared_expert_gate},
                             {"aux_loss_scope", o.aux_loss_scope},
                             {"aux_loss_unbiased_topk", o.aux_loss_unbiased_topk},
                             {"preset", o.preset},
                             {"activation", o.activation},
                             {"capacity_factor", o.capacity_factor},
                             {"load_balance_alpha", o.load_balance_alpha},
                             {"router_z_loss_coef", o.router_z_loss_coef},
                             {"router_temp_init", o.router_temp_init},
                             {"router_temp_final", o.router_temp_final},
                             {"router_noise_std_init", o.router_noise_std_init},
                             {"router_noise_type", o.router_noise_type},
                             {"bias_update_rate", o.bias_update_rate},
                             {"seed", o.seed},
                             {"batch_size", o.batch_size},
                             {"learning_rate", o.learning_rate},
                             {"backend", o.backend},
                             {"backend_resolved", student.blocks().front().layer.config().backend},
                             {"threads", o.threads},
                             {"max_iters", o.max_iters},
                             {"log_interval", o.log_interval},
                             {"eval_interval", o.eval_interval}}}};
    const std::string summary_path = o.out + "/summary.json";
    if (!(std::ofstream(summary_path) << summary.dump(2) << "\n"))
      throw std::runtime_error("cannot write " + summary_path);

    std::string wrote = o.out + "/metrics.jsonl, " + summary_path;
    int status = moe::tools::kExitSuccess;
    if (!no_dashboard) {
      const std::string png = o.out + "/dashboard.png";
      const std::string problem = moe::train::draw_dashboard(o.out + "/metrics.jsonl", png);
      if (problem.empty()) {
        wrote += ", " + png;
      } else {
        std::fprintf(stderr, "moe-train: the dashboard was not drawn: %s\n", problem.c_str());
        status = moe::tools::kExitFailure;
      }
    }
    std::fprintf(report, "wrote %s\n", wrote.c_str());
    if (json) std::cout << summary.dump(2) << "\n";
    return moe::tools::finish("moe-train", status);
  } catch (const std::exception& e) {
    std::cerr << "moe-train: " << e.what() << "\n";
    return moe::tools::kExitFailure;
  }
}
