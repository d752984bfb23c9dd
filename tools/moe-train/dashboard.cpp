#include "tools/moe-train/dashboard.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

extern char** environ;

#ifndef MOE_TRAIN_SCRIPT_RELATIVE
#define MOE_TRAIN_SCRIPT_RELATIVE "../share/moe"
#endif

namespace moe::train {

std::string dashboard_script() {
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return "";
  const std::filesystem::path script =
      self.parent_path() / MOE_TRAIN_SCRIPT_RELATIVE / "plot_dashboard.py";
  return std::filesystem::is_regular_file(script, error) ? script.lexically_normal().string() : "";
}

std::string draw_dashboard(const std::string& metrics_jsonl, const std::string& png) {
  const std::string script = dashboard_script();
  if (script.empty())
    return "plot_dashboard.py not found beside the binary (" MOE_TRAIN_SCRIPT_RELATIVE ")";
  // Debian's interpreter has matplotlib (python3-matplotlib); another on PATH may not.
  const std::string python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
  std::vector<std::string> args = {python, script, metrics_jsonl, png};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ);
  if (rc != 0) return "cannot start " + python + ": " + std::strerror(rc);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return std::string("waitpid: ") + std::strerror(errno);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
  if (WIFSIGNALED(status))
    return python + " was killed by signal " + std::to_string(WTERMSIG(status));
  return python + " " + script + " exited with status " + std::to_string(WEXITSTATUS(status)) +
         " (it needs python3-matplotlib)";
}

}  // namespace moe::train
