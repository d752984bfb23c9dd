#include "tools/moe-stats/pickle_reader.hpp"

#include <cstring>
#include <map>
#include <stdexcept>

namespace moe::stats {
namespace {

using Kind = PickleValue::Kind;
using Value = PickleValue*;

// A pickle of counts is small (a dump of a thousand passes holds some 10^4 values);
// past these it is not one, and memory stays near 200 bytes a value.
constexpr size_t kMaxStack = size_t{1} << 20;
constexpr size_t kMaxItems = size_t{1} << 20;
constexpr size_t kMaxNameBytes = 256;  // a module or class name

Value make(std::deque<PickleValue>& arena, Kind kind) {
  arena.emplace_back();
  arena.back().kind = kind;
  return &arena.back();
}

std::vector<int64_t> int_tuple(PickleRef v, const char* what) {
  if (!v || v->kind != Kind::kTuple)
    throw std::runtime_error(std::string(what) + " is not a tuple");
  std::vector<int64_t> out;
  for (const PickleRef& x : v->items) {
    if (x->kind != Kind::kInt) throw std::runtime_error(std::string(what) + " holds a non-integer");
    out.push_back(x->integer);
  }
  return out;
}

// What REDUCE makes of callable(args): a tensor, an (empty) OrderedDict, or kOther.
Value reduce(std::deque<PickleValue>& arena, PickleRef callable, PickleRef args) {
  if (callable->kind != Kind::kGlobal) return make(arena, Kind::kOther);
  if (callable->text == "collections.OrderedDict") return make(arena, Kind::kDict);
  if (callable->text == "torch._utils._rebuild_tensor_v2" ||
      callable->text == "torch._utils._rebuild_tensor") {
    if (args->kind != Kind::kTuple || args->items.size() < 4 ||
        args->items[0]->kind != Kind::kStorage)
      throw std::runtime_error("a tensor whose arguments are not (storage, offset, size, stride)");
    Value t = make(arena, Kind::kTensor);
    t->text = args->items[0]->text;
    t->dtype = args->items[0]->dtype;
    if (args->items[1]->kind != Kind::kInt)
      throw std::runtime_error("a tensor offset is no integer");
    t->offset = args->items[1]->integer;
    t->shape = int_tuple(args->items[2], "a tensor's size");
    t->stride = int_tuple(args->items[3], "a tensor's stride");
    return t;
  }
  return make(arena, Kind::kOther);
}

}  // namespace

PickleRef PickleValue::at(const std::string& key) const {
  for (const auto& [k, v] : dict)
    if (k->kind == Kind::kString && k->text == key) return v;
  return nullptr;
}

Pickle load_pickle(const std::string& b) {
  Pickle out;
  std::deque<PickleValue>& arena = out.values;
  auto make = [&](Kind kind) { return moe::stats::make(arena, kind); };
  size_t i = 0;
  auto need = [&](size_t n) {
    if (i + n > b.size()) throw std::runtime_error("the pickle ends early");
  };
  auto u = [&](size_t n) {
    need(n);
    uint64_t v = 0;
    for (size_t j = n; j-- > 0;) v = (v << 8) | static_cast<unsigned char>(b[i + j]);
    i += n;
    return v;
  };
  auto line = [&]() {
    const size_t end = b.find('\n', i);
    if (end == std::string::npos) throw std::runtime_error("the pickle ends early");
    std::string s = b.substr(i, end - i);
    i = end + 1;
    return s;
  };
  std::vector<PickleRef> stack;
  std::vector<size_t> marks;
  std::map<uint64_t, PickleRef> memo;
  size_t items = 0;
  auto push = [&](PickleRef v) {
    if (stack.size() >= kMaxStack || ++items > kMaxItems)
      throw std::runtime_error("a pickle past moe-stats' bounds");
    stack.push_back(std::move(v));
  };
  auto pop = [&]() {
    if (stack.empty() || (!marks.empty() && stack.size() <= marks.back()))
      throw std::runtime_error("a malformed pickle (stack underflow)");
    PickleRef v = stack.back();
    stack.pop_back();
    return v;
  };
  auto pop_mark = [&]() {
    if (marks.empty() || marks.back() > stack.size())
      throw std::runtime_error("a malformed pickle (no mark)");
    std::vector<PickleRef> v(stack.begin() + static_cast<std::ptrdiff_t>(marks.back()),
                             stack.end());
    stack.resize(marks.back());
    marks.pop_back();
    return v;
  };
  auto remember = [&](uint64_t key) {  // a memo entry counts as a value
    if (++items > kMaxItems) throw std::runtime_error("a pickle past moe-stats' bounds");
    memo[key] = stack.empty() ? nullptr : stack.back();
  };
  auto mutable_top = [&](Kind kind) {
    if (stack.empty() || stack.back()->kind != kind)
      throw std::runtime_error("a malformed pickle (no container to fill)");
    return const_cast<Value>(stack.back());
  };
  auto integer = [&](int64_t n) {
    Value v = make(Kind::kInt);
    v->integer = n;
    push(v);
  };
  auto string = [&](size_t n) {
    need(n);
    Value v = make(Kind::kString);
    v->text = b.substr(i, n);
    i += n;
    push(v);
  };
  auto tuple = [&](std::vector<PickleRef> items_of) {
    Value v = make(Kind::kTuple);
    v->items = std::move(items_of);
    push(v);
  };
  auto set_items = [&](std::vector<PickleRef> kv) {
    Value d = mutable_top(Kind::kDict);
    if (kv.size() % 2) throw std::runtime_error("a malformed pickle (odd dict items)");
    for (size_t j = 0; j < kv.size(); j += 2) d->dict.emplace_back(kv[j], kv[j + 1]);
  };
  while (true) {
    need(1);
    const unsigned char op = static_cast<unsigned char>(b[i++]);
    switch (op) {
      case 0x80: u(1); break;  // PROTO
      case 0x95: u(8); break;  // FRAME
      case '.': {              // STOP
        if (stack.size() != 1) throw std::runtime_error("a malformed pickle (stack at STOP)");
        out.root = stack.back();
        return out;
      }
      case '}': push(make(Kind::kDict)); break;        // EMPTY_DICT
      case ']': push(make(Kind::kList)); break;        // EMPTY_LIST
      case ')': tuple({}); break;                      // EMPTY_TUPLE
      case '(': marks.push_back(stack.size()); break;  // MARK
      case 't': tuple(pop_mark()); break;              // TUPLE
      case 0x85: {
        auto a = pop();
        tuple({a});
        break;
      }  // TUPLE1
      case 0x86: {
        auto b2 = pop(), a = pop();
        tuple({a, b2});
        break;
      }
      case 0x87: {
        auto c = pop(), b2 = pop(), a = pop();
        tuple({a, b2, c});
        break;
      }
      case 'N': push(make(Kind::kNone)); break;
      case 0x88:
      case 0x89: {
        Value v = make(Kind::kBool);
        v->integer = op == 0x88;
        push(v);
        break;
      }
      case 'K': integer(static_cast<int64_t>(u(1))); break;  // BININT1
      case 'M': integer(static_cast<int64_t>(u(2))); break;  // BININT2
      case 'J': integer(static_cast<int32_t>(u(4))); break;  // BININT
      case 0x8a: {                                           // LONG1
        const size_t n = u(1);
        if (n > 8) throw std::runtime_error("an integer past 64 bits in the pickle");
        need(n);
        uint64_t v = 0;
        for (size_t j = n; j-- > 0;) v = (v << 8) | static_cast<unsigned char>(b[i + j]);
        if (n > 0 && n < 8 && (static_cast<unsigned char>(b[i + n - 1]) & 0x80))
          v |= ~uint64_t{0} << (8 * n);
        i += n;
        integer(static_cast<int64_t>(v));
        break;
      }
      case 'G': {  // BINFLOAT (big-endian)
        need(8);
        uint64_t bits = 0;
        for (size_t j = 0; j < 8; ++j) bits = (bits << 8) | static_cast<unsigned char>(b[i + j]);
        i += 8;
        Value v = make(Kind::kFloat);
        std::memcpy(&v->real, &bits, 8);
        push(v);
        break;
      }
      case 'X': string(u(4)); break;            // BINUNICODE
      case 0x8c: string(u(1)); break;           // SHORT_BINUNICODE
      case 'T': string(u(4)); break;            // BINSTRING
      case 'U': string(u(1)); break;            // SHORT_BINSTRING
      case 'B': string(u(4)); break;            // BINBYTES
      case 'C': string(u(1)); break;            // SHORT_BINBYTES
      case 'q': remember(u(1)); break;          // BINPUT
      case 'r': remember(u(4)); break;          // LONG_BINPUT
      case 0x94: remember(memo.size()); break;  // MEMOIZE
      case 'h':
      case 'j': {  // BINGET, LONG_BINGET
        const auto it = memo.find(u(op == 'h' ? 1 : 4));
        if (it == memo.end() || !it->second) throw std::runtime_error("a malformed pickle (memo)");
        push(it->second);
        break;
      }
      case 'c': {  // GLOBAL module\nname\n
        Value v = make(Kind::kGlobal);
        const std::string module = line();
        v->text = module + "." + line();
        push(v);
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        auto name = pop(), module = pop();
        if (name->kind != Kind::kString || module->kind != Kind::kString ||
            name->text.size() > kMaxNameBytes || module->text.size() > kMaxNameBytes)
          throw std::runtime_error("a malformed pickle (a global that is not two short names)");
        Value v = make(Kind::kGlobal);
        v->text = module->text + "." + name->text;
        push(v);
        break;
      }
      case 'Q': {  // BINPERSID: torch's storage reference
        const PickleRef id = pop();
        if (id->kind != Kind::kTuple || id->items.size() < 5 ||
            id->items[1]->kind != Kind::kGlobal || id->items[2]->kind != Kind::kString)
          throw std::runtime_error("a persistent id that is no torch storage");
        Value v = make(Kind::kStorage);
        v->text = id->items[2]->text;
        std::string type = id->items[1]->text;  // torch.IntStorage
        if (type.rfind("torch.", 0) == 0) type = type.substr(6);
        if (type.size() > 7 && type.compare(type.size() - 7, 7, "Storage") == 0)
          type.resize(type.size() - 7);
        v->dtype = type;
        push(v);
        break;
      }
      case 'R': {  // REDUCE
        auto args = pop(), callable = pop();
        push(reduce(arena, callable, args));
        break;
      }
      case 'b': pop(); break;  // BUILD: state dropped
      case 's': {
        auto v = pop(), k = pop();
        set_items({k, v});
        break;
      }                                        // SETITEM
      case 'u': set_items(pop_mark()); break;  // SETITEMS
      case 'a': {
        auto v = pop();
        mutable_top(Kind::kList)->items.push_back(v);
        break;
      }
      case 'e': {
        auto v = pop_mark();
        auto l = mutable_top(Kind::kList);
        l->items.insert(l->items.end(), v.begin(), v.end());
        break;
      }
      default:
        throw std::runtime_error("pickle opcode 0x" + [&] {
          char h[8];
          std::snprintf(h, sizeof h, "%02x", op);
          return std::string(h);
        }() + " is outside what moe-stats reads");
    }
  }
}

}  // namespace moe::stats
