// The registry: the one place that knows which backends exist (backend_registry.cpp).
#pragma once

#include <string>

#include "backends/backend.hpp"

namespace moe {

int backend_count();
// Names of the backends a layer can ask for: the compiled-in ones, and the cuda plugin
// when its file is beside libmoe (listing it does not load it).
const char* backend_name(int index);
// "auto" picks the first registered host-memory backend (fastest first, cpu_ref last)
// that supports the config; a name picks that backend or throws.
Backend& select_backend(const std::string& name, const LayerConfig& config);

}  // namespace moe
