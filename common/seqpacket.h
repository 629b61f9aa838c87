// One protobuf message per datagram on a unix SOCK_SEQPACKET socket, with descriptors
// (SCM_RIGHTS) alongside: the framing of the local agent API (proto/shuttle/v1/local.proto),
// shared by shuttle-agent and shuttlectl.
#ifndef SHUTTLE_COMMON_SEQPACKET_H_
#define SHUTTLE_COMMON_SEQPACKET_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message_lite.h"

namespace shuttle {

// Largest datagram either side sends or accepts.
inline constexpr size_t kMaxDatagram = 1 << 20;
// Most descriptors one datagram may carry.
inline constexpr size_t kMaxDatagramFds = 8;

// Sends `message` with `fds` (not closed; the receiver gets duplicates). Errors name errno.
absl::Status SendMessage(int socket_fd, const google::protobuf::MessageLite& message,
                         const std::vector<int>& fds = {});

// Receives one datagram into `message`. Descriptors that came with it are appended to `fds`
// (the caller owns and must close them), at most `max_fds` (<= kMaxDatagramFds): more, or a
// truncated datagram, is INVALID_ARGUMENT and every descriptor received is closed. NOT_FOUND on
// an orderly close by the peer. Retries on EINTR.
absl::Status ReceiveMessage(int socket_fd, google::protobuf::MessageLite* message,
                            std::vector<int>* fds, size_t max_fds);

// Connects a SOCK_SEQPACKET socket to `path`; the caller owns the returned fd. Errors name the
// path and errno (e.g. "agent socket /run/shuttle/agent.sock: No such file or directory").
absl::StatusOr<int> ConnectSeqpacket(const std::string& path);

}  // namespace shuttle

#endif  // SHUTTLE_COMMON_SEQPACKET_H_
