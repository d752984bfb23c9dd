// Counter-based randomness: every draw is a pure function of (seed, step, token,
// expert), so results do not depend on thread count or call order, and a run is
// reproducible from its seed.
#pragma once

#include <math.h>

#include <cstdint>

#include "core/portable.hpp"

namespace moe {

// The splitmix64 finaliser: a fixed, well-mixed 64-bit bijection.
MOE_HOST_DEVICE inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

MOE_HOST_DEVICE inline uint64_t mix64(uint64_t a, uint64_t b) {
  return mix64(a ^ mix64(b));
}

// A uniform double in the open interval (0, 1).
MOE_HOST_DEVICE inline double uniform_open(uint64_t bits) {
  return (static_cast<double>(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

MOE_HOST_DEVICE inline uint64_t draw_bits(uint64_t seed, int64_t step, int64_t token,
                                          int64_t expert, uint64_t stream) {
  return mix64(mix64(mix64(seed, static_cast<uint64_t>(step)), static_cast<uint64_t>(token)),
               (static_cast<uint64_t>(expert) << 8) ^ stream);
}

MOE_HOST_DEVICE inline double standard_normal(uint64_t seed, int64_t step, int64_t token,
                                              int64_t expert) {
  const double u1 = uniform_open(draw_bits(seed, step, token, expert, 1));
  const double u2 = uniform_open(draw_bits(seed, step, token, expert, 2));
  return ::sqrt(-2.0 * ::log(u1)) * ::cos(6.283185307179586 * u2);
}

MOE_HOST_DEVICE inline double standard_gumbel(uint64_t seed, int64_t step, int64_t token,
                                              int64_t expert) {
  const double u = uniform_open(draw_bits(seed, step, token, expert, 3));
  return -::log(-::log(u));
}

}  // namespace moe
