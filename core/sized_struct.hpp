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

// A size shorter than ours must be one an older version of the struct had: such sizes
// are multiples of the struct's alignment, so no field is cut in half (half a pointer
// read as a whole one would crash the call instead of refusing it).
template <typename T>
void require_whole_fields(const SizedHeader& header, const char* what) {
  require(header.size >= sizeof(T) || header.size % alignof(T) == 0, MOE_STATUS_INVALID_ARGUMENT,
          std::string(what) + "->size is " + std::to_string(header.size) +
              ", which cuts a field in half (an older version's size is a multiple of " +
              std::to_string(alignof(T)) + "); initialise the struct with its *_INIT macro");
}

// Returns `defaults` overlaid with the first min(in->size, sizeof(T)) bytes of *in.
template <typename T>
T read_sized(const T* in, const T& defaults, const char* what) {
  const SizedHeader header = checked_header(in, what);
  require_whole_fields<T>(header, what);
  T out = defaults;
  std::memcpy(static_cast<void*>(&out), in, std::min<size_t>(header.size, sizeof(T)));
  return out;
}

// Writes the first min(out->size, sizeof(T)) bytes of `value` into *out, keeping the
// caller's size and version fields.
template <typename T>
void write_sized(T* out, const T& value, const char* what) {
  const SizedHeader header = checked_header(out, what);
  require_whole_fields<T>(header, what);
  T copy = value;
  std::memcpy(static_cast<void*>(&copy), &header, sizeof(header));
  std::memcpy(static_cast<void*>(out), &copy, std::min<size_t>(header.size, sizeof(T)));
}

}  // namespace moe
