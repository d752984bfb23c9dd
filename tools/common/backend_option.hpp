// The --backend option's check, shared by the tools that link libmoe: "auto" or a
// backend compiled into this libmoe (moe_backend_name), listed in the error otherwise.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <string>
#include <vector>

#include "moe/moe.hpp"

namespace moe::tools {

// "auto", then this libmoe's backends in moe_backend_name's order.
inline std::vector<std::string> backend_choices() {
  std::vector<std::string> names = {"auto"};
  for (std::string& name : moe::backends()) names.push_back(std::move(name));
  return names;
}

inline CLI::Validator backend_validator() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        const std::vector<std::string> choices = backend_choices();
        if (std::find(choices.begin(), choices.end(), value) != choices.end()) return "";
        std::string listed;
        for (const std::string& name : choices) listed += (listed.empty() ? "" : ", ") + name;
        return "unknown backend '" + value + "' (this libmoe has: " + listed + ")";
      },
      "BACKEND");
}

}  // namespace moe::tools
