#include "tools/moe-stats/csv_records.hpp"

#include <algorithm>

#include "tools/moe-stats/count_text.hpp"

namespace moe::stats {
namespace {

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

}  // namespace

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

}  // namespace moe::stats
