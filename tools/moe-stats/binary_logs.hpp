// Binary expert-load dumps, recognised by their first bytes:
//   torch.save archives (a ZIP): SGLang's expert-distribution dumps ({"logical_count":
//     [passes, layers, experts]}, or per-pass {"records": [{"rank", "forward_pass_id",
//     "global_physical_count": [layers, physical experts]}]}), vLLM's EPLB load
//     ({"expert_load_window": [window, layers, physical experts]} or
//     "expert_load_pass": [layers, ...]) and a bare 2-D or 3-D tensor of counts;
//   safetensors files: TensorRT-LLM's expert statistics (rank<r>.safetensors, one
//     tensor "<iteration>_<layer>" of counts per slot).
// Each tensor row is read from the file when its record is due, so memory holds one
// layer's counts, not the dump.
#pragma once

#include <memory>
#include <string>

#include "tools/moe-stats/counts_log.hpp"

namespace moe::stats {

enum class LogKind { kText, kTorchSave, kSafetensors, kLegacyTorchSave, kOtherBinary };

// What a log holds, from its first bytes (`head`: up to 4 KiB of them) and, for a file
// too short or broken to tell, its name's extension (.pt, .pth, .safetensors).
LogKind sniff_log(const std::string& head, const std::string& name);
LogKind sniff_file(const std::string& path);

// The message for a log of a kind moe-stats does not read (kLegacyTorchSave,
// kOtherBinary), or for a binary dump on stdin.
std::string unreadable_kind(LogKind kind);

std::unique_ptr<RecordSource> open_torch_save(const std::string& path);
std::unique_ptr<RecordSource> open_safetensors(const std::string& path);

}  // namespace moe::stats
