#include "tools/moe-stats/count_text.hpp"

#include <cctype>
#include <cmath>
#include <stdexcept>

#include "core/config.hpp"

namespace moe::stats {

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

int64_t parse_count(const std::string& text, const char* what) {
  const std::string t = trim(text);
  if (t.empty()) throw LineError(std::string("empty ") + what);
  const std::string not_integer = std::string("not an integer ") + what + ": '" + t + "'";
  size_t used = 0;
  long long v = 0;
  const std::string too_large = std::string("a ") + what + " past 2^63 - 1: '" + t + "'";
  if (t.find_first_of(".eE") == std::string::npos) {
    try {
      v = std::stoll(t, &used);
    } catch (const std::out_of_range&) {
      throw LineError(too_large);
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
    if (std::isfinite(d) && d == std::floor(d) && d > 9.0e18) throw LineError(too_large);
    if (!(std::fabs(d) <= 9.0e18) || d != std::floor(d)) throw LineError(not_integer);
    v = static_cast<long long>(d);
  }
  if (used != t.size()) throw LineError(not_integer);
  if (v < 0) throw LineError(std::string("negative ") + what + ": " + t);
  return v;
}

int64_t checked_add(int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out)) throw LineError("counts past 2^63 - 1 once summed");
  return out;
}

bool is_count(double d) {
  return d >= 0 && d <= 9.0e18 && d == std::floor(d);
}

void push_count(std::vector<int64_t>& counts, int64_t count) {
  if (static_cast<int64_t>(counts.size()) >= kMaxExperts)
    throw LineError(
        "more than 2^20 counts in one record, the most experts a layer has "
        "(docs/limits.md)");
  counts.push_back(count);
}

}  // namespace moe::stats
