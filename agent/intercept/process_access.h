// How the notification loop looks into an intercepted process: its memory (the sockaddr,
// msghdr and queue name a syscall points at) and its file descriptors (the type of a socket,
// the target of a pidfd). Interfaces so the decoder is tested with fakes (fake_process.h);
// the real implementations use process_vm_readv and pidfd_getfd.
//
// Nothing here is cached across calls: a pid may be reused as soon as its process dies, so
// every answer is only as good as the seccomp ID_VALID check that follows it.
#ifndef SHUTTLE_AGENT_INTERCEPT_PROCESS_ACCESS_H_
#define SHUTTLE_AGENT_INTERCEPT_PROCESS_ACCESS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace shuttle::agent::intercept {

class ProcessMemory {
 public:
  virtual ~ProcessMemory() = default;

  // Copies up to `len` bytes from address `addr` of thread `pid` (agent's PID namespace) into
  // `buf`. Returns the number of bytes copied, which is less than `len` when the range runs
  // into unmapped memory (page granularity), or -errno: -EFAULT when nothing at `addr` is
  // readable, -ESRCH when the thread is gone, anything else when the agent may not look.
  // Thread-safe.
  virtual ssize_t Read(pid_t pid, uint64_t addr, void* buf, size_t len) = 0;
};

class ProcessFds {
 public:
  virtual ~ProcessFds() = default;

  // The type (SOCK_STREAM, SOCK_DGRAM, ...) of the socket that is fd `fd` of thread `pid`.
  // -EBADF: no such fd; -ENOTSOCK: not a socket; -ESRCH: the thread is gone. Thread-safe.
  virtual int SocketType(pid_t pid, int fd) = 0;

  // The process that pidfd `fd` of thread `pid` refers to, as its pid in the target's own
  // (innermost) PID namespace, stored in `*target` (-1 if that process has exited). Returns 0,
  // or -EBADF (no such fd, or not a pidfd), -ESRCH (thread `pid` is gone). Thread-safe.
  virtual int PidOfPidfd(pid_t pid, int fd, int32_t* target) = 0;
};

// process_vm_readv(2): one syscall per read, no descriptor kept. Needs the agent to be allowed
// to ptrace the process (root with CAP_SYS_PTRACE in the same user namespace).
class RealProcessMemory final : public ProcessMemory {
 public:
  ssize_t Read(pid_t pid, uint64_t addr, void* buf, size_t len) override;
};

// pidfd_open + pidfd_getfd + getsockopt(SO_TYPE) (or a read of /proc/self/fdinfo for a pidfd),
// then close: five syscalls, about 2-3 us, paid only for calls whose kind depends on the socket
// type (a loopback IP address), never for AF_UNIX. /proc/PID/fdinfo of a socket does not show
// its type, and caching by (pid, fd) is unsafe (fd numbers are reused), hence this way.
class RealProcessFds final : public ProcessFds {
 public:
  int SocketType(pid_t pid, int fd) override;
  int PidOfPidfd(pid_t pid, int fd, int32_t* target) override;
};

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_PROCESS_ACCESS_H_
