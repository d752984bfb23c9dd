// Enums that arrive through the ABI may hold any integer; loading an out-of-range
// value as the enum type is undefined behaviour, so validation reads the raw bits.
#pragma once

#include <cstring>

namespace moe {

template <typename Enum>
int raw_enum(const Enum& value) {
  static_assert(sizeof(Enum) == sizeof(int), "ABI enums are int-sized");
  int raw;
  std::memcpy(&raw, &value, sizeof raw);
  return raw;
}

}  // namespace moe
