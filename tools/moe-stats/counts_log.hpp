// Reading the text counts logs moe-stats takes (docs/telemetry.md#moe-stats), each recognised
// by its content, a statement at a time:
//   PyTorch's and NumPy's prints of counts, wrapped over any number of lines:
//     [(layer, tensor([...])), ...], {layer: tensor([...])}, tensor([[...], ...]), lists
//   CSV step,layer,e0,e1,... and the library's CSV export (csv_records.hpp)
//   SGLang's expert-distribution CSV (layer_id,expert_id,count: one dump a file)
//   JSON lines: the library's export, moe-train's metrics.jsonl, Megatron-Core's
//     tokens-per-expert dump, vLLM's EPLB step metrics (json_records.hpp)
//   Megatron-Core's older tokens-per-expert log: Rank=R iter=N layer=L tokens_per_expert=[...]
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <istream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "tools/moe-stats/counts_record.hpp"
#include "tools/moe-stats/csv_records.hpp"

namespace moe::stats {

struct ParseError : std::runtime_error {
  ParseError(const std::string& source, int64_t line, const std::string& what)
      : std::runtime_error(source + ":" + std::to_string(line) + ": " + what) {}
};

// Limits (docs/limits.md): a record holds at most kMaxExperts counts (the library's
// own limit on E), and a statement (a line, or a print wrapped over lines) at most
// kMaxLineBytes, room for that many counts of any size. A longer one is refused without
// being read into memory whole.
constexpr size_t kMaxLineBytes = size_t{64} << 20;

struct ParseSummary {
  int64_t records = 0;
  int64_t skipped_lines = 0;                  // malformed lines skipped under lenient parsing
  std::vector<std::string> skipped_messages;  // the first kMaxSkippedMessages of them
  void skip(const std::string& message);
};
constexpr size_t kMaxSkippedMessages = 100;

// A source of records, in the order of its log.
class RecordSource {
 public:
  virtual ~RecordSource() = default;
  virtual bool next(CountsRecord& out) = 0;  // false at the end
  virtual std::string where() const = 0;     // "file:line" of the last record, for errors
  virtual const ParseSummary& summary() const = 0;
};

// A text log, read a statement at a time: memory holds one statement and the records
// it made (SGLang's CSV: one dump's counts). Throws ParseError naming the source and
// line of a malformed statement, unless lenient (then it is counted and skipped).
class LogReader : public RecordSource {
 public:
  LogReader(std::istream& in, std::string source, bool lenient);
  bool next(CountsRecord& out) override;
  std::string where() const override;
  const ParseSummary& summary() const override { return summary_; }

 private:
  bool read_line(std::string& line);
  void parse_statement(const std::string& text, std::vector<CountsRecord>& out);
  void add_sparse_row(const std::string& row);
  void flush_sparse(std::vector<CountsRecord>& out);

  std::istream& in_;
  std::string source_;
  bool lenient_;
  ParseSummary summary_;
  std::deque<CountsRecord> ready_;
  std::string held_;  // a line read past a statement that did not close
  bool holding_ = false;
  int64_t held_line_ = 0;
  int64_t line_ = 0, first_line_ = 0, record_line_ = 0, step_counter_ = 0;
  CsvLayout csv_;
  bool sparse_ = false;  // SGLang's layer_id,expert_id,count CSV: counts gathered to the end
  std::map<std::string, std::map<int64_t, int64_t>> sparse_counts_;
  std::vector<std::string> sparse_order_;
  size_t sparse_experts_ = 0;  // the largest expert id seen, plus one
};

using RecordSink = std::function<void(CountsRecord&&)>;

// Streams a source into `sink`. A record the sink refuses (std::runtime_error: a layer
// changing its expert count, counts overflowing) is an error of the record's line, and
// skipped under lenient.
ParseSummary drain(RecordSource& source, bool lenient, const RecordSink& sink);

// A text log from `in` into `sink` (LogReader, then drain).
ParseSummary parse_counts_log(std::istream& in, const std::string& source, bool lenient,
                              const RecordSink& sink);

}  // namespace moe::stats
