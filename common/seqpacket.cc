#include "common/seqpacket.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "absl/status/statusor.h"

namespace shuttle {
namespace {

absl::Status Errno(const char* what) {
  return absl::UnavailableError(std::string(what) + ": " + std::strerror(errno));
}

void CloseAll(std::vector<int>& fds, size_t from) {
  for (size_t i = from; i < fds.size(); ++i) ::close(fds[i]);
  fds.resize(from);
}

}  // namespace

absl::Status SendMessage(int socket_fd, const google::protobuf::MessageLite& message,
                         const std::vector<int>& fds) {
  if (fds.size() > kMaxDatagramFds) return absl::InvalidArgumentError("too many descriptors");
  std::string bytes;
  if (!message.SerializeToString(&bytes)) return absl::InternalError("cannot serialize message");
  if (bytes.size() > kMaxDatagram) return absl::InvalidArgumentError("message too large");
  if (bytes.empty()) bytes.push_back('\0');  // Never send a 0-byte datagram: it reads as EOF.
  iovec iov{bytes.data(), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxDatagramFds)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  while (::sendmsg(socket_fd, &msg, MSG_NOSIGNAL) < 0) {
    if (errno != EINTR) return Errno("send");
  }
  return absl::OkStatus();
}

absl::Status ReceiveMessage(int socket_fd, google::protobuf::MessageLite* message,
                            std::vector<int>* fds, size_t max_fds) {
  std::string bytes(kMaxDatagram, '\0');
  iovec iov{bytes.data(), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxDatagramFds)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  while ((n = ::recvmsg(socket_fd, &msg, MSG_CMSG_CLOEXEC)) < 0) {
    if (errno != EINTR) return Errno("receive");
  }
  const size_t first = fds->size();
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
      size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* data = CMSG_DATA(cmsg);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, data + i * sizeof(int), sizeof(int));
        fds->push_back(fd);
      }
    }
  }
  if (n == 0) {
    CloseAll(*fds, first);
    return absl::NotFoundError("peer closed the connection");
  }
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    CloseAll(*fds, first);
    return absl::InvalidArgumentError("datagram or its descriptors truncated");
  }
  if (fds->size() - first > max_fds) {
    CloseAll(*fds, first);
    return absl::InvalidArgumentError("datagram carries more descriptors than the request takes");
  }
  const bool placeholder = n == 1 && bytes[0] == '\0';
  if (!message->ParseFromArray(bytes.data(), placeholder ? 0 : static_cast<int>(n))) {
    CloseAll(*fds, first);
    return absl::InvalidArgumentError("malformed message");
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ConnectSeqpacket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError("socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int saved = errno;
    ::close(fd);
    return absl::UnavailableError(
        "agent socket " + path + ": " + std::strerror(saved) +
        (saved == ENOENT || saved == ECONNREFUSED ? " (is shuttle-agent running?)" : ""));
  }
  return fd;
}

}  // namespace shuttle
