// The command-line conventions every moe tool shares (docs/tools.md): --help and --version
// exit 0, a bad command line exits 2 with one message on stderr, a failure at run time
// exits 1. CLI11's own exit codes (105, 109, ...) never reach the shell.
#pragma once

#include <CLI/CLI.hpp>
#include <cmath>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>

namespace moe::tools {

enum ExitCode : int { kExitSuccess = 0, kExitFailure = 1, kExitUsage = 2 };

#ifndef MOE_TOOLS_VERSION
#define MOE_TOOLS_VERSION "unknown"
#endif

// Adds --version ("<tool> <version>") to the app.
inline void add_version_flag(CLI::App& app, const std::string& tool) {
  app.set_version_flag("--version", tool + " " + MOE_TOOLS_VERSION);
}

// A config file must be text made of `key = value` lines, comments and blank lines: CLI11
// alone would skip a line it cannot read, so a file of binary garbage would configure
// nothing and say nothing. (No tool has subcommands, so a [section] has no meaning.)
inline std::optional<std::string> config_file_problem(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return path + ": cannot open";
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    for (unsigned char c : line)
      if ((c < 0x20 && c != '\t') || c == 0x7f)
        return path + ":" + std::to_string(number) + ": not a text line (control byte)";
    const size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    const char lead = line[first];
    if (lead == '#' || lead == ';') continue;
    if (lead == '[')
      return path + ":" + std::to_string(number) +
             ": sections are not used (options are top-level `key = value` lines)";
    const size_t eq = line.find('=');
    if (eq == std::string::npos || line.find_first_not_of(" \t", first) == eq)
      return path + ":" + std::to_string(number) + ": expected `key = value`, got: " + line;
  }
  return std::nullopt;
}

// Parses the command line. Returns nothing when the tool should go on, else the exit
// code (0 after --help or --version, 2 for a bad command line).
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  // Unknown keys in --config are errors, as unknown flags are.
  app.allow_config_extras(CLI::config_extras_mode::error);
  try {
    if (CLI::Option* config = app.get_config_ptr()) {
      // Check the config file's text before CLI11 reads it (see config_file_problem).
      for (int i = 1; i + 1 < argc; ++i)
        if (config->check_name(argv[i]))
          if (auto problem = config_file_problem(argv[i + 1])) throw CLI::ConversionError(*problem);
      for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        const size_t eq = arg.find('=');
        if (eq != std::string::npos && config->check_name(arg.substr(0, eq)))
          if (auto problem = config_file_problem(arg.substr(eq + 1)))
            throw CLI::ConversionError(*problem);
      }
    }
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return kExitSuccess;
  } catch (const CLI::CallForAllHelp&) {
    std::cout << app.help("", CLI::AppFormatMode::All);
    return kExitSuccess;
  } catch (const CLI::CallForVersion& e) {
    std::cout << e.what() << "\n";
    return kExitSuccess;
  } catch (const CLI::ParseError& e) {
    std::cerr << app.get_name() << ": " << e.what() << "\n"
              << "Run with --help for more information.\n";
    return kExitUsage;
  }
  return std::nullopt;
}

// Validators that also refuse NaN and infinities, which CLI11's number checks let by.
inline CLI::Validator finite_at_least(double low, bool inclusive = true) {
  std::ostringstream what;
  what << (inclusive ? ">= " : "> ") << low;
  return CLI::Validator(
      [low, inclusive, description = what.str()](std::string& text) -> std::string {
        double value = 0;
        std::istringstream in(text);
        if (!(in >> value) || !(in >> std::ws).eof()) return "not a number: " + text;
        if (!std::isfinite(value)) return "must be finite, got " + text;
        if (inclusive ? value < low : value <= low)
          return "must be " + description + ", got " + text;
        return std::string();
      },
      (inclusive ? "NUMBER >= " : "NUMBER > ") + what.str().substr(inclusive ? 3 : 2));
}

// A whole number >= 0 written as digits (CLI11 reads "-1" into an unsigned as 2^64 - 1).
inline CLI::Validator digits_only() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos)
          return "must be a whole number >= 0, got " + text;
        return std::string();
      },
      "UINT");
}

}  // namespace moe::tools
