#include "tools/moe-stats/counts_log.hpp"

#include <algorithm>
#include <cctype>

#include "core/config.hpp"
#include "tools/moe-stats/binary_logs.hpp"
#include "tools/moe-stats/count_text.hpp"
#include "tools/moe-stats/json_records.hpp"
#include "tools/moe-stats/python_literal.hpp"

namespace moe::stats {
namespace {

// The counts one SGLang CSV dump may become (layers x experts, dense): 64 layers of 2^18
// experts, 128 MiB.
constexpr size_t kMaxSparseCells = size_t{1} << 24;

bool starts_with(const std::string& s, const char* prefix) {
  return s.rfind(prefix, 0) == 0;
}

// A Python print, which may go on over the next lines (PyTorch wraps wide tensors);
// a line opening with {" is JSON.
bool opens_print(const std::string& t) {
  if (t[0] == '[' || t[0] == '(' || starts_with(t, "tensor(") || starts_with(t, "array("))
    return true;
  if (t[0] != '{') return false;
  // A Python dict's keys are quoted with ' or numbers; JSON's are quoted with ".
  const size_t next = t.find_first_not_of(" \t", 1);
  return next != std::string::npos &&
         (t[next] == '\'' || std::isdigit(static_cast<unsigned char>(t[next])));
}

// A wrapped print goes on with indented lines (PyTorch and NumPy indent every line
// after the first), and the blank lines between the slabs of a 3-D tensor.
bool continues_print(const std::string& line) {
  return line.empty() || line[0] == ' ' || line[0] == '\t' || line == "\r";
}

// Megatron-Core's older dump, one line a microbatch of one rank's layer:
//   Rank=0 iter=100 layer=3 tokens_per_expert=[128, 64]
void parse_megatron_text(const std::string& line, std::vector<CountsRecord>& out) {
  CountsRecord r;
  size_t i = 0;
  auto field = [&](const char* name) {
    const std::string key = std::string(name) + "=";
    if (line.compare(i, key.size(), key) != 0)
      throw LineError("expected '" + key + "' at column " + std::to_string(i + 1));
    i += key.size();
    const size_t end = line.find(' ', i);
    if (end == std::string::npos) throw LineError("the line ends after '" + key + "'");
    const std::string value = line.substr(i, end - i);
    i = end + 1;
    return value;
  };
  const int64_t rank = parse_count(field("Rank"), "rank");
  if (rank >= (int64_t{1} << 24)) throw LineError("a rank past 2^24");
  r.rank = static_cast<int>(rank);
  r.step = parse_count(field("iter"), "iteration");
  r.layer = field("layer");
  const std::string key = "tokens_per_expert=";
  if (line.compare(i, key.size(), key) != 0)
    throw LineError("expected 'tokens_per_expert=' at column " + std::to_string(i + 1));
  const std::vector<std::vector<int64_t>> rows =
      count_rows(parse_python_literal(line.substr(i + key.size())));
  if (rows.size() != 1 || rows[0].empty())
    throw LineError("tokens_per_expert is not a list of counts");
  r.counts = rows[0];
  r.local = r.partial = true;
  out.push_back(std::move(r));
}

bool read_bounded_line(std::istream& in, std::string& line, size_t limit, bool& too_long) {
  line.clear();
  too_long = false;
  std::streambuf* buffer = in.rdbuf();
  bool any = false;
  for (int c = buffer->sbumpc(); c != std::char_traits<char>::eof(); c = buffer->sbumpc()) {
    any = true;
    if (c == '\n') return true;
    if (line.size() < limit) {
      line.push_back(static_cast<char>(c));
    } else {
      too_long = true;
    }
  }
  return any;
}

}  // namespace

void ParseSummary::skip(const std::string& message) {
  ++skipped_lines;
  if (skipped_messages.size() < kMaxSkippedMessages) skipped_messages.push_back(message);
}

LogReader::LogReader(std::istream& in, std::string source, bool lenient)
    : in_(in), source_(std::move(source)), lenient_(lenient) {}

std::string LogReader::where() const {
  return source_ + ":" + std::to_string(record_line_);
}

// std::getline, but a line past 64 MiB is skipped to its end instead of held.
bool LogReader::read_line(std::string& line) {
  if (holding_) {
    holding_ = false;
    line = std::move(held_);
    line_ = held_line_;
    return true;
  }
  bool too_long = false;
  if (!read_bounded_line(in_, line, kMaxLineBytes, too_long)) return false;
  ++line_;
  if (line_ == 1) {
    if (line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // a UTF-8 BOM
    // A dump given as text (on stdin, which cannot seek): refused, not read as CSV, and
    // not skipped under --lenient (none of it is text).
    const LogKind kind = sniff_log(line.substr(0, 4096), "");
    if (kind != LogKind::kText)
      throw std::runtime_error(
          source_ + ":1: " +
          unreadable_kind(kind == LogKind::kOtherBinary || kind == LogKind::kLegacyTorchSave
                              ? kind
                              : LogKind::kText));
  }
  if (too_long) throw ParseError(source_, line_, "line longer than 64 MiB (docs/limits.md)");
  return true;
}

void LogReader::parse_statement(const std::string& t, std::vector<CountsRecord>& out) {
  if (opens_print(t)) {
    for (CountsRecord& r : print_records(parse_python_literal(t), step_counter_))
      out.push_back(std::move(r));
  } else if (t[0] == '{') {
    parse_json(t, ++step_counter_, out);
  } else if (starts_with(t, "Rank=")) {
    parse_megatron_text(t, out);
  } else if (!csv_.header_seen && t == "layer_id,expert_id,count") {
    sparse_ = csv_.header_seen = true;  // SGLang's dump: one header, then its rows
  } else {
    parse_csv(t, csv_, out);
  }
}

// One row of SGLang's dump, gathered until the end of the file.
void LogReader::add_sparse_row(const std::string& row) {
  const std::vector<std::string> cells = csv_fields(row);
  if (cells.size() != 3) throw LineError("expected layer_id,expert_id,count");
  const std::string& layer = cells[0];
  const int64_t expert = parse_count(cells[1], "expert id");
  if (expert >= kMaxExperts) throw LineError("an expert id past 2^20 (docs/limits.md)");
  const int64_t count = parse_count(cells[2], "count");
  // The dump becomes one dense record a layer, as wide as the largest expert id:
  // layers x experts is bounded before anything is kept.
  const auto found = sparse_counts_.find(layer);
  const size_t layers = sparse_order_.size() + (found == sparse_counts_.end() ? 1 : 0);
  const size_t experts = std::max(sparse_experts_, static_cast<size_t>(expert) + 1);
  if (layers * experts > kMaxSparseCells)
    throw LineError("the dump's layers x experts pass 2^24 counts (docs/limits.md)");
  int64_t& cell = sparse_counts_[layer][expert];
  if (found == sparse_counts_.end()) sparse_order_.push_back(layer);
  sparse_experts_ = experts;
  cell = checked_add(cell, count);  // unchanged when refused (--lenient goes on)
}

void LogReader::flush_sparse(std::vector<CountsRecord>& out) {
  const int64_t experts = static_cast<int64_t>(sparse_experts_);
  for (const std::string& layer : sparse_order_) {
    CountsRecord r;
    r.step = 1;  // one dump
    r.layer = layer;
    r.counts.assign(static_cast<size_t>(experts), 0);
    for (const auto& [e, c] : sparse_counts_[layer]) r.counts[e] = c;
    r.sparse = true;
    out.push_back(std::move(r));
  }
  sparse_counts_.clear();
  sparse_order_.clear();
  sparse_experts_ = 0;
}

bool LogReader::next(CountsRecord& out) {
  std::vector<CountsRecord> records;
  while (ready_.empty()) {
    std::string line;
    bool more = false;
    try {
      more = read_line(line);
    } catch (const ParseError& e) {
      if (!lenient_) throw;
      summary_.skip(e.what());
      continue;
    }
    if (!more) {
      if (sparse_counts_.empty()) return false;
      flush_sparse(records);
      record_line_ = line_;
      for (CountsRecord& r : records) ready_.push_back(std::move(r));
      break;
    }
    first_line_ = line_;
    std::string statement = trim(line);
    if (statement.empty() || statement[0] == '#') continue;
    records.clear();
    try {
      if (opens_print(statement)) {
        // Gather the lines of a wrapped print until its brackets close.
        int depth = statement_depth(statement, 0);
        bool too_long = false;
        while (depth > 0) {
          std::string next_line;
          if (!read_line(next_line))
            throw LineError("the print is not closed at the end of the log");
          if (!continues_print(next_line)) {
            held_ = std::move(next_line);  // the next statement: read it again
            held_line_ = line_;
            holding_ = true;
            throw LineError("the print is not closed before line " + std::to_string(line_));
          }
          depth = statement_depth(next_line, depth);
          if (statement.size() + next_line.size() + 1 > kMaxLineBytes) too_long = true;
          if (!too_long) statement += "\n" + next_line;
        }
        if (too_long) throw LineError("a print longer than 64 MiB (docs/limits.md)");
      }
      if (sparse_ && statement != "layer_id,expert_id,count") {
        add_sparse_row(statement);
        continue;
      }
      parse_statement(statement, records);
    } catch (const LineError& e) {
      if (!lenient_) throw ParseError(source_, first_line_, e.what());
      summary_.skip(ParseError(source_, first_line_, e.what()).what());
      continue;
    } catch (const ParseError& e) {
      if (!lenient_) throw;
      summary_.skip(e.what());
      continue;
    }
    record_line_ = first_line_;
    for (CountsRecord& r : records) ready_.push_back(std::move(r));
  }
  out = std::move(ready_.front());
  ready_.pop_front();
  return true;
}

ParseSummary drain(RecordSource& source, bool lenient, const RecordSink& sink) {
  int64_t records = 0, refused = 0;
  std::vector<std::string> messages;
  CountsRecord r;
  while (source.next(r)) {
    try {
      sink(std::move(r));
      ++records;
    } catch (const ParseError&) {
      throw;
    } catch (const std::runtime_error& e) {
      const std::string message = source.where() + ": " + e.what();
      if (!lenient) throw std::runtime_error(message);
      ++refused;
      if (messages.size() < kMaxSkippedMessages) messages.push_back(message);
    }
  }
  ParseSummary summary = source.summary();
  summary.records = records;
  for (const std::string& m : messages) summary.skip(m);
  summary.skipped_lines += refused - static_cast<int64_t>(messages.size());
  return summary;
}

ParseSummary parse_counts_log(std::istream& in, const std::string& source, bool lenient,
                              const RecordSink& sink) {
  LogReader reader(in, source, lenient);
  return drain(reader, lenient, sink);
}

}  // namespace moe::stats
