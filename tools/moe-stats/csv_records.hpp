// CSV counts logs: step,layer,counts... rows (a header line is skipped), and the
// library's own CSV export, whose header names its expert_counts_e* and expert_served_e*
// columns, read by those names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tools/moe-stats/counts_record.hpp"

namespace moe::stats {

// What a CSV header said: where the counts are. Without a header naming
// expert_counts_e* columns, a row is step,layer,counts...
struct CsvLayout {
  bool header_seen = false;
  std::vector<size_t> counts, served;  // column indexes of expert_counts_e*, expert_served_e*
  size_t split = SIZE_MAX, tokens = SIZE_MAX;
};

// The fields of one CSV line (RFC 4180): a field in double quotes may hold commas, and
// "" inside it is one quote. Unquoted fields are trimmed. Throws LineError.
std::vector<std::string> csv_fields(const std::string& line);

// One CSV line: a header updates `layout`, a row appends its record to `out`. Throws
// LineError.
void parse_csv(const std::string& line, CsvLayout& layout, std::vector<CountsRecord>& out);

}  // namespace moe::stats
