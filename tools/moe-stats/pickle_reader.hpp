// The subset of Python's pickle (protocol 2, as torch.save writes) that a dump of
// dicts, lists, numbers, strings and tensors uses; tensors come back as references to
// their storage in the archive, never as Python objects. Anything else (a class
// instance, a NumPy array) is kOther: loading runs no code.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

namespace moe::stats {

struct PickleValue;
// Values live in their Pickle's arena and refer to each other by pointer: no value owns
// another, so however deep a hostile pickle nests, nothing is freed recursively.
using PickleRef = const PickleValue*;

struct PickleValue {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kTuple,
    kDict,
    kGlobal,
    kStorage,
    kTensor,
    kOther
  };
  Kind kind = Kind::kNone;
  int64_t integer = 0;
  double real = 0;
  std::string text;              // kString; kGlobal: "module.name"; kStorage/kTensor: key
  std::string dtype;             // kStorage/kTensor: "Int", "Long", ... (torch.<dtype>Storage)
  std::vector<PickleRef> items;  // kList, kTuple
  std::vector<std::pair<PickleRef, PickleRef>> dict;
  int64_t offset = 0;  // kTensor: elements into the storage
  std::vector<int64_t> shape, stride;

  // The value at `key` of a dict with string keys, or nullptr.
  PickleRef at(const std::string& key) const;
};

struct Pickle {
  std::deque<PickleValue> values;  // every value made, the root among them
  PickleRef root = nullptr;
};

// Throws std::runtime_error for bytes that are no pickle or use an opcode outside the
// subset.
Pickle load_pickle(const std::string& bytes);

}  // namespace moe::stats
