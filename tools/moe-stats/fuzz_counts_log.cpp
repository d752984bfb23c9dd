// libFuzzer target: no input may crash the moe-stats parsers or the reports built on
// them. The bytes are read as a text log, and (written to a file) as a torch.save
// archive and a safetensors file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include "tools/moe-stats/binary_logs.hpp"
#include "tools/moe-stats/counts_log.hpp"
#include "tools/moe-stats/html_report.hpp"
#include "tools/moe-stats/rank_assembly.hpp"
#include "tools/moe-stats/report.hpp"

namespace {

void report_all(moe::stats::RecordSource& source, bool lenient) {
  moe::stats::ReportBuilder builder(2);
  moe::stats::drain(source, lenient, [&](moe::stats::CountsRecord&& r) { builder.add(r); });
  const auto report = builder.finish();
  moe::stats::report_text(report, true);
  moe::stats::json_text(moe::stats::report_json(report));
  moe::stats::json_text(moe::stats::compare_json(report, report));
  moe::stats::html_report(report, "fuzz");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  for (bool lenient : {false, true}) {
    std::istringstream in(bytes);
    try {
      std::vector<std::unique_ptr<moe::stats::RecordSource>> sources;
      sources.push_back(std::make_unique<moe::stats::LogReader>(in, "fuzz", lenient));
      moe::stats::RankAssembler run(std::move(sources), {-1}, {"fuzz"});
      report_all(run, lenient);
    } catch (const std::runtime_error&) {  // a malformed line, a layer changing width
    }
  }
  static const std::string path = "/tmp/fuzz_counts_log." + std::to_string(getpid());
  std::ofstream(path, std::ios::binary) << bytes;
  for (auto open : {&moe::stats::open_torch_save, &moe::stats::open_safetensors}) {
    try {
      auto source = open(path);
      report_all(*source, false);
    } catch (const std::runtime_error&) {
    }
  }
  return 0;
}
