#include "tools/moe-stats/python_literal.hpp"

#include <cctype>
#include <cstring>
#include <set>

#include "tools/moe-stats/count_text.hpp"

namespace moe::stats {
namespace {

// Nesting past this is no print of counts; the bound keeps the recursion shallow.
constexpr int kMaxNesting = 32;
constexpr int kMaxOpenBrackets = 1 << 20;
// Values other than the counts of a flat list (each about 150 bytes): a print of 2^20
// layers or steps is far past any model, and memory stays within a few hundred MB.
constexpr int64_t kMaxValues = int64_t{1} << 20;

PyValue number_value(int64_t n) {
  PyValue v;
  v.number = n;
  return v;
}

bool identifier_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.';
}

class LiteralParser {
 public:
  explicit LiteralParser(const std::string& s) : s_(s) {}

  PyValue whole() {
    PyValue v = value(0);
    skip_space();
    if (i_ != s_.size()) fail("trailing text after the value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw LineError(what + " at column " + std::to_string(i_ + 1));
  }
  void skip_space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool at(char c) {
    skip_space();
    return i_ < s_.size() && s_[i_] == c;
  }
  void expect(char c) {
    if (!at(c)) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string identifier() {
    skip_space();
    const size_t start = i_;
    while (i_ < s_.size() && identifier_char(s_[i_])) ++i_;
    return s_.substr(start, i_ - start);
  }

  PyValue value(int depth) {
    if (depth > kMaxNesting) fail("nested deeper than " + std::to_string(kMaxNesting));
    if (++values_ > kMaxValues) fail("a print of more than 2^20 lists, tensors and labels");
    skip_space();
    if (i_ >= s_.size()) fail("expected a value");
    const char c = s_[i_];
    if (c == '[' || c == '(') return sequence(depth, c == '[' ? ']' : ')');
    if (c == '{') return dictionary(depth);
    if (c == '\'' || c == '"') {
      PyValue v;
      v.kind = PyValue::Kind::kString;
      v.text = quoted();
      return v;
    }
    if (s_.compare(i_, 3, "...") == 0)
      fail(
          "the print is summarised ('...'): print with "
          "torch.set_printoptions(profile='full') or "
          "numpy.set_printoptions(threshold=sys.maxsize)");
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '+')
      return number_value(number());
    const std::string name = identifier();
    if (name == "tensor" || name == "torch.tensor" || name == "array" || name == "np.array" ||
        name == "numpy.array")
      return call(depth);
    if (name.empty()) fail(std::string("unexpected '") + c + "'");
    fail("'" + name + "' is not part of a print of counts");
  }

  int64_t number() {
    const size_t start = i_;
    while (i_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[i_])) ||
                              std::strchr(".+-", s_[i_]) != nullptr))
      ++i_;
    try {
      return parse_count(s_.substr(start, i_ - start), "count");
    } catch (const LineError& e) {
      i_ = start;
      fail(e.what());
    }
  }

  std::string quoted() {
    const char quote = s_[i_++];
    std::string out;
    while (i_ < s_.size() && s_[i_] != quote) {
      if (s_[i_] == '\\' && i_ + 1 < s_.size()) ++i_;
      out += s_[i_++];
    }
    if (i_ >= s_.size()) fail("a quoted string is not closed");
    ++i_;
    return out;
  }

  // [a, b, ...] or (a, b, ...); numbers go to `numbers` while nothing else has come.
  PyValue sequence(int depth, char close) {
    ++i_;
    PyValue v;
    v.kind = PyValue::Kind::kSequence;
    while (!at(close)) {
      PyValue item = value(depth + 1);
      if (item.kind == PyValue::Kind::kNumber && v.items.empty()) {
        --values_;  // held flat, 8 bytes
        push_count(v.numbers, item.number);
      } else {
        // Not all numbers (a tuple (layer, tensor([...]))): the numbers so far are items.
        for (int64_t n : v.numbers) v.items.push_back(number_value(n));
        v.numbers.clear();
        v.items.push_back(std::move(item));
      }
      if (!at(close)) expect(',');
    }
    ++i_;
    return v;
  }

  PyValue dictionary(int depth) {
    ++i_;
    PyValue v;
    v.kind = PyValue::Kind::kDict;
    while (!at('}')) {
      PyValue key = value(depth + 1);
      expect(':');
      v.dict.emplace_back(std::move(key), value(depth + 1));
      if (!at('}')) expect(',');
    }
    ++i_;
    return v;
  }

  // tensor(data, device='cuda:0', dtype=torch.int32) and array(data, dtype=int64).
  PyValue call(int depth) {
    expect('(');
    PyValue v;
    v.kind = PyValue::Kind::kTensor;
    v.items.push_back(value(depth + 1));
    while (at(',')) {
      ++i_;
      if (identifier().empty()) fail("expected a keyword argument");
      expect('=');
      skip_space();
      if (i_ < s_.size() && (s_[i_] == '\'' || s_[i_] == '"')) {
        quoted();
      } else if (i_ < s_.size() && s_[i_] == '<') {  // grad_fn=<SumBackward1>
        const size_t close = s_.find('>', i_);
        if (close == std::string::npos) fail("a '<' that is not closed");
        i_ = close + 1;
      } else if (identifier().empty()) {
        fail("expected the keyword's value");
      }
    }
    expect(')');
    return v;
  }

  const std::string& s_;
  size_t i_ = 0;
  int64_t values_ = 0;
};

}  // namespace

int statement_depth(const std::string& line, int depth) {
  char quote = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quote) {
      if (c == '\\') {
        ++i;
      } else if (c == quote) {
        quote = 0;
      }
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == '[' || c == '(' || c == '{') {
      if (depth >= kMaxOpenBrackets) return depth;  // refused by the parser's nesting bound
      ++depth;
    } else if (c == ']' || c == ')' || c == '}') {
      --depth;
    }
  }
  return depth;
}

PyValue parse_python_literal(const std::string& text) {
  return LiteralParser(text).whole();
}

std::vector<std::vector<int64_t>> count_rows(const PyValue& value) {
  const PyValue& data = value.kind == PyValue::Kind::kTensor ? value.items[0] : value;
  if (data.numeric()) return {data.numbers};
  std::vector<std::vector<int64_t>> rows;
  if (data.kind != PyValue::Kind::kSequence || data.items.empty()) return rows;
  for (const PyValue& item : data.items) {
    const PyValue& row = item.kind == PyValue::Kind::kTensor ? item.items[0] : item;
    if (!row.numeric()) return {};
    rows.push_back(row.numbers);
  }
  // A tensor's rows are all as long (a list's layers need not be).
  if (value.kind == PyValue::Kind::kTensor)
    for (const auto& row : rows)
      if (row.size() != rows[0].size()) throw LineError("a ragged tensor: rows differ in length");
  return rows;
}

}  // namespace moe::stats

namespace moe::stats {
namespace {

std::string label_of(const PyValue& v) {
  if (v.kind == PyValue::Kind::kString) return v.text;
  if (v.kind == PyValue::Kind::kNumber) return std::to_string(v.number);
  throw LineError("a layer label is neither a string nor a number");
}

std::vector<int64_t> one_row(const PyValue& v, const std::string& layer) {
  const PyValue& data = v.kind == PyValue::Kind::kTensor ? v.items[0] : v;
  if (data.kind == PyValue::Kind::kSequence && data.items.empty() && data.numbers.empty())
    throw LineError("layer " + layer + " has no counts");
  const std::vector<std::vector<int64_t>> rows = count_rows(v);
  if (rows.size() != 1) throw LineError("layer " + layer + ": expected one vector of counts");
  return rows[0];
}

}  // namespace

std::vector<CountsRecord> print_records(const PyValue& value, int64_t& step_counter) {
  std::vector<CountsRecord> out;
  auto add = [&](std::string layer, std::vector<int64_t> counts) {
    CountsRecord r;
    r.step = step_counter;
    r.layer = std::move(layer);
    r.counts = std::move(counts);
    out.push_back(std::move(r));
  };
  const PyValue& data = value.kind == PyValue::Kind::kTensor ? value.items[0] : value;
  if (value.kind == PyValue::Kind::kDict) {  // {layer: tensor([...]), ...}
    ++step_counter;
    for (const auto& [key, counts] : value.dict) {
      const std::string layer = label_of(key);
      add(layer, one_row(counts, layer));
    }
  } else if (const auto rows = count_rows(value); !rows.empty()) {
    // tensor([...]) is layer 0; a list of them, or a 2-D tensor, one layer a row.
    ++step_counter;
    for (size_t i = 0; i < rows.size(); ++i) add(std::to_string(i), rows[i]);
  } else if (data.kind == PyValue::Kind::kSequence && !data.items.empty() &&
             !count_rows(data.items[0]).empty()) {
    // 3-D: [step][layer][expert], as vLLM's expert_load_window or SGLang's logical_count.
    for (const PyValue& slab : data.items) {
      const auto layers = count_rows(slab);
      if (layers.empty()) throw LineError("a 3-D print whose steps are not all 2-D counts");
      if (value.kind == PyValue::Kind::kTensor &&
          (layers.size() != count_rows(data.items[0]).size() ||
           layers[0].size() != count_rows(data.items[0])[0].size()))
        throw LineError("a ragged tensor: steps differ in shape");
      ++step_counter;
      for (size_t i = 0; i < layers.size(); ++i) add(std::to_string(i), layers[i]);
    }
  } else if (value.kind == PyValue::Kind::kSequence) {  // [(layer, tensor([...])), ...]
    ++step_counter;
    for (const PyValue& item : value.items) {
      if (item.kind != PyValue::Kind::kSequence || item.items.size() != 2)
        throw LineError(
            "not a print of counts: expected a tensor or list of counts (1-D: one layer, 2-D: "
            "layers, 3-D: steps of layers), (layer, counts) pairs or a dict of layer: counts");
      const std::string layer = label_of(item.items[0]);
      add(layer, one_row(item.items[1], layer));
    }
  } else {
    throw LineError("not a print of counts");
  }
  std::set<std::string> layers;
  for (const CountsRecord& r : out) {
    if (r.counts.empty()) throw LineError("layer " + r.layer + " has no counts");
    if (!layers.insert(std::to_string(r.step) + "\n" + r.layer).second)
      throw LineError("layer " + r.layer + " appears twice in one print");
  }
  if (out.empty()) throw LineError("an empty print");
  return out;
}

}  // namespace moe::stats
