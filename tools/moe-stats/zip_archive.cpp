#include "tools/moe-stats/zip_archive.hpp"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace moe::stats {
namespace {

uint32_t le(const unsigned char* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::vector<unsigned char> read_at(std::ifstream& f, uint64_t offset, size_t size) {
  std::vector<unsigned char> out(size);
  f.clear();
  f.seekg(static_cast<std::streamoff>(offset));
  f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(size));
  if (static_cast<size_t>(f.gcount()) != size) throw std::runtime_error("the archive ends early");
  return out;
}

}  // namespace

std::map<std::string, ZipEntry> zip_entries(std::ifstream& f, const std::string& path) {
  auto fail = [&](const std::string& what) { return std::runtime_error(path + ": " + what); };
  f.clear();
  f.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(f.tellg());
  // The end-of-central-directory record: 22 bytes and a comment of up to 64 KiB.
  const uint64_t tail = std::min<uint64_t>(file_size, 22 + 65535);
  const std::vector<unsigned char> end = read_at(f, file_size - tail, tail);
  int64_t at = -1;
  for (int64_t i = static_cast<int64_t>(tail) - 22; i >= 0; --i)
    if (le(&end[i], 4) == 0x06054b50) {
      at = i;
      break;
    }
  if (at < 0) throw fail("not a ZIP archive (no end of central directory)");
  const uint32_t count = le(&end[at + 10], 2), dir_size = le(&end[at + 12], 4),
                 dir_offset = le(&end[at + 16], 4);
  if (dir_offset == 0xFFFFFFFFu || count == 0xFFFFu)
    throw fail("a ZIP64 archive (past 4 GiB), which moe-stats does not read");
  if (uint64_t{dir_offset} + dir_size > file_size) throw fail("a broken central directory");
  const std::vector<unsigned char> dir = read_at(f, dir_offset, dir_size);
  std::map<std::string, ZipEntry> entries;
  size_t p = 0;
  for (uint32_t n = 0; n < count; ++n) {
    if (p + 46 > dir.size() || le(&dir[p], 4) != 0x02014b50)
      throw fail("a broken central directory");
    const uint32_t method = le(&dir[p + 10], 2), compressed = le(&dir[p + 20], 4),
                   name_size = le(&dir[p + 28], 2), extra = le(&dir[p + 30], 2),
                   comment = le(&dir[p + 32], 2), local = le(&dir[p + 42], 4);
    if (p + 46 + name_size > dir.size()) throw fail("a broken central directory");
    const std::string name(reinterpret_cast<const char*>(&dir[p + 46]), name_size);
    if (method != 0) throw fail("entry " + name + " is compressed (torch.save stores them plain)");
    if (compressed == 0xFFFFFFFFu || local == 0xFFFFFFFFu)
      throw fail("a ZIP64 archive (past 4 GiB), which moe-stats does not read");
    const std::vector<unsigned char> header = read_at(f, local, 30);
    if (le(&header[0], 4) != 0x04034b50) throw fail("entry " + name + " has no local header");
    ZipEntry e;
    e.offset = uint64_t{local} + 30 + le(&header[26], 2) + le(&header[28], 2);
    e.size = compressed;
    if (e.offset + e.size > file_size) throw fail("entry " + name + " runs past the file");
    entries[name] = e;
    p += 46 + name_size + extra + comment;
  }
  return entries;
}

}  // namespace moe::stats
