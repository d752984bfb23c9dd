#include "tools/moe-stats/counts_log.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/config.hpp"

namespace moe::stats {
namespace {

struct LineError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void push_count(std::vector<int64_t>& counts, int64_t count) {
  if (static_cast<int64_t>(counts.size()) >= kMaxExperts)
    throw LineError(
        "more than 2^20 counts in one record, the most experts a layer has "
        "(docs/limits.md)");
  counts.push_back(count);
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

// A count: an integer, or a number written as a float that holds one ("12.", "1.2e+03").
int64_t parse_count(const std::string& text, const char* what) {
  const std::string t = trim(text);
  if (t.empty()) throw LineError(std::string("empty ") + what);
  const std::string not_integer = std::string("not an integer ") + what + ": '" + t + "'";
  size_t used = 0;
  long long v = 0;
  if (t.find_first_of(".eE") == std::string::npos) {
    try {
      v = std::stoll(t, &used);
    } catch (const std::exception&) {
      throw LineError(not_integer);
    }
  } else {
    double d = 0;
    try {
      d = std::stod(t, &used);
    } catch (const std::exception&) {
      throw LineError(not_integer);
    }
    if (!(std::fabs(d) <= 9.0e18) || d != std::floor(d)) throw LineError(not_integer);
    v = static_cast<long long>(d);
  }
  if (used != t.size()) throw LineError(not_integer);
  if (v < 0) throw LineError(std::string("negative ") + what + ": " + t);
  return v;
}

// The fields of one CSV line (RFC 4180): a field in double quotes may hold commas, and
// "" inside it is one quote. Unquoted fields are trimmed.
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> fields;
  size_t i = 0;
  while (true) {
    std::string field;
    while (i < line.size() && line[i] == ' ') ++i;
    if (i < line.size() && line[i] == '"') {
      ++i;
      while (true) {
        if (i >= line.size()) throw LineError("a quoted CSV field is not closed");
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            field += '"';
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        field += line[i++];
      }
      while (i < line.size() && line[i] == ' ') ++i;
      if (i < line.size() && line[i] != ',')
        throw LineError("text after a quoted CSV field at column " + std::to_string(i + 1));
    } else {
      const size_t comma = line.find(',', i);
      field = trim(line.substr(i, comma == std::string::npos ? std::string::npos : comma - i));
      i = comma == std::string::npos ? line.size() : comma;
    }
    fields.push_back(field);
    if (i >= line.size()) break;
    ++i;  // the comma
  }
  return fields;
}

// A cursor over one line of PyTorch's tuple print.
class Cursor {
 public:
  explicit Cursor(const std::string& s) : s_(s) {}
  void skip_space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool peek(char c) {
    skip_space();
    return i_ < s_.size() && s_[i_] == c;
  }
  void expect(const std::string& token) {
    skip_space();
    if (s_.compare(i_, token.size(), token) != 0)
      throw LineError("expected '" + token + "' at column " + std::to_string(i_ + 1));
    i_ += token.size();
  }
  // A count: digits, or a float that holds an integer, as PyTorch prints a float
  // tensor of counts ("5295.", "1.0000e+05").
  int64_t integer() {
    skip_space();
    const size_t start = i_;
    while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) ||
                              std::strchr(".eE+-", s_[i_]) != nullptr))
      ++i_;
    if (start == i_) throw LineError("expected a number at column " + std::to_string(start + 1));
    return parse_count(s_.substr(start, i_ - start), "count");
  }
  bool done() {
    skip_space();
    return i_ == s_.size();
  }
  // Skips to the next `c` (not consuming it), e.g. past ", device='cuda:0'".
  void skip_until(char c) {
    while (i_ < s_.size() && s_[i_] != c) ++i_;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;
};

void parse_torch_print(const std::string& line, int64_t step, std::vector<CountsRecord>& out) {
  Cursor c(line);
  c.expect("[");
  std::vector<CountsRecord> records;
  while (!c.peek(']')) {
    CountsRecord r;
    r.step = step;
    c.expect("(");
    r.layer = std::to_string(c.integer());
    c.expect(",");
    c.expect("tensor(");
    c.expect("[");
    while (!c.peek(']')) {
      push_count(r.counts, c.integer());
      if (!c.peek(']')) c.expect(",");
    }
    c.expect("]");
    if (c.peek(',')) c.skip_until(')');  // e.g. ", device='cuda:0'"
    c.expect(")");
    c.expect(")");
    if (r.counts.empty()) throw LineError("layer " + r.layer + " has no counts");
    records.push_back(std::move(r));
    if (!c.peek(']')) c.expect(",");
  }
  c.expect("]");
  if (!c.done()) throw LineError("trailing text after the list");
  out.insert(out.end(), records.begin(), records.end());
}

std::vector<int64_t> json_counts(const nlohmann::json& v, const char* key) {
  if (!v.is_array() || v.empty())
    throw LineError(std::string("'") + key + "' is not a non-empty array");
  std::vector<int64_t> out;
  if (v.size() > static_cast<size_t>(kMaxExperts))
    throw LineError(std::string("'") + key + "' holds more than 2^20 counts (docs/limits.md)");
  for (const auto& x : v) {
    if (!x.is_number()) throw LineError(std::string("'") + key + "' holds a non-number");
    const double d = x.get<double>();
    if (!(d >= 0) || d > 9.0e18 || d != static_cast<double>(static_cast<int64_t>(d)))
      throw LineError(std::string("'") + key + "' holds a value that is not a count");
    out.push_back(static_cast<int64_t>(d));
  }
  return out;
}

std::string json_label(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  throw LineError("'layer' is neither a string nor an integer");
}

void parse_json(const std::string& line, int64_t step, std::vector<CountsRecord>& out) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    // nlohmann's message without its id prefix and without the text it last read (which
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
  if (j.contains("step")) {
    if (!j["step"].is_number_integer()) throw LineError("'step' is not an integer");
    r.step = j["step"].get<int64_t>();
  }
  r.layer = j.contains("layer") ? json_label(j["layer"]) : "0";
  if (j.contains("split") && j["split"].is_string()) r.split = j["split"].get<std::string>();
  if (j.contains("counts")) {
    r.counts = json_counts(j["counts"], "counts");
  } else if (j.contains("expert_counts")) {
    r.counts = json_counts(j["expert_counts"], "expert_counts");
    if (j.contains("expert_served")) r.served = json_counts(j["expert_served"], "expert_served");
    if (r.served.size() && r.served.size() != r.counts.size())
      throw LineError("expert_served and expert_counts differ in length");
    for (size_t e = 0; e < r.served.size(); ++e)
      if (r.served[e] > r.counts[e])
        throw LineError("expert " + std::to_string(e) + " served " + std::to_string(r.served[e]) +
                        " copies of a demand of " + std::to_string(r.counts[e]) +
                        " (served can never exceed demand)");
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

// A header: the plain layout's (step,layer,...) is skipped; the library's export names
// its per-expert columns, which the rows are then read by.
void read_csv_header(const std::vector<std::string>& cells, CsvLayout& layout) {
  layout.header_seen = true;
  std::vector<std::pair<int64_t, size_t>> counts, served;
  for (size_t i = 0; i < cells.size(); ++i) {
    const std::string& name = cells[i];
    auto expert_of = [&](const std::string& prefix) -> int64_t {
      if (name.rfind(prefix, 0) != 0 || name.size() == prefix.size()) return -1;
      const std::string digits = name.substr(prefix.size());
      if (digits.size() > 7 || digits.find_first_not_of("0123456789") != std::string::npos)
        return -1;
      return std::stoll(digits);
    };
    if (const int64_t e = expert_of("expert_counts_e"); e >= 0) counts.push_back({e, i});
    if (const int64_t e = expert_of("expert_served_e"); e >= 0) served.push_back({e, i});
    if (name == "split") layout.split = i;
    if (name == "tokens") layout.tokens = i;
  }
  std::sort(counts.begin(), counts.end());
  std::sort(served.begin(), served.end());
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e].first != static_cast<int64_t>(e))
      throw LineError("the header's expert_counts_e columns skip expert " + std::to_string(e));
    layout.counts.push_back(counts[e].second);
  }
  if (!served.empty() && served.size() != counts.size())
    throw LineError("the header has " + std::to_string(served.size()) +
                    " expert_served_e columns for " + std::to_string(counts.size()) +
                    " expert_counts_e columns");
  for (const auto& [e, column] : served) layout.served.push_back(column);
}

void parse_csv(const std::string& line, CsvLayout& layout, std::vector<CountsRecord>& out) {
  const std::vector<std::string> cells = csv_fields(line);
  if (!layout.header_seen && cells[0] == "step") {
    read_csv_header(cells, layout);
    return;
  }
  if (cells.size() < 3) throw LineError("a CSV row needs step,layer and at least one count");
  CountsRecord r;
  r.step = parse_count(cells[0], "step");
  if (cells[1].empty()) throw LineError("empty layer");
  r.layer = cells[1];
  if (layout.counts.empty()) {
    for (size_t i = 2; i < cells.size(); ++i) push_count(r.counts, parse_count(cells[i], "count"));
    out.push_back(std::move(r));
    return;
  }
  auto cell = [&](size_t column) -> const std::string& {
    if (column >= cells.size())
      throw LineError("the row has " + std::to_string(cells.size()) + " cells, the header more");
    return cells[column];
  };
  for (size_t column : layout.counts) push_count(r.counts, parse_count(cell(column), "count"));
  for (size_t column : layout.served) push_count(r.served, parse_count(cell(column), "count"));
  for (size_t e = 0; e < r.served.size(); ++e)
    if (r.served[e] > r.counts[e])
      throw LineError("expert " + std::to_string(e) + " served more copies than its demand");
  if (layout.split != SIZE_MAX) r.split = cell(layout.split);
  if (layout.tokens != SIZE_MAX) {
    if (cell(layout.tokens) == "0") return;  // an empty window
    try {  // only carried along (moe-stats --records): a cell that is no count stays unknown
      r.tokens = parse_count(cell(layout.tokens), "tokens");
    } catch (const LineError&) {
    }
  }
  out.push_back(std::move(r));
}

}  // namespace

void parse_line(const std::string& raw, const std::string& source, int64_t line_number,
                int64_t& step_counter, std::vector<CountsRecord>& out, CsvLayout& csv) {
  const std::string line = trim(raw);
  if (line.empty() || line[0] == '#') return;
  try {
    if (line[0] == '[') {
      parse_torch_print(line, ++step_counter, out);
    } else if (line[0] == '{') {
      parse_json(line, ++step_counter, out);
    } else {
      parse_csv(line, csv, out);
    }
  } catch (const LineError& e) {
    throw ParseError(source, line_number, e.what());
  }
}

namespace {

// std::getline, but a line past `limit` bytes is skipped to its end instead of held:
// returns false at the end of the input, and sets too_long for such a line.
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

ParseSummary parse_counts_log(std::istream& in, const std::string& source, bool lenient,
                              const RecordSink& sink) {
  ParseSummary summary;
  std::string line;
  std::vector<CountsRecord> records;
  int64_t number = 0, step_counter = 0;
  CsvLayout csv;
  bool too_long = false;
  while (read_bounded_line(in, line, kMaxLineBytes, too_long)) {
    ++number;
    records.clear();
    try {
      if (too_long) throw ParseError(source, number, "line longer than 64 MiB (docs/limits.md)");
      parse_line(line, source, number, step_counter, records, csv);
    } catch (const ParseError& e) {
      if (!lenient) throw;
      ++summary.skipped_lines;
      if (summary.skipped_messages.size() < kMaxSkippedMessages)
        summary.skipped_messages.push_back(e.what());
      continue;
    }
    // A record the report cannot take (a layer changing its expert count, counts
    // overflowing 64 bits) is this line's error too.
    for (CountsRecord& r : records) {
      try {
        sink(std::move(r));
        ++summary.records;
      } catch (const ParseError&) {
        throw;
      } catch (const std::runtime_error& e) {
        if (!lenient) throw ParseError(source, number, e.what());
        ++summary.skipped_lines;
        if (summary.skipped_messages.size() < kMaxSkippedMessages)
          summary.skipped_messages.push_back(ParseError(source, number, e.what()).what());
        break;
      }
    }
  }
  return summary;
}

}  // namespace moe::stats
