// --preset: a model family's options (moe_layer_config_preset), under the flags given.
#pragma once

#include <CLI/CLI.hpp>

#include "tools/moe-train/model.hpp"

namespace moe::train {

// Sets every option the family's preset decides, except those given on the command line
// or in the --config file, which win. No-op without --preset.
void apply_preset(const CLI::App& app, Options& o);

}  // namespace moe::train
