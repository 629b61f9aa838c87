#include "agent/broker/openers.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/broker/errors.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace shuttle::agent::broker_internal {
namespace {

using broker::ErrnoError;
using broker::ErrnoErrorWithCode;

// Flags a caller may pass to mq_open (the kernel ignores others; we refuse them).
constexpr int kMqFlags = O_ACCMODE | O_CREAT | O_EXCL | O_NONBLOCK;
// openat2 fails with EAGAIN when a rename raced one of its ".." steps under RESOLVE_IN_ROOT.
constexpr int kResolveAttempts = 8;
// The longest abstract name: sun_path minus its leading NUL.
constexpr size_t kMaxAbstractName = sizeof(sockaddr_un::sun_path) - 1;

absl::Status Invalid(absl::string_view what) {
  return ErrnoErrorWithCode(absl::StatusCode::kInvalidArgument, EINVAL, what);
}

absl::Status ValidateUnixType(int type) {
  if (type == SOCK_STREAM || type == SOCK_SEQPACKET || type == SOCK_DGRAM) {
    return absl::OkStatus();
  }
  return Invalid(
      absl::StrCat("unix socket type ", type, " is not SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM"));
}

absl::Status Validate(const broker::UnixPathRequest& r) {
  SHUTTLE_RETURN_IF_ERROR(ValidateUnixPath(r.path));
  return ValidateUnixType(r.type);
}

absl::Status Validate(const broker::UnixAbstractRequest& r) {
  if (r.name.empty() || r.name.size() > kMaxAbstractName) {
    return Invalid(absl::StrCat("abstract unix socket name of ", r.name.size(),
                                " bytes (must be 1 to ", kMaxAbstractName, ")"));
  }
  return ValidateUnixType(r.type);
}

absl::Status Validate(const broker::InetRequest& r) {
  const sa_family_t family = r.address.ss_family;
  if (family != AF_INET && family != AF_INET6) {
    return Invalid(absl::StrCat("address family ", family, " is not AF_INET or AF_INET6"));
  }
  if (r.type != SOCK_STREAM && r.type != SOCK_DGRAM) {
    return Invalid(absl::StrCat("IP socket type ", r.type, " is not SOCK_STREAM or SOCK_DGRAM"));
  }
  const uint16_t port = family == AF_INET
                            ? reinterpret_cast<const sockaddr_in&>(r.address).sin_port
                            : reinterpret_cast<const sockaddr_in6&>(r.address).sin6_port;
  if (port == 0) return Invalid("IP port 0");
  if (!IsLocalAddress(r.address)) {
    return Invalid(absl::StrCat(broker::DescribeRequest(r), " is not a loopback address"));
  }
  return absl::OkStatus();
}

absl::Status Validate(const broker::MqRequest& r) {
  if (r.name.size() < 2 || r.name[0] != '/' || r.name.size() > NAME_MAX + 1 ||
      r.name.find('/', 1) != std::string::npos || r.name.find('\0') != std::string::npos) {
    return Invalid(absl::StrCat("queue name '", r.name,
                                "' is not '/' followed by 1 to 255 bytes without '/' or NUL"));
  }
  if ((r.flags & ~kMqFlags) != 0 || (r.flags & O_ACCMODE) == O_ACCMODE) {
    return Invalid(absl::StrCat("mq_open flags 0", absl::Hex(r.flags),
                                " (allowed: an access mode, O_CREAT, O_EXCL, O_NONBLOCK)"));
  }
  if (r.attr && (!(r.flags & O_CREAT) || r.attr->mq_maxmsg <= 0 || r.attr->mq_msgsize <= 0)) {
    return Invalid("queue attributes given without O_CREAT, or not positive");
  }
  return absl::OkStatus();
}

// Milliseconds left until `deadline`, rounded up, at least 1; -1 (wait forever) for an infinite
// deadline.
int PollTimeoutMs(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  const absl::Duration left = deadline - absl::Now();
  const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
  return static_cast<int>(std::clamp<int64_t>(ms, 1, INT32_MAX));
}

absl::Status DeadlineError(absl::string_view where) {
  return ErrnoErrorWithCode(absl::StatusCode::kDeadlineExceeded, ETIMEDOUT,
                            absl::StrCat(where, ": connect still waiting at the deadline"));
}

absl::Status SetSendTimeout(int fd, absl::Duration timeout, absl::string_view where) {
  const timeval tv = absl::ToTimeval(timeout);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
    return ErrnoError(errno, absl::StrCat(where, ": setsockopt SO_SNDTIMEO"));
  }
  return absl::OkStatus();
}

// A unix stream or seqpacket connect waits in the kernel while the server's backlog is full;
// that wait cannot be made asynchronous (a non-blocking connect just fails with EAGAIN), so it
// is bounded with SO_SNDTIMEO, which the kernel uses as the connect timeout, and then reset.
absl::Status ConnectUnixBlocking(int fd, const sockaddr* addr, socklen_t len, absl::Time deadline,
                                 absl::string_view where) {
  const bool bounded = deadline != absl::InfiniteFuture();
  for (;;) {
    if (bounded) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return DeadlineError(where);
      // A zero timeout would mean "forever": never go below one millisecond.
      SHUTTLE_RETURN_IF_ERROR(SetSendTimeout(fd, std::max(left, absl::Milliseconds(1)), where));
    }
    if (connect(fd, addr, len) == 0) break;
    if (errno == EINTR) continue;
    if (errno == EAGAIN && bounded) continue;  // Timed out waiting: the loop head decides.
    return ErrnoError(errno, absl::StrCat(where, ": connect"));
  }
  return bounded ? SetSendTimeout(fd, absl::ZeroDuration(), where) : absl::OkStatus();
}

// TCP: a non-blocking connect polled until the deadline, then back to blocking mode.
absl::Status ConnectInetStream(int fd, const sockaddr* addr, socklen_t len, absl::Time deadline,
                               absl::string_view where) {
  const int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    return ErrnoError(errno, absl::StrCat(where, ": fcntl O_NONBLOCK"));
  }
  if (connect(fd, addr, len) != 0) {
    if (errno != EINPROGRESS && errno != EINTR) {
      return ErrnoError(errno, absl::StrCat(where, ": connect"));
    }
    for (;;) {
      if (absl::Now() >= deadline) return DeadlineError(where);
      pollfd p = {fd, POLLOUT, 0};
      const int n = poll(&p, 1, PollTimeoutMs(deadline));
      if (n > 0) break;
      if (n < 0 && errno != EINTR) return ErrnoError(errno, absl::StrCat(where, ": poll"));
    }
    int err = 0;
    socklen_t err_len = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0) err = errno;
    if (err != 0) return ErrnoError(err, absl::StrCat(where, ": connect"));
  }
  if (fcntl(fd, F_SETFL, fl) != 0) {
    return ErrnoError(errno, absl::StrCat(where, ": fcntl clearing O_NONBLOCK"));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> NewSocket(int family, int type, absl::string_view where) {
  UniqueFd fd(socket(family, type | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoError(errno, absl::StrCat(where, ": socket"));
  return fd;
}

absl::StatusOr<UniqueFd> ConnectNew(int family, int type, const sockaddr* addr, socklen_t len,
                                    absl::Time deadline, absl::string_view where) {
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd fd, NewSocket(family, type, where));
  absl::Status status;
  if (type == SOCK_DGRAM) {
    // Fixes the peer; never waits.
    if (connect(fd.get(), addr, len) != 0) {
      status = ErrnoError(errno, absl::StrCat(where, ": connect"));
    }
  } else if (family == AF_UNIX) {
    status = ConnectUnixBlocking(fd.get(), addr, len, deadline, where);
  } else {
    status = ConnectInetStream(fd.get(), addr, len, deadline, where);
  }
  if (!status.ok()) return status;
  return fd;
}

// Path sockets are found by inode, not through the network namespace, so the socket is created
// in the opener's own namespace; what must be the target's is the path resolution. `path` is
// resolved from the target's root as if it were "/" (".." stops there, absolute symlinks start
// there, /proc magic links are refused); `cached_only` adds RESOLVE_CACHED. The O_PATH fd, or
// an invalid one with errno set.
UniqueFd ResolveInRoot(int root_fd, const std::string& path, bool cached_only) {
  open_how how = {};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | (cached_only ? RESOLVE_CACHED : 0);
  return UniqueFd(static_cast<int>(syscall(SYS_openat2, root_fd, path.c_str(), &how, sizeof(how))));
}

// The address of the socket inode that O_PATH fd `node` refers to, reached through the fd's own
// magic link, which connect() follows without re-resolving names.
sockaddr_un ThroughOwnFd(int node, socklen_t* len) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  char* const path = addr.sun_path;
  char* const end =
      std::to_chars(stpcpy(path, "/proc/self/fd/"), path + sizeof(addr.sun_path) - 1, node).ptr;
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + static_cast<size_t>(end - path));
  return addr;
}

}  // namespace

absl::Status ValidateUnixPath(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return Invalid(absl::StrCat("unix socket path '", path, "' is not absolute"));
  }
  if (path.find('\0') != std::string::npos || path.size() >= PATH_MAX) {
    return Invalid("unix socket path has a NUL byte or is longer than PATH_MAX");
  }
  return absl::OkStatus();
}

absl::Status ValidateRequest(const broker::BrokerRequest& request) {
  return std::visit([](const auto& r) { return Validate(r); }, request);
}

bool IsLocalAddress(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) {
    const uint32_t ip = ntohl(reinterpret_cast<const sockaddr_in&>(address).sin_addr.s_addr);
    return (ip >> 24) == 127 || ip == INADDR_ANY;
  }
  if (address.ss_family == AF_INET6) {
    const in6_addr& ip = reinterpret_cast<const sockaddr_in6&>(address).sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(&ip) || IN6_IS_ADDR_UNSPECIFIED(&ip) ||
           (IN6_IS_ADDR_V4MAPPED(&ip) && ip.s6_addr[12] == 127);
  }
  return false;
}

absl::StatusOr<UniqueFd> ConnectUnixPath(int root_fd, const broker::UnixPathRequest& request,
                                         absl::Time deadline, absl::string_view where) {
  UniqueFd node;
  for (int attempt = 0; attempt < kResolveAttempts && !node; ++attempt) {
    node = ResolveInRoot(root_fd, request.path, /*cached_only=*/false);
    if (!node && errno != EAGAIN) break;
  }
  if (!node) {
    if (errno == ELOOP) {
      return ErrnoErrorWithCode(
          absl::StatusCode::kPermissionDenied, ELOOP,
          absl::StrCat(where, ": resolving the path: a symlink loop or a /proc magic link"));
    }
    return ErrnoError(errno, absl::StrCat(where, ": resolving the path in the target's root"));
  }
  struct stat st;
  if (fstat(node.get(), &st) != 0) return ErrnoError(errno, absl::StrCat(where, ": fstat"));
  if (!S_ISSOCK(st.st_mode)) {
    return ErrnoErrorWithCode(absl::StatusCode::kFailedPrecondition, ECONNREFUSED,
                              absl::StrCat(where, ": not a socket"));
  }
  socklen_t len = 0;
  const sockaddr_un addr = ThroughOwnFd(node.get(), &len);
  return ConnectNew(AF_UNIX, request.type, reinterpret_cast<const sockaddr*>(&addr), len, deadline,
                    where);
}

broker::ConnectNowResult ConnectInPlaceNow(int root_fd, const std::string& path, int socket_fd) {
  UniqueFd node = ResolveInRoot(root_fd, path, /*cached_only=*/true);
  if (!node) return broker::ConnectNowResult::kUseOpen;
  const int fl = fcntl(socket_fd, F_GETFL);
  if (fl < 0) return broker::ConnectNowResult::kUseOpen;
  const bool toggle = (fl & O_NONBLOCK) == 0;
  if (toggle && fcntl(socket_fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    return broker::ConnectNowResult::kUseOpen;
  }
  socklen_t len = 0;
  const sockaddr_un addr = ThroughOwnFd(node.get(), &len);
  const int rc = connect(socket_fd, reinterpret_cast<const sockaddr*>(&addr), len);
  const int err = rc == 0 ? 0 : errno;
  if (toggle && fcntl(socket_fd, F_SETFL, fl) != 0) {
    // The caller's socket would stay non-blocking: a program error it never made. Cannot happen
    // for a socket F_GETFL just read (F_SETFL of status flags only fails for a bad fd).
    SHUTTLE_LOG(ERROR) << "broker: restoring the status flags of a caller's socket: "
                       << strerror(errno);
  }
  if (err == 0) return broker::ConnectNowResult::kConnected;
  // A unix stream or seqpacket connect fails with EAGAIN, rather than waiting, while the server's
  // backlog is full: what a non-blocking caller gets anyway; a blocking one waits, on a worker.
  if (err == EAGAIN && !toggle) return broker::ConnectNowResult::kWouldBlock;
  return broker::ConnectNowResult::kUseOpen;
}

absl::StatusOr<UniqueFd> ConnectUnixAbstract(const broker::UnixAbstractRequest& request,
                                             absl::Time deadline, absl::string_view where) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, request.name.data(), request.name.size());
  const socklen_t len =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + request.name.size());
  return ConnectNew(AF_UNIX, request.type, reinterpret_cast<const sockaddr*>(&addr), len, deadline,
                    where);
}

absl::StatusOr<UniqueFd> ConnectInet(const broker::InetRequest& request, absl::Time deadline,
                                     absl::string_view where) {
  const int family = request.address.ss_family;
  const socklen_t len = family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  return ConnectNew(family, request.type, reinterpret_cast<const sockaddr*>(&request.address), len,
                    deadline, where);
}

absl::StatusOr<UniqueFd> OpenMq(const broker::MqRequest& request, absl::string_view where) {
  mq_attr attr = request.attr.value_or(mq_attr{});
  // The kernel's mq_open takes the name without its leading slash (glibc strips it).
  UniqueFd fd(
      static_cast<int>(syscall(SYS_mq_open, request.name.c_str() + 1, request.flags | O_CLOEXEC,
                               request.mode, request.attr ? &attr : nullptr)));
  if (!fd) return ErrnoError(errno, absl::StrCat(where, ": mq_open"));
  return fd;
}

}  // namespace shuttle::agent::broker_internal
