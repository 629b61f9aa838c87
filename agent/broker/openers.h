// The broker's openers: validate a request, then create and connect the socket or open the
// queue. Internal to agent/broker. The open functions run on a broker worker thread that is
// already in the target's namespace (network for abstract and IP sockets, IPC for queues) and
// under the caller's credentials; they block at most until `deadline`.
#ifndef SHUTTLE_AGENT_BROKER_OPENERS_H_
#define SHUTTLE_AGENT_BROKER_OPENERS_H_

#include <sys/socket.h>

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/broker/broker.h"

namespace shuttle::agent::broker_internal {

using intercept::UniqueFd;

// INVALID_ARGUMENT (errno attached) naming what is wrong with `request`. Cheap; no syscalls.
absl::Status ValidateRequest(const broker::BrokerRequest& request);
// The same for a unix socket path alone (absolute, no NUL, shorter than PATH_MAX).
absl::Status ValidateUnixPath(const std::string& path);

// True for 127.0.0.0/8, ::1, ::ffff:127.0.0.0/104 and the "any" addresses 0.0.0.0 and ::
// (which Linux connects to the local host).
bool IsLocalAddress(const sockaddr_storage& address);

// `where` prefixes every error ("VM db: unix stream /run/app.sock").
//
// Resolves `path` under `root_fd` (an O_PATH fd of the target's root) with openat2's
// RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS and connects to the socket inode found there.
absl::StatusOr<UniqueFd> ConnectUnixPath(int root_fd, const broker::UnixPathRequest& request,
                                         absl::Time deadline, absl::string_view where);
// Connects `socket_fd` (the caller's own socket, through a duplicate) to the socket at `path`
// under `root_fd` without waiting for anything, for the notification loop: the
// path is resolved only from what the kernel has cached (RESOLVE_CACHED: a lookup that would
// need I/O, e.g. on a hung FUSE or NFS mount, fails at once), and the connect is non-blocking
// (a blocking socket's O_NONBLOCK is set for the connect and cleared again; the open file is
// the caller's, so its other threads could see the flag for those microseconds).
broker::ConnectNowResult ConnectInPlaceNow(int root_fd, const std::string& path, int socket_fd);
absl::StatusOr<UniqueFd> ConnectUnixAbstract(const broker::UnixAbstractRequest& request,
                                             absl::Time deadline, absl::string_view where);
absl::StatusOr<UniqueFd> ConnectInet(const broker::InetRequest& request, absl::Time deadline,
                                     absl::string_view where);
absl::StatusOr<UniqueFd> OpenMq(const broker::MqRequest& request, absl::string_view where);

}  // namespace shuttle::agent::broker_internal

#endif  // SHUTTLE_AGENT_BROKER_OPENERS_H_
