// moe-stats: balance metrics and verdicts from expert-count logs of any framework
// (docs/telemetry.md#moe-stats), as text, JSON or a self-contained HTML report. Results on
// stdout (or the --html file), messages on stderr.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "tools/common/cli.hpp"
#include "tools/moe-stats/binary_logs.hpp"
#include "tools/moe-stats/counts_log.hpp"
#include "tools/moe-stats/html_report.hpp"
#include "tools/moe-stats/rank_assembly.hpp"
#include "tools/moe-stats/report.hpp"

namespace {

// A text log from a file, owning its stream.
class TextFile : public moe::stats::RecordSource {
 public:
  TextFile(const std::string& path, bool lenient) : file_(path), reader_(file_, path, lenient) {
    if (!file_) throw std::runtime_error(path + ": cannot open");
  }
  bool next(moe::stats::CountsRecord& out) override { return reader_.next(out); }
  std::string where() const override { return reader_.where(); }
  const moe::stats::ParseSummary& summary() const override { return reader_.summary(); }

 private:
  std::ifstream file_;
  moe::stats::LogReader reader_;
};

std::unique_ptr<moe::stats::RecordSource> open_file(const std::string& path, bool lenient) {
  using moe::stats::LogKind;
  switch (const LogKind kind = moe::stats::sniff_file(path)) {
    case LogKind::kTorchSave: return moe::stats::open_torch_save(path);
    case LogKind::kSafetensors: return moe::stats::open_safetensors(path);
    case LogKind::kText: return std::make_unique<TextFile>(path, lenient);
    default: throw std::runtime_error(path + ": " + moe::stats::unreadable_kind(kind));
  }
}

// The rank in a per-rank file's name: rank<N> (Megatron-Core's rank<N>.jsonl,
// TensorRT-LLM's rank<N>.safetensors, SGLang's expert_distribution_rank<N>_...csv), or
// -1.
int rank_in_name(const std::string& name) {
  static const std::regex pattern("rank_?([0-9]{1,7})");
  std::smatch m;
  return std::regex_search(name, m, pattern) ? std::stoi(m[1].str()) : -1;
}

// One run's records: a log, or a directory of per-rank logs (every file in it but
// TensorRT-LLM's meta_info.json), read together a step at a time.
std::unique_ptr<moe::stats::RecordSource> open_run(const std::string& path, bool lenient) {
  std::vector<std::unique_ptr<moe::stats::RecordSource>> sources;
  std::vector<int> ranks;
  std::vector<std::string> names;
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) {
    std::vector<std::pair<int, std::string>> files;
    for (const auto& entry : std::filesystem::directory_iterator(path, error)) {
      const std::string name = entry.path().filename().string();
      if (!entry.is_regular_file() || name == "meta_info.json" || name[0] == '.') continue;
      files.emplace_back(rank_in_name(name), entry.path().string());
    }
    if (error) throw std::runtime_error(path + ": cannot list: " + error.message());
    if (files.empty()) throw std::runtime_error(path + ": a directory without logs");
    std::sort(files.begin(), files.end());
    int next_rank = 0;
    for (const auto& [rank, file] : files) {
      // SGLang's per-pass dumps name their rank inside; any other log names it in its
      // file name, and the names go rank0, rank1, ... without a gap.
      if (rank < 0 && moe::stats::sniff_file(file) != moe::stats::LogKind::kTorchSave)
        throw std::runtime_error(file +
                                 ": a log among per-rank logs whose name names no rank (rank<N>)");
      if (rank >= 0 && rank != next_rank++)
        throw std::runtime_error(file + ": " +
                                 (rank < next_rank - 1
                                      ? "a second log of rank " + std::to_string(rank)
                                      : "rank " + std::to_string(rank) + " where rank " +
                                            std::to_string(next_rank - 1) + " has no log"));
    }
    for (const auto& [rank, file] : files) {
      sources.push_back(open_file(file, lenient));
      ranks.push_back(rank);
      names.push_back(file);
    }
  } else {
    if (path != "-" && !std::filesystem::exists(path, error))
      throw std::runtime_error(path + ": cannot open");
    sources.push_back(path == "-"
                          ? std::make_unique<moe::stats::LogReader>(std::cin, "<stdin>", lenient)
                          : open_file(path, lenient));
    ranks.push_back(-1);
    names.push_back(path);
  }
  return std::make_unique<moe::stats::RankAssembler>(std::move(sources), std::move(ranks),
                                                     std::move(names));
}

// The log streams through `sink` (the report builder, or the record printer): memory
// holds one statement of each rank's log and what the sink keeps.
moe::stats::ParseSummary read(const std::string& path, bool lenient,
                              const moe::stats::RecordSink& sink) {
  const std::unique_ptr<moe::stats::RecordSource> run = open_run(path, lenient);
  return moe::stats::drain(*run, lenient, sink);
}

// The skipped lines on stderr; nothing read at all is a failure (an empty file, a header
// alone, every line skipped).
void check_parsed(const std::string& path, const moe::stats::ParseSummary& parsed) {
  for (const std::string& message : parsed.skipped_messages)
    std::cerr << "moe-stats: skipped " << message << "\n";
  if (parsed.skipped_lines > static_cast<int64_t>(parsed.skipped_messages.size()))
    std::cerr << "moe-stats: (the other "
              << parsed.skipped_lines - static_cast<int64_t>(parsed.skipped_messages.size())
              << " skipped lines are not listed)\n";
  if (parsed.skipped_lines)
    std::cerr << "moe-stats: " << path << ": " << parsed.skipped_lines
              << " malformed lines skipped\n";
  if (parsed.records == 0) throw std::runtime_error(path + ": no records");
}

std::vector<moe::stats::LayerReport> report_of(const std::string& path, bool lenient, int ranks) {
  moe::stats::ReportBuilder builder(ranks);
  check_parsed(path, read(path, lenient, [&](moe::stats::CountsRecord&& r) { builder.add(r); }));
  return builder.finish();
}

// --records: every record as one JSON line, in the order of the log, as the parser
// normalised it (moe-epmodel reads these). A layer (and split) that changes its number
// of experts is refused as the report refuses it; nothing is summed, so nothing can
// overflow. Layer names that are not UTF-8 get U+FFFD, as in the report.
void print_records(const std::string& path, bool lenient, int ep_ranks) {
  std::map<std::string, size_t> experts;  // by "layer/split"
  auto sink = [&](moe::stats::CountsRecord&& r) {
    const std::string key = r.split.empty() ? r.layer : r.layer + "/" + r.split;
    const auto [it, added] = experts.emplace(key, r.counts.size());
    if (!added && it->second != r.counts.size())
      throw std::runtime_error(
          "layer " + key + " changes its number of experts from " + std::to_string(it->second) +
          " to " + std::to_string(r.counts.size()) + " at step " + std::to_string(r.step));
    nlohmann::ordered_json j;
    j["step"] = r.step;
    j["layer"] = r.layer;
    j["split"] = r.split;
    j["counts"] = r.counts;
    j["served"] = r.served;
    j["tokens"] = r.tokens >= 0 ? nlohmann::ordered_json(r.tokens) : nlohmann::ordered_json();
    if (const auto load = moe::stats::rank_load_of(r, ep_ranks); !load.empty())
      j["rank_load"] = load;
    std::cout << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
  };
  check_parsed(path, read(path, lenient, sink));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "moe-stats: load-balance metrics (docs/metrics.md, load balance) and verdicts per layer, "
      "step window and rank from expert-count logs, recognised by their content: PyTorch "
      "prints, CSV, JSONL, moe-runtime's exports and metrics.jsonl, Megatron-Core's "
      "tokens-per-expert dumps, SGLang's expert-distribution dumps, vLLM's EPLB load, "
      "TensorRT-LLM's expert statistics (docs/telemetry.md#moe-stats). A directory is one run's "
      "per-rank logs. '-' reads stdin.",
      "moe-stats"};
  moe::tools::add_version_flag(app, "moe-stats");
  std::vector<std::string> files;
  std::vector<std::string> compare;
  bool json = false, lenient = false, quiet_steps = false, records = false;
  app.add_option("files", files, "counts logs to report on");
  app.add_option("--compare", compare, "two logs (e.g. train and validation) side by side")
      ->expected(2);
  app.add_flag("--json", json, "print the report as JSON on stdout instead of text");
  app.add_flag("--lenient", lenient, "skip malformed lines (counted on stderr) instead of failing");
  app.add_flag("--summary", quiet_steps, "print only the summed figures, not every step");
  int ep_ranks = 0;
  app.add_option("--ep-ranks", ep_ranks,
                 "for logs that do not say which rank ran which expert: the experts lie on this "
                 "many ranks in contiguous blocks (rank_load, rank_balancedness, "
                 "rank_imbalance_ratio, overload_factor)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_flag("--records", records,
               "instead of the report, print every record read as one JSON line "
               "{\"step\",\"layer\",\"split\",\"counts\",\"served\",\"tokens\"} "
               "(split \"\", served [] and tokens null when the log does not say; --json "
               "changes nothing)");
  std::string html;
  app.add_option("--html", html,
                 "also write one self-contained HTML report (curves, heat maps of load over "
                 "time and of layer x expert, per-rank load, verdicts) to this file");
  if (auto exit_code = moe::tools::parse_command_line(app, argc, argv)) return *exit_code;
  if (files.empty() && compare.empty()) {
    return moe::tools::usage_error("moe-stats",
                                   "give a log file (or - for stdin), or --compare A B");
  }
  if (!html.empty() && (files.size() != 1 || records || !compare.empty())) {
    return moe::tools::usage_error("moe-stats",
                                   "--html reports on one log (or one directory of per-rank logs)");
  }
  if (records && (quiet_steps || !compare.empty())) {
    return moe::tools::usage_error(
        "moe-stats",
        "--records prints the records, not a report: it takes no --summary or "
        "--compare");
  }
  try {
    if (records) {
      for (const std::string& file : files) print_records(file, lenient, ep_ranks);
      return moe::tools::finish("moe-stats", moe::tools::kExitSuccess);
    }
    if (!compare.empty()) {
      const auto comparison = moe::stats::compare_json(report_of(compare[0], lenient, ep_ranks),
                                                       report_of(compare[1], lenient, ep_ranks));
      std::cout << (json ? moe::stats::json_text(comparison)
                         : moe::stats::compare_text(comparison, compare[0], compare[1]));
    }
    for (const std::string& file : files) {
      const auto report = report_of(file, lenient, ep_ranks);
      if (!html.empty()) {
        std::ofstream page(html);
        page << moe::stats::html_report(report, file);
        page.close();
        if (!page) throw std::runtime_error(html + ": cannot write");
        std::cerr << "moe-stats: wrote " << html << "\n";
      }
      std::cout << (json ? moe::stats::json_text(moe::stats::report_json(report))
                         : moe::stats::report_text(report, !quiet_steps));
    }
  } catch (const std::exception& e) {
    std::cerr << "moe-stats: " << e.what() << "\n";
    return moe::tools::kExitFailure;
  }
  return moe::tools::finish("moe-stats", moe::tools::kExitSuccess);
}
