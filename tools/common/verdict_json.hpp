// A verdict as JSON, the same way in every tool: non-finite numbers become null.
#pragma once

#include <cmath>
#include <nlohmann/json.hpp>

#include "moe/moe.h"

namespace moe::tools {

inline nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json();
}

inline nlohmann::json verdict_json(const moe_verdict_t& v) {
  return nlohmann::json{{"label", v.label},
                        {"metric", v.metric},
                        {"value", finite_or_null(v.value)},
                        {"threshold", finite_or_null(v.threshold)},
                        {"hint", v.hint}};
}

}  // namespace moe::tools
