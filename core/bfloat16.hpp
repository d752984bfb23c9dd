// bfloat16 on the host: the upper 16 bits of an IEEE float. Conversion from float
// rounds to nearest even (NaN stays NaN), as oneDNN and CUDA's __float2bfloat16 do,
// so every backend stores the same bits for the same float.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace moe {

struct bfloat16 {
  uint16_t bits;

  bfloat16() = default;
  // From any arithmetic value, through float (NOLINT: converts like a float).
  template <typename T, typename = std::enable_if_t<std::is_arithmetic<T>::value>>
  bfloat16(T value) : bits(round_from(static_cast<float>(value))) {}
  operator float() const {  // NOLINT: reads like a float
    const uint32_t widened = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &widened, sizeof value);
    return value;
  }

  static uint16_t round_from(float value) {
    uint32_t u;
    std::memcpy(&u, &value, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0)
      return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>((u + rounding) >> 16);
  }
};

static_assert(sizeof(bfloat16) == 2, "bfloat16 is two bytes");

}  // namespace moe
