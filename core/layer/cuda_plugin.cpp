#include "core/layer/cuda_plugin.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backends/plugin.hpp"
#include "core/error.hpp"

namespace moe {
namespace {

// libmoe's own folder, resolved when the library is loaded (a relative path it was
// opened by would mean another folder once the process changes directory).
std::string own_directory() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&own_directory), &info) == 0 || info.dli_fname == nullptr)
    return "";
  char resolved[PATH_MAX];
  if (realpath(info.dli_fname, resolved) == nullptr) return "";
  std::string path(resolved);
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

const std::string library_directory = own_directory();

// Where the plugin belongs: beside libmoe ("" when libmoe's folder is unknown).
std::string expected_plugin_path() {
  return library_directory.empty() ? std::string() : library_directory + "/" MOE_CUDA_PLUGIN_FILE;
}

bool is_regular_file(const std::string& path) {
  struct stat info {};
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

#if defined(__x86_64__)
constexpr int kThisMachine = EM_X86_64;
#elif defined(__aarch64__)
constexpr int kThisMachine = EM_AARCH64;
#else
constexpr int kThisMachine = EM_NONE;  // not checked
#endif

// Why the file at `path` cannot be a plugin for this process, or "" when it may be:
// checked before dlopen, because the loader itself crashes on a truncated library
// (SIGBUS on the missing pages) and blocks on a FIFO. Opened without blocking.
std::string unloadable_reason(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return "cannot be opened";
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat info {};
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) return "is not a regular file";
  const auto size = static_cast<uint64_t>(info.st_size);
  Elf64_Ehdr header{};
  if (pread(fd, &header, sizeof header, 0) != static_cast<ssize_t>(sizeof header) ||
      std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0 || header.e_ident[EI_CLASS] != ELFCLASS64 ||
      header.e_type != ET_DYN || header.e_phentsize != sizeof(Elf64_Phdr))
    return "is not a 64-bit ELF shared library";
  if (kThisMachine != EM_NONE && header.e_machine != kThisMachine)
    return "is a shared library for another machine (ELF machine " +
           std::to_string(header.e_machine) + ", this one is " + std::to_string(kThisMachine) + ")";
  uint64_t needed = header.e_phoff + uint64_t{header.e_phnum} * sizeof(Elf64_Phdr);
  if (needed <= size) {
    std::vector<Elf64_Phdr> segments(header.e_phnum);
    const auto bytes = static_cast<ssize_t>(segments.size() * sizeof(Elf64_Phdr));
    if (pread(fd, segments.data(), bytes, static_cast<off_t>(header.e_phoff)) != bytes)
      return "cannot be read";
    for (const Elf64_Phdr& segment : segments)
      if (segment.p_type == PT_LOAD) needed = std::max(needed, segment.p_offset + segment.p_filesz);
  }
  if (header.e_shoff != 0)
    needed = std::max(needed, header.e_shoff + uint64_t{header.e_shnum} * header.e_shentsize);
  if (needed > size)
    return "is truncated (" + std::to_string(size) + " bytes; its headers and segments need " +
           std::to_string(needed) + ")";
  return "";
}

struct Loaded {
  Backend* backend = nullptr;
  std::string error;  // why not, when backend is null
};

Loaded load() {
  const std::string& path = cuda_plugin_path();
  const std::string expected = expected_plugin_path();
  struct stat link {};
  if (path.empty() && !expected.empty() && lstat(expected.c_str(), &link) == 0)
    return {nullptr, "backend 'cuda': " + expected +
                         ", where its plugin belongs, is not a regular file (or a link to "
                         "one): a directory, device, FIFO or broken link is there"};
  if (path.empty())
    return {nullptr, std::string("backend 'cuda' is a plugin, " MOE_CUDA_PLUGIN_FILE
                                 ", and there is none beside libmoe (in ") +
                         (library_directory.empty() ? "an unknown folder" : library_directory) +
                         "): this libmoe was built without the cuda backend "
                         "(-DMOE_WITH_CUDA=ON builds it), or the plugin was not installed "
                         "with it"};
  const std::string unloadable = unloadable_reason(path);
  if (!unloadable.empty())
    return {nullptr, "backend 'cuda': its plugin " + path + " " + unloadable +
                         " (reinstall the plugin built with this libmoe)"};
  // RTLD_LOCAL: the plugin's copy of the stages stays its own.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    // The file itself passed the checks above, so the loader's reason is most often a
    // library the plugin needs.
    const char* why = dlerror();
    return {nullptr, "backend 'cuda': cannot load its plugin " + path + ": " +
                         (why ? why : "unknown error") +
                         " (the plugin needs the CUDA runtime and cuBLAS libraries it was "
                         "built with)"};
  }
  auto entry = reinterpret_cast<moe_plugin_backend_fn>(dlsym(handle, MOE_PLUGIN_ENTRY_POINT));
  if (entry == nullptr)
    return {nullptr, "backend 'cuda': " + path + " is not a moe backend plugin (it has no " +
                         MOE_PLUGIN_ENTRY_POINT + ")"};
  const PluginInterface host = this_plugin_interface();
  PluginInterface plugin{};
  Backend* backend = entry(&host, &plugin);
  if (backend == nullptr || std::string(backend->name()) != kCudaBackendName)
    return {nullptr, "backend 'cuda': " + path +
                         " was built for another libmoe: install the plugin built with this "
                         "libmoe (the plugin: " +
                         (plugin.struct_size == sizeof(PluginInterface) ? describe(plugin)
                                                                        : std::string("?")) +
                         "; this libmoe: " + describe(host) + ")"};
  // The plugin stays loaded until the process exits, like its backend object.
  return {backend, ""};
}

}  // namespace

const std::string& cuda_plugin_path() {
  static const std::string path = [] {
    const std::string candidate = expected_plugin_path();
    return !candidate.empty() && is_regular_file(candidate) ? candidate : std::string();
  }();
  return path;
}

Backend& cuda_plugin_backend() {
  static const Loaded loaded = load();
  require(loaded.backend != nullptr, MOE_STATUS_UNSUPPORTED, loaded.error);
  return *loaded.backend;
}

}  // namespace moe
