// moe-train's dashboard: plot_dashboard.py, found beside the binary (installed or in the
// build tree) and started without a shell, so no output path can run a command.
#pragma once

#include <string>

namespace moe::train {

// The plotting script: <binary's folder>/MOE_TRAIN_SCRIPT_RELATIVE/plot_dashboard.py.
// Empty when it is not there.
std::string dashboard_script();

// Runs `python3 SCRIPT METRICS PNG` and waits. Returns an empty string on success, else
// what went wrong (the interpreter's exit status or signal, or why it could not start).
std::string draw_dashboard(const std::string& metrics_jsonl, const std::string& png);

}  // namespace moe::train
