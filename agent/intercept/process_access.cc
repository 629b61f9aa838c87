#include "agent/intercept/process_access.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "agent/intercept/unique_fd.h"

namespace shuttle::agent::intercept {
namespace {

#ifndef PIDFD_THREAD
constexpr unsigned kPidfdThread = O_EXCL;  // Linux 6.9: a pidfd for one thread.
#else
constexpr unsigned kPidfdThread = PIDFD_THREAD;
#endif

// A pidfd for thread `tid` (seccomp reports thread ids); falls back to a process pidfd on
// kernels before 6.9, which then only works for thread-group leaders.
int OpenThreadPidfd(pid_t tid) {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, tid, kPidfdThread));
  if (fd < 0 && errno == EINVAL) fd = static_cast<int>(syscall(SYS_pidfd_open, tid, 0));
  return fd < 0 ? -errno : fd;
}

// A duplicate of fd `fd` of thread `pid`, or -errno (-ESRCH when the thread is gone).
int TakeFd(pid_t pid, int fd) {
  int pidfd = OpenThreadPidfd(pid);
  if (pidfd < 0) return pidfd;
  UniqueFd owner(pidfd);
  int copy = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, fd, 0));
  return copy < 0 ? -errno : copy;
}

}  // namespace

ssize_t RealProcessMemory::Read(pid_t pid, uint64_t addr, void* buf, size_t len) {
  if (len == 0) return 0;
  iovec local{buf, len};
  // The address belongs to the other process; it is never dereferenced here.
  iovec remote{
      reinterpret_cast<void*>(static_cast<uintptr_t>(addr)),  // NOLINT(performance-no-int-to-ptr)
      len};
  ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
  if (n < 0) return -errno;
  return n;
}

int RealProcessFds::SocketType(pid_t pid, int fd) {
  int copy = TakeFd(pid, fd);
  if (copy < 0) return copy;
  UniqueFd owner(copy);
  int type = 0;
  socklen_t len = sizeof(type);
  if (getsockopt(copy, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return -errno;
  return type;
}

int RealProcessFds::PidOfPidfd(pid_t pid, int fd, int32_t* target) {
  int copy = TakeFd(pid, fd);
  if (copy < 0) return copy;
  UniqueFd owner(copy);
  // /proc/self/fdinfo/N of a pidfd has "Pid:\tP" (-1 once exited) and "NSpid:\tP1 P2 ..." whose
  // last entry is the pid in the target's innermost namespace.
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", copy);
  UniqueFd info(open(path, O_RDONLY | O_CLOEXEC));
  if (!info) return -errno;
  char text[1024];
  ssize_t n = read(info.get(), text, sizeof(text) - 1);
  if (n < 0) return -errno;
  text[n] = '\0';
  const char* pid_line = std::strstr(text, "\nPid:");
  if (pid_line == nullptr) return -EBADF;  // Not a pidfd.
  int64_t pid_value = std::strtoll(pid_line + 5, nullptr, 10);
  if (pid_value <= 0) {
    *target = -1;
    return 0;
  }
  const char* ns_line = std::strstr(text, "\nNSpid:");
  if (ns_line == nullptr) {
    *target = static_cast<int32_t>(pid_value);
    return 0;
  }
  const char* p = ns_line + 7;
  int64_t last = pid_value;
  for (;;) {
    char* end = nullptr;
    int64_t v = std::strtoll(p, &end, 10);
    if (end == p) break;
    last = v;
    p = end;
    if (*p == '\n' || *p == '\0') break;
  }
  *target = static_cast<int32_t>(last);
  return 0;
}

}  // namespace shuttle::agent::intercept
