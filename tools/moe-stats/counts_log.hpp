// Parsing the counts logs that moe-stats reads (docs/metrics.md, counts logs), one record a line:
//   PyTorch's print of [(layer, tensor([c0, c1, ...])), ...]   (one step a line)
//   CSV  step,layer,e0,e1,...                                  (a header line is skipped)
//   the library's own CSV export (its header names expert_counts_e*, expert_served_e*)
//   JSONL {"step": .., "layer": .., "counts": [...]}
//   the library's own JSONL export (expert_counts, expert_served, split, ...), and
//   moe-train's metrics.jsonl, whose step summaries ("kind", no counts) are not records
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <istream>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe::stats {

struct CountsRecord {
  int64_t step = 0;
  std::string layer;
  std::string split;            // "" when the log does not say
  std::vector<int64_t> counts;  // demand per expert
  std::vector<int64_t> served;  // empty when the log has none
  int64_t tokens = -1;          // the tokens behind the counts, -1 when the log does not say
};

struct ParseError : std::runtime_error {
  ParseError(const std::string& source, int64_t line, const std::string& what)
      : std::runtime_error(source + ":" + std::to_string(line) + ": " + what) {}
};

// Limits (docs/limits.md): a record holds at most kMaxExperts counts (the library's
// own limit on E), and a line at most kMaxLineBytes, room for that many counts of any
// size. A longer line is refused without being read into memory whole.
constexpr size_t kMaxLineBytes = size_t{64} << 20;

struct ParseSummary {
  int64_t records = 0;
  int64_t skipped_lines = 0;                  // malformed lines skipped under lenient parsing
  std::vector<std::string> skipped_messages;  // the first kMaxSkippedMessages of them
};
constexpr size_t kMaxSkippedMessages = 100;

using RecordSink = std::function<void(CountsRecord&&)>;

// Streams `in`: each record goes to `sink` as soon as its line is parsed, so memory
// holds one line, not the file. Throws ParseError naming source and line for a
// malformed line, unless lenient.
ParseSummary parse_counts_log(std::istream& in, const std::string& source, bool lenient,
                              const RecordSink& sink);

// What a CSV header said: where the counts are. Without a header naming
// expert_counts_e* columns, a row is step,layer,counts...
struct CsvLayout {
  bool header_seen = false;
  std::vector<size_t> counts, served;  // column indexes of expert_counts_e*, expert_served_e*
  size_t split = SIZE_MAX, tokens = SIZE_MAX;
};

// One line (exposed for the fuzzer and the tests); appends what it holds to out.
void parse_line(const std::string& line, const std::string& source, int64_t line_number,
                int64_t& step_counter, std::vector<CountsRecord>& out, CsvLayout& csv);

}  // namespace moe::stats
