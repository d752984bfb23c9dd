// JSON-lines counts logs, recognised by their keys:
//   {"step", "layer", "counts": [...]}                         plain
//   the library's JSONL export (expert_counts, expert_served, split, tokens)
//   moe-train's metrics.jsonl, whose step summaries ("kind", no counts) hold no record
//   Megatron-Core's tokens-per-expert dump (--save-tokens-per-expert-interval):
//     {"iter", "block", ["mtp_idx",] "layer", "tpe": [[microbatch][local expert]]}
//   vLLM's per-layer EPLB step metrics: {"engine", "step", "layer",
//     "num_logical_experts", "counts": [[logical expert, count], ...]} (nonzero only)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tools/moe-stats/counts_record.hpp"

namespace moe::stats {

// One JSON line; appends its record (if it holds one) to `out`, numbered `step` when
// the line names none. Throws LineError.
void parse_json(const std::string& line, int64_t step, std::vector<CountsRecord>& out);

}  // namespace moe::stats
