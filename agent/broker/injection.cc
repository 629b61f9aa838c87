#include "agent/broker/injection.h"

#include <fcntl.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/broker/errors.h"
#include "agent/broker/proc_files.h"
#include "common/status_macros.h"

namespace shuttle::agent::broker {
namespace {

using broker_internal::FieldValue;
using broker_internal::ReadProcFile;

#ifndef PIDFD_THREAD
constexpr unsigned kPidfdThread = O_EXCL;  // Linux 6.9: a pidfd for one thread.
#else
constexpr unsigned kPidfdThread = PIDFD_THREAD;
#endif

// Where the caller's status lines are; the thread may be any of its process's.
std::string StatusPath(pid_t tid) { return absl::StrCat("/proc/", tid, "/status"); }

absl::StatusOr<uint32_t> StatusNumber(const std::string& status, absl::string_view key,
                                      size_t column, pid_t tid) {
  std::optional<absl::string_view> value = FieldValue(status, key);
  std::vector<absl::string_view> columns;
  if (value) columns = absl::StrSplit(*value, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  uint32_t out = 0;
  if (columns.size() <= column || !absl::SimpleAtoi(columns[column], &out)) {
    return absl::InternalError(absl::StrCat("/proc/", tid, "/status: no usable ", key, " line"));
  }
  return out;
}

// A pidfd of thread `tid` (its process's on kernels before 6.9, which have no thread pidfds;
// fds are per process there for every caller that did not unshare its fd table).
absl::StatusOr<UniqueFd> ThreadPidfd(pid_t tid) {
  UniqueFd fd(static_cast<int>(syscall(SYS_pidfd_open, tid, kPidfdThread)));
  if (!fd && errno == EINVAL) {
    SHUTTLE_ASSIGN_OR_RETURN(std::string status, ReadProcFile(StatusPath(tid)));
    SHUTTLE_ASSIGN_OR_RETURN(uint32_t tgid, StatusNumber(status, "Tgid", 0, tid));
    fd.reset(static_cast<int>(syscall(SYS_pidfd_open, tgid, 0)));
  }
  if (!fd) {
    if (errno == ESRCH) return absl::NotFoundError(absl::StrCat("caller ", tid, " is gone"));
    return ErrnoError(errno, absl::StrCat("pidfd_open of caller ", tid));
  }
  return fd;
}

absl::StatusOr<int> SocketOption(int fd, int option, absl::string_view what) {
  int value = 0;
  socklen_t len = sizeof(value);
  if (getsockopt(fd, SOL_SOCKET, option, &value, &len) != 0) {
    if (errno == ENOTSOCK) {
      return ErrnoErrorWithCode(absl::StatusCode::kFailedPrecondition, ENOTSOCK,
                                absl::StrCat(what, " is not a socket"));
    }
    return ErrnoError(errno, absl::StrCat(what, ": getsockopt"));
  }
  return value;
}

struct SocketShape {
  int family = 0;
  int type = 0;
  int protocol = 0;
};

absl::StatusOr<SocketShape> ReadShape(int fd, absl::string_view what) {
  SocketShape s;
  SHUTTLE_ASSIGN_OR_RETURN(s.family, SocketOption(fd, SO_DOMAIN, what));
  SHUTTLE_ASSIGN_OR_RETURN(s.type, SocketOption(fd, SO_TYPE, what));
  SHUTTLE_ASSIGN_OR_RETURN(s.protocol, SocketOption(fd, SO_PROTOCOL, what));
  return s;
}

std::string ShapeText(const SocketShape& s) {
  return absl::StrCat("family ", s.family, " type ", s.type, " protocol ", s.protocol);
}

// Reads a timeval socket option (SO_SNDTIMEO, SO_RCVTIMEO) of `fd`.
absl::Status ReadTimeout(int fd, int option, timeval* out, absl::string_view what) {
  socklen_t len = sizeof(*out);
  if (getsockopt(fd, SOL_SOCKET, option, out, &len) != 0) {
    return ErrnoError(errno, absl::StrCat(what, ": reading a socket timeout"));
  }
  return absl::OkStatus();
}

bool IsZero(const timeval& tv) { return tv.tv_sec == 0 && tv.tv_usec == 0; }

absl::Status Ioctl(int listener_fd, uint64_t request, void* arg, uint64_t id,
                   absl::string_view what, int* result = nullptr) {
  int rc;
  do {
    rc = ioctl(listener_fd, request, arg);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(
          absl::StrCat("notification ", id, ": the caller is gone or was answered (", what, ")"));
    }
    return ErrnoError(errno, absl::StrCat("notification ", id, ": ", what));
  }
  if (result != nullptr) *result = rc;
  return absl::OkStatus();
}

absl::Status Send(int listener_fd, uint64_t id, int64_t val, int error) {
  seccomp_notif_resp resp = {};
  resp.id = id;
  resp.val = val;
  resp.error = -error;
  resp.flags = 0;
  return Ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp, id, "NOTIF_SEND");
}

}  // namespace

absl::StatusOr<Credentials> ReadCallerCredentials(pid_t tid) {
  SHUTTLE_ASSIGN_OR_RETURN(std::string status, ReadProcFile(StatusPath(tid)));
  Credentials creds;
  // "Uid:\treal\teffective\tsaved\tfs": the effective ids are the ones a connect uses.
  SHUTTLE_ASSIGN_OR_RETURN(creds.uid, StatusNumber(status, "Uid", 1, tid));
  SHUTTLE_ASSIGN_OR_RETURN(creds.gid, StatusNumber(status, "Gid", 1, tid));
  for (absl::string_view g : absl::StrSplit(FieldValue(status, "Groups").value_or(""),
                                            absl::ByAnyChar(" \t"), absl::SkipEmpty())) {
    gid_t group = 0;
    if (!absl::SimpleAtoi(g, &group)) {
      return absl::InternalError(absl::StrCat("/proc/", tid, "/status: bad group '", g, "'"));
    }
    creds.groups.push_back(group);
  }
  return creds;
}

namespace {

// What pidfd_getfd's errno `err` means for fd `fd` of caller thread `tid`.
absl::Status GetFdError(int err, pid_t tid, int fd) {
  if (err == EBADF) {
    return absl::NotFoundError(absl::StrCat("caller ", tid, " fd ", fd, " is not open"));
  }
  if (err == ESRCH) return absl::NotFoundError(absl::StrCat("caller ", tid, " is gone"));
  return ErrnoError(err, absl::StrCat("caller ", tid, " fd ", fd, ": pidfd_getfd"));
}

// pidfd_getfd of `fd` through `pidfd` (of thread `tid`), its errors named.
absl::StatusOr<UniqueFd> GetFd(int pidfd, pid_t tid, int fd) {
  UniqueFd copy(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, fd, 0)));
  if (!copy) return GetFdError(errno, tid, fd);
  return copy;
}

}  // namespace

absl::StatusOr<UniqueFd> DuplicateCallerFd(pid_t tid, int fd) {
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd pidfd, ThreadPidfd(tid));
  return GetFd(pidfd.get(), tid, fd);
}

absl::StatusOr<UniqueFd> CallerPidfds::Duplicate(pid_t tid, int fd) {
  absl::MutexLock lock(&mu_);
  auto it = pidfds_.find(tid);
  if (it != pidfds_.end()) {
    it->second.last_use = ++uses_;
    UniqueFd copy(static_cast<int>(syscall(SYS_pidfd_getfd, it->second.pidfd.get(), fd, 0)));
    if (copy) return copy;
    if (errno != ESRCH) return GetFdError(errno, tid, fd);
    pidfds_.erase(it);  // That thread has exited: `tid` may be another one's now.
  }
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd pidfd, ThreadPidfd(tid));
  absl::StatusOr<UniqueFd> copy = GetFd(pidfd.get(), tid, fd);
  if (!copy.ok()) return copy;
  if (pidfds_.size() >= capacity_ && capacity_ > 0) {
    auto oldest = pidfds_.begin();
    for (auto e = pidfds_.begin(); e != pidfds_.end(); ++e) {
      if (e->second.last_use < oldest->second.last_use) oldest = e;
    }
    pidfds_.erase(oldest);
  }
  if (capacity_ > 0) pidfds_[tid] = Entry{std::move(pidfd), ++uses_};
  return copy;
}

size_t CallerPidfds::size() const {
  absl::MutexLock lock(&mu_);
  return pidfds_.size();
}

absl::StatusOr<CallerSocket> InspectCallerSocket(pid_t tid, int fd) {
  const std::string what = absl::StrCat("caller ", tid, " fd ", fd);
  // The socket is seen through a duplicate in the agent (pidfd_getfd: the same open file).
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd copy, DuplicateCallerFd(tid, fd));
  CallerSocket info;
  SHUTTLE_ASSIGN_OR_RETURN(SocketShape shape, ReadShape(copy.get(), what));
  info.family = shape.family;
  info.type = shape.type;
  info.protocol = shape.protocol;
  const int fl = fcntl(copy.get(), F_GETFL);
  if (fl < 0) return ErrnoError(errno, absl::StrCat(what, ": fcntl F_GETFL"));
  info.nonblocking = (fl & O_NONBLOCK) != 0;
  if (info.type != SOCK_DGRAM) {
    sockaddr_storage peer;
    socklen_t len = sizeof(peer);
    info.connected = getpeername(copy.get(), reinterpret_cast<sockaddr*>(&peer), &len) == 0;
  }
  SHUTTLE_RETURN_IF_ERROR(ReadTimeout(copy.get(), SO_SNDTIMEO, &info.send_timeout, what));
  SHUTTLE_RETURN_IF_ERROR(ReadTimeout(copy.get(), SO_RCVTIMEO, &info.receive_timeout, what));
  // FD_CLOEXEC belongs to the caller's fd table entry, which only fdinfo shows: "flags:" is the
  // octal file status flags with O_CLOEXEC added when the entry has it.
  SHUTTLE_ASSIGN_OR_RETURN(std::string fdinfo,
                           ReadProcFile(absl::StrCat("/proc/", tid, "/fdinfo/", fd)));
  std::optional<absl::string_view> flags_text = FieldValue(fdinfo, "flags");
  unsigned flags = 0;
  if (!flags_text ||
      std::from_chars(flags_text->data(), flags_text->data() + flags_text->size(), flags, 8).ec !=
          std::errc()) {
    return absl::InternalError(absl::StrCat(what, ": no flags line in its fdinfo"));
  }
  info.cloexec = (flags & O_CLOEXEC) != 0;
  return info;
}

absl::Status InjectConnectedSocket(int listener_fd, uint64_t notif_id, int caller_fd,
                                   const CallerSocket& caller, UniqueFd brokered) {
  const std::string what = absl::StrCat("notification ", notif_id, ": caller fd ", caller_fd);
  SHUTTLE_ASSIGN_OR_RETURN(SocketShape ours, ReadShape(brokered.get(), "brokered socket"));
  const SocketShape theirs{caller.family, caller.type, caller.protocol};
  if (ours.family != theirs.family || ours.type != theirs.type ||
      ours.protocol != theirs.protocol) {
    return ErrnoErrorWithCode(absl::StatusCode::kFailedPrecondition, EPROTOTYPE,
                              absl::StrCat(what, " is a socket of ", ShapeText(theirs),
                                           ", the brokered one of ", ShapeText(ours)));
  }
  if (caller.connected) {
    return ErrnoErrorWithCode(absl::StatusCode::kFailedPrecondition, EISCONN,
                              absl::StrCat(what, " is already connected"));
  }
  // Status flags and options belong to the open file and socket, which are replaced: carry over
  // the ones a program relies on after connect(). The brokered socket is in blocking mode
  // without timeouts (Broker::Callback), so only what differs is set.
  if (caller.nonblocking && fcntl(brokered.get(), F_SETFL, O_NONBLOCK) != 0) {
    return ErrnoError(errno, absl::StrCat(what, ": setting O_NONBLOCK on the brokered socket"));
  }
  for (const auto& [option, value] : {std::pair{SO_SNDTIMEO, &caller.send_timeout},
                                      std::pair{SO_RCVTIMEO, &caller.receive_timeout}}) {
    if (!IsZero(*value) && setsockopt(brokered.get(), SOL_SOCKET, option, value, sizeof(*value))) {
      return ErrnoError(errno, absl::StrCat(what, ": copying a socket timeout"));
    }
  }

  // Everything above was read through the caller's tid: ADDFD succeeds only while the call is
  // still pending (the thread, hence its pid, is still the caller's and still in this
  // connect()), and fails with ENOENT (NOT_FOUND here) otherwise.
  seccomp_notif_addfd addfd = {};
  addfd.id = notif_id;
  addfd.flags = SECCOMP_ADDFD_FLAG_SETFD;
  addfd.srcfd = static_cast<uint32_t>(brokered.get());
  addfd.newfd = static_cast<uint32_t>(caller_fd);
  addfd.newfd_flags = caller.cloexec ? O_CLOEXEC : 0;
  SHUTTLE_RETURN_IF_ERROR(
      Ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd, notif_id, "NOTIF_ADDFD"));
  return Send(listener_fd, notif_id, 0, 0);
}

absl::StatusOr<int> InjectAsResult(int listener_fd, uint64_t notif_id, UniqueFd fd,
                                   uint32_t newfd_flags) {
  if ((newfd_flags & ~static_cast<uint32_t>(O_CLOEXEC)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("notification ", notif_id, ": newfd_flags may only be O_CLOEXEC"));
  }
  seccomp_notif_addfd addfd = {};
  addfd.id = notif_id;
  addfd.flags = SECCOMP_ADDFD_FLAG_SEND;
  addfd.srcfd = static_cast<uint32_t>(fd.get());
  addfd.newfd = 0;
  addfd.newfd_flags = newfd_flags;
  int newfd = -1;
  SHUTTLE_RETURN_IF_ERROR(Ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd, notif_id,
                                "NOTIF_ADDFD (send)", &newfd));
  return newfd;
}

absl::Status AnswerWithResult(int listener_fd, uint64_t notif_id, int64_t result) {
  return Send(listener_fd, notif_id, result, 0);
}

absl::Status FailNotification(int listener_fd, uint64_t notif_id, int error) {
  if (error <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("notification ", notif_id, ": failing with errno ", error));
  }
  return Send(listener_fd, notif_id, 0, error);
}

}  // namespace shuttle::agent::broker
