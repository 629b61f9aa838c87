#include "agent/intercept/restart_recovery.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "common/logging.h"

namespace shuttle::agent::intercept {
namespace {

// The kernel function a thread sleeps in while its notification waits for an answer.
constexpr char kSeccompWait[] = "seccomp_do_user_notification";

bool WaitsInSeccomp(pid_t pid, pid_t tid) {
  std::string path = "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/wchan";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[128];
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  return std::strstr(buf, kSeccompWait) != nullptr;
}

// Interrupts `tid` out of its wait and lets it go. True on success.
bool Restart(pid_t tid) {
  if (::ptrace(PTRACE_SEIZE, tid, nullptr, nullptr) != 0) {
    SHUTTLE_LOG(WARNING) << "restart recovery: PTRACE_SEIZE " << tid << ": "
                         << std::strerror(errno);
    return false;
  }
  bool ok = ::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) == 0;
  if (ok) {
    int status = 0;
    // The interrupt stop is reported like a child's; __WALL covers threads.
    ok = ::waitpid(tid, &status, __WALL) == tid;
  }
  if (::ptrace(PTRACE_DETACH, tid, nullptr, nullptr) != 0 && errno != ESRCH) {
    SHUTTLE_LOG(WARNING) << "restart recovery: PTRACE_DETACH " << tid << ": "
                         << std::strerror(errno);
  }
  return ok;
}

template <typename Fn>
void ForEachNumericEntry(const std::string& dir, Fn fn) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long n = std::strtol(e->d_name, &end, 10);
    if (end != e->d_name && *end == '\0' && n > 0) fn(static_cast<pid_t>(n));
  }
  ::closedir(d);
}

}  // namespace

RestartRecoveryStats RestartSeccompWaiters(const std::function<bool(pid_t)>& in_scope) {
  RestartRecoveryStats stats;
  const pid_t self = ::getpid();
  ForEachNumericEntry("/proc", [&](pid_t pid) {
    if (pid == self || !in_scope(pid)) return;
    ForEachNumericEntry("/proc/" + std::to_string(pid) + "/task", [&](pid_t tid) {
      ++stats.scanned_threads;
      if (!WaitsInSeccomp(pid, tid)) return;
      if (Restart(tid)) {
        ++stats.restarted;
      } else {
        ++stats.failed;
      }
    });
  });
  return stats;
}

}  // namespace shuttle::agent::intercept
