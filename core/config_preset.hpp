// Model-family presets: the routing conventions each family's published definition fixes
// (docs/routing.md, "Presets"), set over a caller's config.
#pragma once

#include <string>

#include "moe/moe.h"

namespace moe {

// Throws INVALID_ARGUMENT, naming the families, for an unknown one; `config` is then
// untouched.
void apply_preset(const std::string& family, moe_layer_config_t& config);

}  // namespace moe
