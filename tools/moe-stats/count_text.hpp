// Counts written as text: what every log format moe-stats reads shares.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe::stats {

// An error in the text of one record (the parser names its file and line).
struct LineError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string trim(const std::string& s);

// A count: an integer, or a number written as a float that holds one ("12.", "1.2e+03",
// as PyTorch prints a float tensor of counts). Throws LineError naming `what` otherwise.
int64_t parse_count(const std::string& text, const char* what);

// a + b, or LineError when the sum passes 2^63 - 1 (counts summed over steps, ranks,
// microbatches or a dump's rows).
int64_t checked_add(int64_t a, int64_t b);

// Whether a number read as a double is a count: whole, non-negative, at most 9e18.
bool is_count(double d);

// Appends a count, refusing more than a layer's limit on experts (docs/limits.md).
void push_count(std::vector<int64_t>& counts, int64_t count);

}  // namespace moe::stats
