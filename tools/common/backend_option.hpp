// The --backend option's check, shared by the tools that link libmoe: "auto" or a
// backend compiled into this libmoe (moe_backend_name), listed in the error otherwise.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "moe/moe.h"

namespace moe::tools {

inline std::string backend_names() {
  std::string names = "auto";
  int32_t count = 0;
  if (moe_backend_count(&count) != MOE_STATUS_SUCCESS) return names;
  for (int32_t i = 0; i < count; ++i) {
    const char* name = nullptr;
    if (moe_backend_name(i, &name) == MOE_STATUS_SUCCESS && name) names += std::string(", ") + name;
  }
  return names;
}

inline CLI::Validator backend_validator() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        if (value == "auto") return std::string();
        int32_t count = 0;
        if (moe_backend_count(&count) == MOE_STATUS_SUCCESS)
          for (int32_t i = 0; i < count; ++i) {
            const char* name = nullptr;
            if (moe_backend_name(i, &name) == MOE_STATUS_SUCCESS && name && value == name)
              return std::string();
          }
        return "unknown backend '" + value + "' (this libmoe has: " + backend_names() + ")";
      },
      "BACKEND");
}

}  // namespace moe::tools
