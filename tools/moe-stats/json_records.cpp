#include "tools/moe-stats/json_records.hpp"

#include <limits>
#include <nlohmann/json.hpp>

#include "core/config.hpp"
#include "tools/moe-stats/count_text.hpp"

namespace moe::stats {
namespace {

// One count; `what` names it in the error ("'counts' holds a value that", ...).
int64_t json_count(const nlohmann::json& v, const std::string& what) {
  if (!v.is_number()) throw LineError(what + " is not a number");
  const double d = v.get<double>();
  if (!is_count(d)) throw LineError(what + " is not a count");
  return static_cast<int64_t>(d);
}

std::vector<int64_t> json_counts(const nlohmann::json& v, const char* key) {
  if (!v.is_array() || v.empty())
    throw LineError(std::string("'") + key + "' is not a non-empty array");
  if (v.size() > static_cast<size_t>(kMaxExperts))
    throw LineError(std::string("'") + key + "' holds more than 2^20 counts (docs/limits.md)");
  std::vector<int64_t> out;
  const std::string element = std::string("'") + key + "' holds a value that";
  for (const auto& x : v) out.push_back(json_count(x, element));
  return out;
}

std::string json_label(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  throw LineError("'layer' is neither a string nor an integer");
}

// Served counts beside the demand: as long, and never above it.
std::vector<int64_t> served_counts(const nlohmann::json& v, const char* key,
                                   const std::vector<int64_t>& demand) {
  std::vector<int64_t> served = json_counts(v, key);
  if (served.size() != demand.size())
    throw LineError(std::string("'") + key + "' and the counts differ in length");
  for (size_t e = 0; e < served.size(); ++e)
    if (served[e] > demand[e])
      throw LineError("expert " + std::to_string(e) + " served " + std::to_string(served[e]) +
                      " copies of a demand of " + std::to_string(demand[e]) +
                      " (served can never exceed demand)");
  return served;
}

// Megatron's tpe: one list per microbatch (and recompute) of the step, each one count
// per expert of the writing rank, summed here. Decoder layers are "L", multi-token
// prediction layers "mtp<idx>.L". The rank comes from the file name (rank<R>.jsonl).
void megatron_tokens_per_expert(const nlohmann::json& j, CountsRecord& r) {
  const nlohmann::json& tpe = j["tpe"];
  if (!tpe.is_array() || tpe.empty()) throw LineError("'tpe' is not a non-empty array");
  for (const nlohmann::json& microbatch : tpe) {
    if (!microbatch.is_array())
      throw LineError("'tpe' is not a list of microbatches, each a list of counts");
    const std::vector<int64_t> counts = json_counts(microbatch, "tpe");
    if (r.counts.empty()) r.counts.assign(counts.size(), 0);
    if (counts.size() != r.counts.size())
      throw LineError("the microbatches of 'tpe' differ in length");
    for (size_t e = 0; e < counts.size(); ++e) r.counts[e] = checked_add(r.counts[e], counts[e]);
  }
  // Decoder layers keep their number; multi-token prediction layers (block "mtp", with
  // mtp_idx) and any other block are named apart, so that they are never summed in.
  if (j.contains("mtp_idx")) {
    r.layer = "mtp" + json_label(j["mtp_idx"]) + "." + r.layer;
  } else if (j.contains("block") && j["block"] != "decoder") {
    r.layer = json_label(j["block"]) + "." + r.layer;
  }
  r.local = true;
}

// vLLM's step metrics: sparse [logical expert, count] pairs of one engine's step.
void vllm_step_metrics(const nlohmann::json& j, CountsRecord& r) {
  const int64_t experts = json_count(j["num_logical_experts"], "'num_logical_experts'");
  if (experts < 1 || experts > kMaxExperts)
    throw LineError("'num_logical_experts' is outside [1, 2^20] (docs/limits.md)");
  if (!j.contains("counts") || !j["counts"].is_array())
    throw LineError("'counts' is not an array of [expert, count] pairs");
  r.counts.assign(static_cast<size_t>(experts), 0);
  for (const nlohmann::json& pair : j["counts"]) {
    if (!pair.is_array() || pair.size() != 2)
      throw LineError("'counts' holds something other than an [expert, count] pair");
    const int64_t e = json_count(pair[0], "an expert id");
    if (e >= experts)
      throw LineError("expert " + std::to_string(e) + " is past num_logical_experts");
    r.counts[e] = checked_add(r.counts[e], json_count(pair[1], "a count"));
  }
  if (j.contains("engine"))
    r.rank = static_cast<int>(json_count(j["engine"], "'engine'") % (1 << 30));
}

}  // namespace

void parse_json(const std::string& line, int64_t step, std::vector<CountsRecord>& out) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    // (A parse error, or a number past what a double holds.) nlohmann's message without
    // its id prefix and without the text it last read (which
    // may hold the very bytes that are not UTF-8).
    std::string what = e.what();
    if (const size_t id_end = what.find("] "); id_end != std::string::npos)
      what.erase(0, id_end + 2);
    if (const size_t echo = what.find("; last read"); echo != std::string::npos) what.erase(echo);
    throw LineError("not valid JSON: " + what);
  }
  if (!j.is_object()) throw LineError("not a JSON object");
  CountsRecord r;
  r.step = step;
  for (const char* key : {"step", "iter"}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_number_integer())
      throw LineError(std::string("'") + key + "' is not an integer");
    r.step = j[key].get<int64_t>();
  }
  r.layer = j.contains("layer") ? json_label(j["layer"]) : "0";
  if (j.contains("split") && j["split"].is_string()) r.split = j["split"].get<std::string>();
  if (j.contains("tpe")) {
    megatron_tokens_per_expert(j, r);
  } else if (j.contains("num_logical_experts")) {
    vllm_step_metrics(j, r);
  } else if (j.contains("counts")) {
    r.counts = json_counts(j["counts"], "counts");
    // served, as moe-stats --records writes it ([] when the log had none)
    if (j.contains("served") && !(j["served"].is_array() && j["served"].empty()))
      r.served = served_counts(j["served"], "served", r.counts);
  } else if (j.contains("expert_counts")) {
    r.counts = json_counts(j["expert_counts"], "expert_counts");
    if (j.contains("expert_served"))
      r.served = served_counts(j["expert_served"], "expert_served", r.counts);
    // Under expert parallelism the export says what each rank's experts computed.
    if (j.contains("rank_load")) r.rank_load = json_counts(j["rank_load"], "rank_load");
    if (j.contains("tokens") && j["tokens"].is_number() && j["tokens"].get<double>() == 0)
      return;  // a record of a window with nothing in it
  } else if (j.contains("kind")) {
    return;  // moe-train's step summary: its layers' records carry the counts
  } else {
    throw LineError("no 'counts' or 'expert_counts' key");
  }
  // Only carried along (moe-stats --records): anything but a whole count stays unknown.
  if (j.contains("tokens") && j["tokens"].is_number_unsigned() &&
      j["tokens"].get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    r.tokens = j["tokens"].get<int64_t>();
  out.push_back(std::move(r));
}

}  // namespace moe::stats
