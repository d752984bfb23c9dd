// Enums that arrive through the ABI may hold any integer; loading an out-of-range
// value as the enum type is undefined behaviour, so validation reads the raw bits.
#pragma once

#include <cstring>
#include <string>

#include "core/error.hpp"

namespace moe {

template <typename Enum>
int raw_enum(const Enum& value) {
  static_assert(sizeof(Enum) == sizeof(int), "ABI enums are int-sized");
  int raw;
  std::memcpy(&raw, &value, sizeof raw);
  return raw;
}

// Throws INVALID_ARGUMENT unless `value` (taken by reference, read as raw bits) is one
// of first..last: "<name> is not a <type>: <raw value>".
template <typename Enum>
void require_enum(const Enum& value, int first, int last, const std::string& name,
                  const char* type) {
  const int raw = raw_enum(value);
  require(raw >= first && raw <= last, MOE_STATUS_INVALID_ARGUMENT,
          name + " is not a " + type + ": " + std::to_string(raw));
}

}  // namespace moe
