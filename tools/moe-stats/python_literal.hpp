// What Python prints: PyTorch's and NumPy's reprs of counts, and the lists, tuples and
// dicts around them, as a user's training loop prints them. The printer wraps wide
// tensors over several lines, so a statement is read across lines (statement_depth
// says when it is complete).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tools/moe-stats/counts_record.hpp"

namespace moe::stats {

struct PyValue {
  enum class Kind { kNumber, kString, kSequence, kDict, kTensor };
  Kind kind = Kind::kNumber;
  int64_t number = 0;                             // kNumber: a count (whole, non-negative)
  std::string text;                               // kString
  std::vector<PyValue> items;                     // kSequence (list or tuple); kTensor: [data]
  std::vector<int64_t> numbers;                   // kSequence whose items are all numbers
  std::vector<std::pair<PyValue, PyValue>> dict;  // kDict
  bool numeric() const { return kind == Kind::kSequence && items.empty() && !numbers.empty(); }
};

// The bracket depth after `line`, starting from `depth` (quoted text skipped): a
// statement is complete when it returns to 0.
int statement_depth(const std::string& line, int depth);

// Parses one whole statement. Throws std::runtime_error with the column for text that
// is not a literal, a summarised print ("..."), or a number that is no count.
PyValue parse_python_literal(const std::string& text);

// Up to 2 dimensions of counts as a list of count vectors (a 1-D value is one row), and
// nothing (empty) for any other shape. A tensor counts as its data.
std::vector<std::vector<int64_t>> count_rows(const PyValue& value);

// The records of one print, numbered from ++step_counter: tensor([...]) is layer 0; a
// list of count vectors or a 2-D tensor is one layer a row; a 3-D one is a step a slab
// ([step][layer][expert]); [(layer, counts), ...] and {layer: counts, ...} name their
// layers. Throws LineError for any other shape.
std::vector<CountsRecord> print_records(const PyValue& value, int64_t& step_counter);

}  // namespace moe::stats
