#include "tools/moe-stats/binary_logs.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <vector>

#include "core/config.hpp"
#include "tools/moe-stats/count_text.hpp"
#include "tools/moe-stats/pickle_reader.hpp"
#include "tools/moe-stats/zip_archive.hpp"

namespace moe::stats {
namespace {

// A dump holds at most this many (step, layer) rows (about 80 bytes each in memory):
// 16k passes of 64 layers.
constexpr size_t kMaxRows = size_t{1} << 20;

enum class Dtype { kI8, kU8, kI16, kU16, kI32, kU32, kI64, kU64, kF32, kF64 };

size_t size_of(Dtype d) {
  switch (d) {
    case Dtype::kI8:
    case Dtype::kU8: return 1;
    case Dtype::kI16:
    case Dtype::kU16: return 2;
    case Dtype::kI32:
    case Dtype::kU32:
    case Dtype::kF32: return 4;
    default: return 8;
  }
}

bool dtype_named(const std::string& name, Dtype& out) {
  static const std::pair<const char*, Dtype> names[] = {
      {"I8", Dtype::kI8},     {"Char", Dtype::kI8},   {"U8", Dtype::kU8},     {"Byte", Dtype::kU8},
      {"I16", Dtype::kI16},   {"Short", Dtype::kI16}, {"U16", Dtype::kU16},   {"I32", Dtype::kI32},
      {"Int", Dtype::kI32},   {"U32", Dtype::kU32},   {"I64", Dtype::kI64},   {"Long", Dtype::kI64},
      {"U64", Dtype::kU64},   {"F32", Dtype::kF32},   {"Float", Dtype::kF32}, {"F64", Dtype::kF64},
      {"Double", Dtype::kF64}};
  for (const auto& [n, d] : names)
    if (name == n) {
      out = d;
      return true;
    }
  return false;
}

// A little-endian element as a count; throws for a negative or fractional one.
int64_t count_at(const unsigned char* p, Dtype d) {
  auto bits = [&](size_t n) {
    uint64_t v = 0;
    for (size_t j = n; j-- > 0;) v = (v << 8) | p[j];
    return v;
  };
  double real = 0;
  int64_t v = 0;
  switch (d) {
    case Dtype::kI8: v = static_cast<int8_t>(bits(1)); break;
    case Dtype::kU8: v = static_cast<int64_t>(bits(1)); break;
    case Dtype::kI16: v = static_cast<int16_t>(bits(2)); break;
    case Dtype::kU16: v = static_cast<int64_t>(bits(2)); break;
    case Dtype::kI32: v = static_cast<int32_t>(bits(4)); break;
    case Dtype::kU32: v = static_cast<int64_t>(bits(4)); break;
    case Dtype::kI64: v = static_cast<int64_t>(bits(8)); break;
    case Dtype::kU64: {
      const uint64_t u = bits(8);
      if (u > static_cast<uint64_t>(INT64_MAX)) throw std::runtime_error("a count past 2^63");
      v = static_cast<int64_t>(u);
      break;
    }
    case Dtype::kF32: {
      const uint32_t b = static_cast<uint32_t>(bits(4));
      float f;
      std::memcpy(&f, &b, 4);
      real = f;
      break;
    }
    case Dtype::kF64: {
      const uint64_t b = bits(8);
      std::memcpy(&real, &b, 8);
      break;
    }
  }
  if (d == Dtype::kF32 || d == Dtype::kF64) {
    if (!is_count(real)) throw std::runtime_error("a value that is not a count");
    return static_cast<int64_t>(real);
  }
  if (v < 0) throw std::runtime_error("a negative count");
  return v;
}

// One record's counts in the file.
struct Row {
  int64_t step = 0;
  int64_t layer = 0;  // its index, as every dump numbers layers
  int rank = -1;
  uint64_t offset = 0;  // bytes into the file
  int64_t experts = 0;
  Dtype dtype = Dtype::kI64;
};

// Records read a row at a time from a list of where their counts lie.
class RowSource : public RecordSource {
 public:
  RowSource(const std::string& path, std::vector<Row> rows, bool skip_empty)
      : path_(path),
        file_(path, std::ios::binary),
        rows_(std::move(rows)),
        skip_empty_(skip_empty) {}
  bool next(CountsRecord& out) override {
    while (next_ < rows_.size()) {
      const Row& row = rows_[next_++];
      std::vector<unsigned char> bytes(static_cast<size_t>(row.experts) * size_of(row.dtype));
      file_.clear();
      file_.seekg(static_cast<std::streamoff>(row.offset));
      file_.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
      if (static_cast<size_t>(file_.gcount()) != bytes.size())
        throw std::runtime_error(where_of(row) + ": the file ends inside the tensor");
      CountsRecord r;
      r.step = row.step;
      r.layer = std::to_string(row.layer);
      r.rank = row.rank;
      r.counts.resize(static_cast<size_t>(row.experts));
      bool any = false;
      for (int64_t e = 0; e < row.experts; ++e) {
        try {
          r.counts[e] = count_at(&bytes[e * size_of(row.dtype)], row.dtype);
        } catch (const std::runtime_error& error) {
          throw std::runtime_error(where_of(row) + ": expert " + std::to_string(e) + " holds " +
                                   error.what());
        }
        any = any || r.counts[e] > 0;
      }
      where_ = where_of(row);
      // A dense layer, or a pass never recorded: nothing was routed. A rank's empty row
      // is kept (the other ranks may have routed that layer); the assembler drops a
      // layer that every rank left empty.
      if (!any && skip_empty_ && row.rank < 0) continue;
      r.absent_when_empty = skip_empty_;
      out = std::move(r);
      return true;
    }
    return false;
  }
  std::string where() const override { return where_; }
  const ParseSummary& summary() const override { return summary_; }

 private:
  std::string where_of(const Row& row) const {
    return path_ + ": step " + std::to_string(row.step) + ", layer " + std::to_string(row.layer);
  }
  std::string path_;
  std::ifstream file_;
  std::vector<Row> rows_;
  bool skip_empty_;
  size_t next_ = 0;
  std::string where_;
  ParseSummary summary_;
};

std::runtime_error error(const std::string& path, const std::string& what) {
  return std::runtime_error(path + ": " + what);
}

// The rows of a contiguous tensor of 2 ([layer][expert]) or 3 ([step][layer][expert])
// dimensions, its steps numbered from first_step.
void tensor_rows(const std::string& path, const PickleValue& t,
                 const std::map<std::string, ZipEntry>& entries, const std::string& prefix,
                 int64_t first_step, int rank, std::vector<Row>& rows) {
  Dtype dtype;
  if (!dtype_named(t.dtype, dtype)) throw error(path, "a tensor of " + t.dtype + ", not of counts");
  if (t.shape.size() < 2 || t.shape.size() > 3)
    throw error(path, "a tensor of " + std::to_string(t.shape.size()) +
                          " dimensions; counts are [layer, expert] or [step, layer, expert]");
  const int64_t steps = t.shape.size() == 3 ? t.shape[0] : 1;
  const int64_t layers = t.shape[t.shape.size() - 2], experts = t.shape.back();
  for (int64_t size : t.shape)
    if (size < 0) throw error(path, "a tensor of a negative size");
  if (experts < 1) throw error(path, "a tensor of no experts");
  if (experts > kMaxExperts) throw error(path, "a tensor of more than 2^20 experts");
  if (steps == 0 || layers == 0) return;  // no counts at all
  if (steps > static_cast<int64_t>(kMaxRows) || layers > static_cast<int64_t>(kMaxRows) ||
      static_cast<size_t>(steps * layers) + rows.size() > kMaxRows)
    throw error(path, "more than 2^20 (step, layer) rows (docs/limits.md)");
  if (first_step < 0 || first_step > (int64_t{1} << 62))
    throw error(path, "a pass number outside [0, 2^62]");
  if (t.stride.size() != t.shape.size() || t.stride.back() != 1 ||
      t.stride[t.shape.size() - 2] != experts ||
      (t.shape.size() == 3 && t.stride[0] != layers * experts))
    throw error(path, "a tensor that is not contiguous (save tensor.contiguous())");
  if (t.offset < 0 || t.offset > (int64_t{1} << 48)) throw error(path, "a tensor past its storage");
  const auto entry = entries.find(prefix + "data/" + t.text);
  if (entry == entries.end()) throw error(path, "the archive lacks storage " + t.text);
  const uint64_t bytes =
      static_cast<uint64_t>(steps * layers * experts + t.offset) * size_of(dtype);
  if (t.offset < 0 || bytes > entry->second.size) throw error(path, "a tensor past its storage");
  for (int64_t s = 0; s < steps; ++s)
    for (int64_t l = 0; l < layers; ++l) {
      Row row;
      row.step = first_step + s;
      row.layer = l;
      row.rank = rank;
      row.dtype = dtype;
      row.experts = experts;
      row.offset = entry->second.offset +
                   static_cast<uint64_t>(t.offset + (s * layers + l) * experts) * size_of(dtype);
      rows.push_back(row);
    }
}

}  // namespace

LogKind sniff_log(const std::string& head, const std::string& name) {
  auto ends_with = [&](const char* suffix) {
    const size_t n = std::strlen(suffix);
    return name.size() >= n && name.compare(name.size() - n, n, suffix) == 0;
  };
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(head[i]); };
  if (head.size() >= 4 && head.compare(0, 4, "PK\x03\x04") == 0) return LogKind::kTorchSave;
  // safetensors: an 8-byte little-endian header length, then '{'.
  if (head.size() >= 10 && head[8] == '{' && (head[9] == '"' || head[9] == '}'))
    return LogKind::kSafetensors;
  // torch.save's format before PyTorch 1.6: a pickle (protocol 2) of a magic number.
  if (head.size() >= 2 && byte(0) == 0x80 && byte(1) == 0x02) return LogKind::kLegacyTorchSave;
  if (ends_with(".safetensors")) return LogKind::kSafetensors;
  if (ends_with(".pt") || ends_with(".pth")) return LogKind::kTorchSave;
  if (head.find('\0') != std::string::npos) return LogKind::kOtherBinary;
  return LogKind::kText;
}

LogKind sniff_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string head(4096, '\0');
  f.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(f.gcount()));
  return sniff_log(head, path);
}

std::string unreadable_kind(LogKind kind) {
  switch (kind) {
    case LogKind::kLegacyTorchSave:
      return "a torch.save file in the format before PyTorch 1.6, which moe-stats does not read: "
             "save it again with torch.save (zip format, the default)";
    case LogKind::kOtherBinary:
      return "a binary file of no format moe-stats reads (docs/telemetry.md#moe-stats)";
    default: return "a binary dump on stdin: give its path (moe-stats reads dumps by seeking)";
  }
}

std::unique_ptr<RecordSource> open_torch_save(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw error(path, "cannot open");
  const std::map<std::string, ZipEntry> entries = zip_entries(f, path);
  // Every entry lies under one folder (torch.save names it after the file).
  std::string prefix;
  for (const auto& [name, entry] : entries)
    if (name.size() >= 8 && name.compare(name.size() - 8, 8, "data.pkl") == 0)
      prefix = name.substr(0, name.size() - 8);
  const auto pkl = entries.find(prefix + "data.pkl");
  if (pkl == entries.end())
    throw error(path, "a ZIP archive without data.pkl: not a torch.save file");
  if (pkl->second.size > (uint64_t{64} << 20)) throw error(path, "a data.pkl past 64 MiB");
  std::string bytes(pkl->second.size, '\0');
  f.seekg(static_cast<std::streamoff>(pkl->second.offset));
  f.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  Pickle pickle;
  try {
    pickle = load_pickle(bytes);
  } catch (const std::runtime_error& e) {
    throw error(path, e.what());
  }
  const PickleRef root = pickle.root;
  std::vector<Row> rows;
  auto tensor = [&](const PickleRef& v) { return v && v->kind == PickleValue::Kind::kTensor; };
  if (tensor(root)) {
    tensor_rows(path, *root, entries, prefix, 1, -1, rows);
  } else if (root->kind == PickleValue::Kind::kDict) {
    if (const PickleRef records = root->at("records"); records) {  // SGLang per_pass
      if (records->kind != PickleValue::Kind::kList) throw error(path, "'records' is not a list");
      for (const PickleRef& record : records->items) {
        if (record->kind != PickleValue::Kind::kDict) throw error(path, "a record is not a dict");
        const PickleRef counts = record->at("global_physical_count");
        if (!tensor(counts))
          throw error(path,
                      "a record without global_physical_count (per_token dumps hold "
                      "token ids, not counts: record with --expert-distribution-recorder-mode "
                      "per_pass or stat)");
        const PickleRef pass = record->at("forward_pass_id"), rank = record->at("rank");
        if (!pass || pass->kind != PickleValue::Kind::kInt || !rank ||
            rank->kind != PickleValue::Kind::kInt || rank->integer < 0 ||
            rank->integer >= (1 << 24))
          throw error(path, "a record without integer forward_pass_id and rank");
        tensor_rows(path, *counts, entries, prefix, pass->integer, static_cast<int>(rank->integer),
                    rows);
      }
    } else {
      const char* keys[] = {"logical_count", "expert_load_window", "expert_load_pass"};
      bool found = false;
      for (const char* key : keys)
        if (const PickleRef t = root->at(key); t) {
          if (!tensor(t))
            throw error(path, std::string("'") + key + "' is not a dense tensor of counts");
          tensor_rows(path, *t, entries, prefix, 1, -1, rows);
          found = true;
          break;
        }
      if (!found)
        throw error(path,
                    "a torch.save dict without logical_count, records, expert_load_window "
                    "or expert_load_pass");
    }
  } else {
    throw error(path, "a torch.save file of neither a tensor nor a dict");
  }
  return std::make_unique<RowSource>(path, std::move(rows), /*skip_empty=*/true);
}

std::unique_ptr<RecordSource> open_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw error(path, "cannot open");
  unsigned char size_bytes[8];
  f.read(reinterpret_cast<char*>(size_bytes), 8);
  if (f.gcount() != 8) throw error(path, "a safetensors file shorter than its header size");
  uint64_t header_size = 0;
  for (int j = 7; j >= 0; --j) header_size = (header_size << 8) | size_bytes[j];
  if (header_size > (uint64_t{64} << 20)) throw error(path, "a safetensors header past 64 MiB");
  std::string header(header_size, '\0');
  f.read(header.data(), static_cast<std::streamsize>(header_size));
  if (static_cast<uint64_t>(f.gcount()) != header_size)
    throw error(path, "the header is cut short");
  f.seekg(0, std::ios::end);
  const uint64_t data_size = static_cast<uint64_t>(f.tellg()) - 8 - header_size;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception&) {
    throw error(path, "a safetensors header that is not JSON");
  }
  if (!j.is_object()) throw error(path, "a safetensors header that is not an object");
  std::vector<Row> rows;
  for (const auto& [name, t] : j.items()) {
    if (name == "__metadata__") continue;
    // TensorRT-LLM names each tensor <iteration>_<layer>.
    const size_t cut = name.find('_');
    Row row;
    try {
      if (cut == std::string::npos || name.find_first_not_of("0123456789_") != std::string::npos ||
          name.find('_', cut + 1) != std::string::npos)
        throw std::invalid_argument("name");
      row.step = std::stoll(name.substr(0, cut));
      row.layer = std::stoll(name.substr(cut + 1));
    } catch (const std::exception&) {
      throw error(path, "tensor '" + name + "' is not named <iteration>_<layer> (TensorRT-LLM)");
    }
    if (!t.is_object() || !t.contains("dtype") || !t["dtype"].is_string() || !t.contains("shape") ||
        !t["shape"].is_array() || !t.contains("data_offsets") || !t["data_offsets"].is_array() ||
        t["data_offsets"].size() != 2 || !t["data_offsets"][0].is_number_unsigned() ||
        !t["data_offsets"][1].is_number_unsigned())
      throw error(path, "tensor '" + name + "' lacks dtype, shape or data_offsets");
    if (!dtype_named(t["dtype"].get<std::string>(), row.dtype))
      throw error(
          path, "tensor '" + name + "' is of " + t["dtype"].get<std::string>() + ", not of counts");
    if (t["shape"].size() != 1 || !t["shape"][0].is_number_unsigned())
      throw error(path, "tensor '" + name + "' is not one count per slot");
    row.experts = t["shape"][0].get<int64_t>();
    const uint64_t begin = t["data_offsets"][0], end = t["data_offsets"][1];
    if (row.experts < 1 || row.experts > kMaxExperts || end < begin || end > data_size ||
        end - begin != static_cast<uint64_t>(row.experts) * size_of(row.dtype))
      throw error(path, "tensor '" + name + "' has a shape or offsets that do not hold");
    row.offset = 8 + header_size + begin;
    rows.push_back(row);
  }
  // Stored by name as text ("100_10" before "100_3"): read by iteration, then layer.
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return a.step != b.step ? a.step < b.step : a.layer < b.layer;
  });
  return std::make_unique<RowSource>(path, std::move(rows), /*skip_empty=*/false);
}

}  // namespace moe::stats
