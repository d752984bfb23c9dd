// moe-stats: balance metrics and verdicts from expert-count logs (PyTorch's tuple
// print, CSV, JSONL, or the library's own JSONL export). Results on stdout, messages
// on stderr.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tools/common/cli.hpp"
#include "tools/moe-stats/counts_log.hpp"
#include "tools/moe-stats/report.hpp"

namespace {

// The log streams through `sink` (the report builder, or the record printer): memory
// holds one line and what the sink keeps.
moe::stats::ParseSummary read(const std::string& path, bool lenient,
                              const moe::stats::RecordSink& sink) {
  if (path == "-") return moe::stats::parse_counts_log(std::cin, "<stdin>", lenient, sink);
  std::error_code error;
  if (std::filesystem::is_directory(path, error))
    throw std::runtime_error(path + ": is a directory, not a log");
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return moe::stats::parse_counts_log(in, path, lenient, sink);
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
  // Nothing to report is a failure: an empty file, a header alone, or every line skipped.
  if (parsed.records == 0) throw std::runtime_error(path + ": no records");
}

std::vector<moe::stats::LayerReport> report_of(const std::string& path, bool lenient) {
  moe::stats::ReportBuilder builder;
  check_parsed(path, read(path, lenient, [&](moe::stats::CountsRecord&& r) { builder.add(r); }));
  return builder.finish();
}

// --records: every record as one JSON line, in the order of the log, as the parser
// normalised it (moe-epmodel reads these). A layer (and split) that changes its number
// of experts is refused as the report refuses it; nothing is summed, so nothing can
// overflow. Layer names that are not UTF-8 get U+FFFD, as in the report.
void print_records(const std::string& path, bool lenient) {
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
    std::cout << j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
  };
  check_parsed(path, read(path, lenient, sink));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "moe-stats: load-balance metrics (docs/metrics.md, load balance) and verdicts per layer "
      "from expert-count logs: PyTorch's print of [(layer, tensor([...])), ...], CSV "
      "(step,layer,e0,e1,...), JSONL ({\"step\",\"layer\",\"counts\"}) or moe-runtime's JSONL "
      "export. '-' reads stdin.",
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
  app.add_flag("--records", records,
               "instead of the report, print every record read as one JSON line "
               "{\"step\",\"layer\",\"split\",\"counts\",\"served\",\"tokens\"} "
               "(split \"\", served [] and tokens null when the log does not say; --json "
               "changes nothing)");
  if (auto exit_code = moe::tools::parse_command_line(app, argc, argv)) return *exit_code;
  if (files.empty() && compare.empty()) {
    return moe::tools::usage_error("moe-stats",
                                   "give a log file (or - for stdin), or --compare A B");
  }
  if (records && (quiet_steps || !compare.empty())) {
    return moe::tools::usage_error(
        "moe-stats",
        "--records prints the records, not a report: it takes no --summary or "
        "--compare");
  }
  try {
    if (records) {
      for (const std::string& file : files) print_records(file, lenient);
      return moe::tools::finish("moe-stats", moe::tools::kExitSuccess);
    }
    if (!compare.empty()) {
      const auto comparison =
          moe::stats::compare_json(report_of(compare[0], lenient), report_of(compare[1], lenient));
      std::cout << (json ? moe::stats::json_text(comparison)
                         : moe::stats::compare_text(comparison, compare[0], compare[1]));
    }
    for (const std::string& file : files) {
      const auto report = report_of(file, lenient);
      std::cout << (json ? moe::stats::json_text(moe::stats::report_json(report))
                         : moe::stats::report_text(report, !quiet_steps));
    }
  } catch (const std::exception& e) {
    std::cerr << "moe-stats: " << e.what() << "\n";
    return moe::tools::kExitFailure;
  }
  return moe::tools::finish("moe-stats", moe::tools::kExitSuccess);
}
