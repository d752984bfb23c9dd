// moe-stats --html: one self-contained page (its script and styles inlined, nothing
// fetched) with each layer's balance curves over the step windows, heat maps of each
// expert's load over time and of layer x expert, the per-rank load, and the verdicts.
#pragma once

#include <string>
#include <vector>

#include "tools/moe-stats/report.hpp"

namespace moe::stats {

// The heat maps show at most this many columns of time and rows of experts: windows
// and experts beyond are summed into neighbours, so the page stays small whatever the
// log (about 8 bytes a cell).
constexpr size_t kHeatColumns = 64;
constexpr size_t kHeatRows = 512;

std::string html_report(const std::vector<LayerReport>& report, const std::string& title);

}  // namespace moe::stats
