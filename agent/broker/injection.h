// The broker's side of the intercepted caller: what it reads about the caller (its identity, the
// socket it is connecting) and how it hands a brokered descriptor to it through the seccomp
// listener (SECCOMP_IOCTL_NOTIF_ADDFD), answering the pending call in the same step.
//
// For connect(): the brokered, already connected socket replaces the caller's own socket under
// the same fd number (ADDFD with SECCOMP_ADDFD_FLAG_SETFD), keeping the caller's close-on-exec
// flag, O_NONBLOCK and send/receive timeouts, and then connect() returns 0. For mq_open(): the
// queue descriptor is installed and returned as the call's result in one atomic step
// (SECCOMP_ADDFD_FLAG_SEND). libseccomp 2.5.4 has no wrapper for either: raw ioctls.
//
// Every function here is thread-safe and never blocks (a few syscalls each) but for the
// caller's thread to take the descriptor; the notification must be pending (received, not yet
// answered): ADDFD and SEND fail with ENOENT otherwise, so what was read from the caller's pid is
// used only if that thread is still the caller, blocked in the call. `tid` is the
// notification's pid (a thread id in the agent's PID namespace).
#ifndef SHUTTLE_AGENT_BROKER_INJECTION_H_
#define SHUTTLE_AGENT_BROKER_INJECTION_H_

#include <sys/time.h>
#include <sys/types.h>

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/broker/broker.h"
#include "agent/intercept/unique_fd.h"

namespace shuttle::agent::broker {

// The socket an intercepted connect() was called on: everything the injection needs of it,
// read once (InspectCallerSocket) while the call is pending.
struct CallerSocket {
  int family = 0;                // SO_DOMAIN
  int type = 0;                  // SO_TYPE (SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET)
  int protocol = 0;              // SO_PROTOCOL
  bool nonblocking = false;      // O_NONBLOCK status flag.
  bool cloexec = false;          // FD_CLOEXEC on the caller's fd.
  bool connected = false;        // A stream/seqpacket socket that already has a peer.
  timeval send_timeout = {};     // SO_SNDTIMEO (zero: none).
  timeval receive_timeout = {};  // SO_RCVTIMEO (zero: none).
};

// The effective uid and gid and the supplementary groups of thread `tid` (/proc/TID/status), to
// pass as OpenOptions::as. NOT_FOUND if the thread is gone.
absl::StatusOr<Credentials> ReadCallerCredentials(pid_t tid);

// A duplicate of the caller's fd `fd` in the agent (pidfd_getfd): the same open file, so that
// connecting it connects the caller's socket. NOT_FOUND if the thread is gone or the fd is not
// open.
absl::StatusOr<UniqueFd> DuplicateCallerFd(pid_t tid, int fd);

// DuplicateCallerFd with the pidfds of recent callers' threads kept open, so that a thread that
// connects again and again (a client's connection pool, a benchmark) costs one pidfd_getfd, not
// pidfd_open + pidfd_getfd + close (each ~1.5-5 us in a VM). A kept pidfd stays bound to the
// thread it was opened for: once that thread has exited (and its tid may name another thread
// now), pidfd_getfd through it fails with ESRCH, and the pidfd is opened again for the tid.
// Thread-safe; keeps at most `capacity` pidfds (the least recently used go first).
class CallerPidfds {
 public:
  explicit CallerPidfds(size_t capacity = 256) : capacity_(capacity) {}
  absl::StatusOr<UniqueFd> Duplicate(pid_t tid, int fd);
  size_t size() const;

 private:
  struct Entry {
    UniqueFd pidfd;
    uint64_t last_use = 0;
  };
  const size_t capacity_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<pid_t, Entry> pidfds_ ABSL_GUARDED_BY(mu_);
  uint64_t uses_ ABSL_GUARDED_BY(mu_) = 0;
};

// What the caller's fd `fd` is. NOT_FOUND if the thread is gone or the fd is not open,
// FAILED_PRECONDITION (ENOTSOCK) if it is not a socket. Use `type` to choose the request type
// (UnixPathRequest::type etc.) before brokering.
absl::StatusOr<CallerSocket> InspectCallerSocket(pid_t tid, int fd);

// Answers the pending connect() notification `notif_id` on seccomp listener `listener_fd` (not
// owned) by putting `brokered` (a connected socket in blocking mode, consumed) in place of the
// caller's socket `caller_fd`, which InspectCallerSocket described as `caller` while the call was
// pending, and making connect() return 0. The caller's fd table entry is not read again: the
// swap happens only if the notification is still pending, i.e. the thread that `caller` was read
// from is still blocked in this connect(). Fails, leaving the
// notification pending for the caller to answer (FailNotification), with FAILED_PRECONDITION and
// EPROTOTYPE if `caller` is of another family, type or protocol than `brokered`, EISCONN if it is
// an already connected stream socket, NOT_FOUND if the caller is gone (nothing left to answer).
absl::Status InjectConnectedSocket(int listener_fd, uint64_t notif_id, int caller_fd,
                                   const CallerSocket& caller, UniqueFd brokered);

// Answers the pending notification `notif_id` by installing `fd` (consumed) in the caller as a new
// descriptor with `newfd_flags` (O_CLOEXEC or 0) and returning its number as the syscall's result
// (e.g. mq_open: whose descriptors are always close-on-exec). Returns that number. NOT_FOUND if
// the caller is gone.
absl::StatusOr<int> InjectAsResult(int listener_fd, uint64_t notif_id, UniqueFd fd,
                                   uint32_t newfd_flags);

// Answers the pending notification `notif_id` with `result` as the syscall's return value, the
// syscall itself not run (e.g. 0 for a connect() the agent made on the caller's socket).
// NOT_FOUND if the caller is gone.
absl::Status AnswerWithResult(int listener_fd, uint64_t notif_id, int64_t result);

// Answers the pending notification `notif_id` with failure `error` (positive errno, e.g. from
// ErrnoForStatus). NOT_FOUND if the caller is gone.
absl::Status FailNotification(int listener_fd, uint64_t notif_id, int error);

}  // namespace shuttle::agent::broker

#endif  // SHUTTLE_AGENT_BROKER_INJECTION_H_
