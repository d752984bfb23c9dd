// The command-line conventions every moe tool shares (docs/tools.md): --help and --version
// exit 0, a bad command line exits 2 with one message on stderr, a failure at run time
// exits 1. CLI11's own exit codes (105, 109, ...) never reach the shell.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

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
// `keys` are the names a line may set (the long flags without "--"); an unknown key is
// reported with its file and line, which CLI11's own message lacks.
inline std::optional<std::string> config_file_problem(const std::string& path,
                                                      const std::vector<std::string>& keys) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return path + ": cannot open";
  std::string line;
  int64_t number = 0;
  const auto at = [&](const std::string& what) {
    return path + ":" + std::to_string(number) + ": " + what;
  };
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    for (unsigned char c : line)
      if ((c < 0x20 && c != '\t') || c == 0x7f) return at("not a text line (control byte)");
    const size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    const char lead = line[first];
    if (lead == '#' || lead == ';') continue;
    if (lead == '[') return at("sections are not used (options are top-level `key = value` lines)");
    const size_t eq = line.find('=');
    if (eq == std::string::npos || first == eq) return at("expected `key = value`, got: " + line);
    std::string key = line.substr(first, eq - first);
    key.erase(key.find_last_not_of(" \t") + 1);
    if (std::find(keys.begin(), keys.end(), key) == keys.end())
      return at("unknown key '" + key + "' (keys are the long flags without --; see --help)");
  }
  return std::nullopt;
}

// The config files named on the command line (`--config FILE` or `--config=FILE`).
inline std::vector<std::string> config_paths(const CLI::Option& config, int argc, char** argv) {
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (config.check_name(arg) && i + 1 < argc)
      paths.emplace_back(argv[i + 1]);
    else if (eq != std::string::npos && config.check_name(arg.substr(0, eq)))
      paths.push_back(arg.substr(eq + 1));
  }
  return paths;
}

// A bad command line: one message on stderr, then the usage exit code.
inline int usage_error(const std::string& tool, const std::string& message) {
  std::cerr << tool << ": " << message << "\nRun with --help for more information.\n";
  return kExitUsage;
}

// Parses the command line. Returns nothing when the tool should go on, else the exit
// code (0 after --help or --version, 2 for a bad command line).
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  // Unknown keys in --config are errors, as unknown flags are.
  app.allow_config_extras(CLI::config_extras_mode::error);
  try {
    if (CLI::Option* config = app.get_config_ptr()) {
      // Check the config file's text before CLI11 reads it (see config_file_problem).
      const std::vector<std::string> paths = config_paths(*config, argc, argv);
      std::vector<std::string> keys;
      for (const CLI::Option* option : app.get_options())
        if (option->get_configurable())
          for (const std::string& name : option->get_lnames()) keys.push_back(name);
      for (const std::string& path : paths)
        if (auto problem = config_file_problem(path, keys)) throw CLI::ConversionError(*problem);
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
    return usage_error(app.get_name(), e.what());
  }
  return std::nullopt;
}

// The last step of every tool: results that could not be written (a full disk, a closed
// pipe, /dev/full) are a failure at run time, not a success.
inline int finish(const std::string& tool, int status) {
  std::cout.flush();
  if (!std::cout || std::fflush(stdout) != 0 || std::ferror(stdout)) {
    std::cerr << tool << ": cannot write the results to stdout\n";
    return kExitFailure;
  }
  return status;
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

// A whole number in [low, high], written as digits: CLI11 alone reads "-1" into an unsigned
// as 2^64 - 1, clamps 99999999999999999999 to the type's largest value and calls 1e3 "not
// in range"; here each of those is refused, saying which it is.
inline CLI::Validator integer_in(long double low, long double high) {
  std::ostringstream range;
  range << std::fixed << std::setprecision(0) << "[" << low << ", " << high << "]";
  return CLI::Validator(
      [low, high, range = range.str()](std::string& text) -> std::string {
        const size_t start = !text.empty() && (text[0] == '-' || text[0] == '+') ? 1 : 0;
        if (text.size() == start ||
            text.find_first_not_of("0123456789", start) != std::string::npos)
          return "must be a whole number in " + range + ", got '" + text + "'";
        const long double value = std::strtold(text.c_str(), nullptr);
        if (value < low || value > high) return "must be in " + range + ", got " + text;
        return std::string();
      },
      "INT in " + range.str());
}

}  // namespace moe::tools
