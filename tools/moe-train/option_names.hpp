// The names moe-train's flags give the library's enums, one table each (in enum order),
// read both ways: a flag's value to its enum, and a preset's enum back to a flag value.
#pragma once

#include <iterator>
#include <stdexcept>
#include <string>

#include "moe/moe.h"

namespace moe::train {

inline constexpr const char* kActivationNames[] = {"relu", "gelu",   "gelu_tanh",
                                                   "silu", "swiglu", "geglu"};
inline constexpr const char* kRouterNames[] = {"softmax", "sigmoid", "hash", "expert_choice"};
inline constexpr const char* kHashModeNames[] = {"auto", "mix", "table", "content", "balanced"};
inline constexpr const char* kCapacityOrderNames[] = {"token", "slot_major", "batch_prioritized",
                                                      "random"};
inline constexpr const char* kAuxLossScopeNames[] = {"batch", "sequence", "global"};

// The enum named `name` in `names`; std::invalid_argument naming `what` otherwise.
template <typename Enum, size_t N>
Enum enum_named(const char* const (&names)[N], const std::string& name, const char* what) {
  for (size_t i = 0; i < N; ++i)
    if (name == names[i]) return static_cast<Enum>(i);
  throw std::invalid_argument(std::string("unknown ") + what + " '" + name + "'");
}

}  // namespace moe::train
