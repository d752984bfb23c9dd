// libFuzzer target: no input may crash the counts-log parser or the report built on it.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "tools/moe-stats/counts_log.hpp"
#include "tools/moe-stats/report.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (bool lenient : {false, true}) {
    std::istringstream in(text);
    try {
      moe::stats::ReportBuilder builder;
      moe::stats::parse_counts_log(in, "fuzz", lenient,
                                   [&](moe::stats::CountsRecord&& r) { builder.add(r); });
      const auto report = builder.finish();
      moe::stats::report_text(report, true);
      moe::stats::json_text(moe::stats::report_json(report));
      moe::stats::json_text(moe::stats::compare_json(report, report));
    } catch (const moe::stats::ParseError&) {
    } catch (const std::runtime_error&) {  // a layer changing width, counts overflowing
    }
  }
  return 0;
}
