// Reading the size-versioned structs of the ABI: a caller compiled against an older
// moe.h passes a smaller struct; we copy the bytes it has and keep our defaults for
// the fields it did not know about.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.hpp"

namespace moe {

// Every sized struct begins with these two fields.
struct SizedHeader {
  uint32_t size;
  uint32_t version;
};

// The header of a caller's sized struct, checked to be initialised.
inline SizedHeader checked_header(const void* in, const char* what) {
  require(in != nullptr, MOE_STATUS_NULL_POINTER, std::string(what) + " is NULL");
  SizedHeader header;
  std::memcpy(&header, in, sizeof(header));
  require(header.size >= sizeof(SizedHeader), MOE_STATUS_INVALID_ARGUMENT,
          std::string(what) + "->size is " + std::to_string(header.size) +
              "; initialise the struct with its *_INIT macro");
  return header;
}

// Returns `defaults` overlaid with the first min(in->size, sizeof(T)) bytes of *in.
template <typename T>
T read_sized(const T* in, const T& defaults, const char* what) {
  const SizedHeader header = checked_header(in, what);
  T out = defaults;
  std::memcpy(static_cast<void*>(&out), in, std::min<size_t>(header.size, sizeof(T)));
  return out;
}

// Writes the first min(out->size, sizeof(T)) bytes of `value` into *out, keeping the
// caller's size and version fields.
template <typename T>
void write_sized(T* out, const T& value, const char* what) {
  const SizedHeader header = checked_header(out, what);
  T copy = value;
  std::memcpy(static_cast<void*>(&copy), &header, sizeof(header));
  std::memcpy(static_cast<void*>(out), &copy, std::min<size_t>(header.size, sizeof(T)));
}

}  // namespace moe
