// The entries of a ZIP archive stored without compression, as torch.save writes them:
// where each one's bytes lie in the file, read from the central directory.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>

namespace moe::stats {

struct ZipEntry {
  uint64_t offset = 0;  // of the entry's data in the file
  uint64_t size = 0;
};

// Throws std::runtime_error for a file that is no ZIP archive, a compressed entry or a
// ZIP64 archive (files past 4 GiB, which this reader does not take).
std::map<std::string, ZipEntry> zip_entries(std::ifstream& file, const std::string& path);

}  // namespace moe::stats
