#include "core/telemetry/export.hpp"

#include <cmath>
#include <cstdio>
#include <set>

#include "core/error.hpp"

namespace moe {
namespace {

std::string number(double v, bool json) {
  if (std::isnan(v)) return json ? "null" : "NaN";
  if (std::isinf(v)) return json ? "null" : (v > 0 ? "+Inf" : "-Inf");
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.17g", v);
  return buffer;
}

// A JSON string of valid UTF-8 `s`: quotes, backslashes and every control character
// escaped (RFC 8259), and beyond that every character that some line splitter takes
// for a line break (DEL, the C1 controls with NEL, U+2028, U+2029), so that a JSONL
// record stays one line for every reader.
std::string json_string(const std::string& s) {
  std::string out = "\"";
  auto escape = [&](unsigned code) {
    char text[8];
    std::snprintf(text, sizeof text, "\\u%04x", code);
    out += text;
  };
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const auto byte = static_cast<unsigned char>(c);
    const auto next = i + 1 < s.size() ? static_cast<unsigned char>(s[i + 1]) : 0u;
    const auto third = i + 2 < s.size() ? static_cast<unsigned char>(s[i + 2]) : 0u;
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (byte < 0x20 || byte == 0x7F) {
      escape(byte);
    } else if (byte == 0xC2 && next >= 0x80 && next <= 0x9F) {  // U+0080..U+009F
      escape(next);
      ++i;
    } else if (byte == 0xE2 && next == 0x80 && (third == 0xA8 || third == 0xA9)) {
      escape(third == 0xA8 ? 0x2028 : 0x2029);
      i += 2;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// A Prometheus label value: backslash, double quote and line feed escaped, as the text
// exposition format requires.
std::string label_value(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

// A CSV field (RFC 4180): quoted, with quotes doubled, when it holds a comma, a quote
// or a line break, so that no name can forge columns or rows.
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string jsonl_line(const LayerExport& layer) {
  const ExportLabels& l = layer.labels;
  std::string out = "{\"step\":" + std::to_string(l.step) +
                    ",\"layer\":" + json_string(valid_utf8(l.layer)) + ",\"split\":\"" +
                    split_name(l.split) + "\",\"scope\":\"" + scope_name(l.scope) + "\"";
  for (size_t i = 0; i < catalogue().size(); ++i) {
    const auto& values = layer.metrics->values[i];
    out += ",\"" + std::string(catalogue()[i].name) + "\":";
    if (catalogue()[i].shape == MOE_METRIC_SCALAR) {
      out += number(values[0], true);
      continue;
    }
    out += "[";
    for (size_t j = 0; j < values.size(); ++j) out += (j ? "," : "") + number(values[j], true);
    out += "]";
  }
  if (!layer.metrics->rank_load.empty()) {  // under expert parallelism: each rank's load
    out += ",\"rank_load\":[";
    for (size_t r = 0; r < layer.metrics->rank_load.size(); ++r)
      out += (r ? "," : "") + std::to_string(layer.metrics->rank_load[r]);
    out += "]";
  }
  return out + "}\n";
}

std::string csv_header(const LayerExport& layer) {
  std::string header = "step,layer,split,scope";
  const int64_t E = layer.experts;
  for (size_t i = 0; i < catalogue().size(); ++i) {
    const std::string name = catalogue()[i].name;
    const size_t count = layer.metrics->values[i].size();
    for (size_t j = 0; j < count; ++j) {
      std::string column = name;
      if (catalogue()[i].shape == MOE_METRIC_PER_EXPERT) column += "_e" + std::to_string(j);
      if (catalogue()[i].shape == MOE_METRIC_MATRIX)
        column += "_" + std::to_string(static_cast<int64_t>(j) / E) + "_" +
                  std::to_string(static_cast<int64_t>(j) % E);
      header += "," + column;
    }
  }
  return header + "\n";
}

std::string csv_row(const LayerExport& layer) {
  const ExportLabels& l = layer.labels;
  std::string row = std::to_string(l.step) + "," + csv_field(valid_utf8(l.layer)) + "," +
                    split_name(l.split) + "," + scope_name(l.scope);
  for (const auto& values : layer.metrics->values)
    for (double v : values) row += "," + number(v, false);
  return row + "\n";
}

std::string prometheus(const std::vector<LayerExport>& layers) {
  std::string out;
  for (size_t i = 0; i < catalogue().size(); ++i) {
    const std::string name = std::string("moe_") + catalogue()[i].name;
    // Prometheus reserves the _total suffix for counters; dropped_total keeps its
    // contract name and is a counter (monotonic in the window scope, which is the one
    // to scrape).
    const bool counter = name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0;
    out += "# HELP " + name + " " + catalogue()[i].help + "\n# TYPE " + name +
           (counter ? " counter\n" : " gauge\n");
    for (const LayerExport& layer : layers) {
      const ExportLabels& l = layer.labels;
      const std::string labels = "layer=" + label_value(valid_utf8(l.layer)) + ",split=\"" +
                                 split_name(l.split) + "\",scope=\"" + scope_name(l.scope) + "\"";
      const auto& values = layer.metrics->values[i];
      const int64_t E = layer.experts;
      for (size_t j = 0; j < values.size(); ++j) {
        std::string extra;
        if (catalogue()[i].shape == MOE_METRIC_PER_EXPERT)
          extra = ",expert=\"" + std::to_string(j) + "\"";
        if (catalogue()[i].shape == MOE_METRIC_MATRIX)
          extra = ",expert=\"" + std::to_string(static_cast<int64_t>(j) / E) + "\",other=\"" +
                  std::to_string(static_cast<int64_t>(j) % E) + "\"";
        out += name + "{" + labels + extra + "} " + number(values[j], false) + "\n";
      }
    }
  }
  return out;
}

// Length of the valid UTF-8 sequence at s[i], or 0 (RFC 3629: no overlong forms, no
// surrogates, nothing past U+10FFFF).
size_t utf8_sequence(const std::string& s, size_t i) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  auto continuation = [&](size_t k) { return k < s.size() && (at(k) & 0xC0) == 0x80; };
  const unsigned char b = at(i);
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return continuation(i + 1) ? 2 : 0;
  if (b >= 0xE0 && b <= 0xEF) {
    if (!continuation(i + 1) || !continuation(i + 2)) return 0;
    if (b == 0xE0 && at(i + 1) < 0xA0) return 0;   // overlong
    if (b == 0xED && at(i + 1) >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    if (!continuation(i + 1) || !continuation(i + 2) || !continuation(i + 3)) return 0;
    if (b == 0xF0 && at(i + 1) < 0x90) return 0;   // overlong
    if (b == 0xF4 && at(i + 1) >= 0x90) return 0;  // past U+10FFFF
    return 4;
  }
  return 0;
}

}  // namespace

std::string valid_utf8(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_sequence(text, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
    } else {
      out.append(text, i, n);
      i += n;
    }
  }
  return out;
}

const char* split_name(moe_split_t split) {
  return split == MOE_SPLIT_EVAL ? "eval" : "train";
}

const char* scope_name(moe_scope_t scope) {
  return scope == MOE_SCOPE_WINDOW ? "window" : scope == MOE_SCOPE_EMA ? "ema" : "last";
}

std::string export_metrics(moe_export_format_t format, const std::vector<LayerExport>& layers) {
  // Names are compared as exported: two names that differ only in invalid bytes become
  // the same once repaired.
  std::set<std::string> names;
  for (const LayerExport& layer : layers) {
    const std::string name = valid_utf8(layer.labels.layer);
    require(names.insert(name).second, MOE_STATUS_INVALID_ARGUMENT,
            "two layers are named '" + name +
                "' (as exported): their series would collide (moe_layer_set_name)");
  }
  const bool csv =
      format == MOE_EXPORT_CSV || format == MOE_EXPORT_CSV_HEADER || format == MOE_EXPORT_CSV_ROW;
  if (csv)
    for (const LayerExport& layer : layers)
      require(layer.experts == layers.front().experts, MOE_STATUS_INVALID_ARGUMENT,
              "CSV has one header: the layers have " + std::to_string(layers.front().experts) +
                  " and " + std::to_string(layer.experts) +
                  " experts (export them apart, or as JSONL or Prometheus)");
  std::string out;
  switch (format) {
    case MOE_EXPORT_JSONL:
      for (const LayerExport& layer : layers) out += jsonl_line(layer);
      break;
    case MOE_EXPORT_CSV:
    case MOE_EXPORT_CSV_HEADER:
      if (!layers.empty()) out += csv_header(layers.front());
      if (format == MOE_EXPORT_CSV_HEADER) break;
      for (const LayerExport& layer : layers) out += csv_row(layer);
      break;
    case MOE_EXPORT_CSV_ROW:
      for (const LayerExport& layer : layers) out += csv_row(layer);
      break;
    case MOE_EXPORT_PROMETHEUS: out = prometheus(layers); break;
  }
  return out;
}

}  // namespace moe
