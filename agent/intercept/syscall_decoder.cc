#include "agent/intercept/syscall_decoder.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <netinet/in.h>
#include <sys/ipc.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace shuttle::agent::intercept {
namespace {

constexpr size_t kSockaddrMax = sizeof(sockaddr_storage);  // 128: the kernel's bound.
constexpr size_t kMqNameMax = 255;                         // NAME_MAX.
constexpr int kMaxSignal = 64;                             // _NSIG - 1 on x86_64.
constexpr size_t kIpv6MinLen = 24;                         // SIN6_LEN_RFC2133.

void SetFail(Decoded* out, int error, const char* reason) {
  out->disposition = Disposition::kFail;
  out->error = error;
  out->reason = reason;
}

void SetContinue(Decoded* out, const char* reason) {
  out->disposition = Disposition::kContinue;
  out->reason = reason;
}

void SetDecide(Decoded* out, v1::InteractionKind kind) {
  out->disposition = Disposition::kDecide;
  out->object.kind = kind;
  out->reason = "interaction";
}

// Maps a failed read of the caller's memory (or fds) to the answer: the caller's own mistake
// (a bad pointer) gets the kernel's errno; the caller's death means nobody to answer; anything
// else is the agent failing to look, which fails the call with EPERM rather than guess.
void SetReadFailure(Decoded* out, int neg_errno, const char* what) {
  switch (-neg_errno) {
    case EFAULT:
      SetFail(out, EFAULT, what);
      return;
    case ESRCH:
      out->disposition = Disposition::kGone;
      out->reason = "caller gone";
      return;
    default:
      SetFail(out, EPERM, "agent could not inspect the caller");
      out->inspect_error = true;
      return;
  }
}

// Appends printf-style text to the object name, truncating at the buffer's end.
void NameAppend(ObjectInfo* obj, const char* text, size_t len) {
  size_t room = kMaxObjectName - obj->name_len;
  if (len > room) len = room;
  std::memcpy(obj->name_buf + obj->name_len, text, len);
  obj->name_len += len;
}

template <typename... Args>
void NameFormat(ObjectInfo* obj, const char* fmt, Args... args) {
  char tmp[64];
  int n = std::snprintf(tmp, sizeof(tmp), fmt, args...);
  if (n > 0) NameAppend(obj, tmp, static_cast<size_t>(n) < sizeof(tmp) ? n : sizeof(tmp) - 1);
}

bool IsV4Loopback(uint32_t host_order) {
  return (host_order >> 24) == 127 || host_order == INADDR_ANY;  // Linux connects "any" locally.
}

}  // namespace

bool SyscallDecoder::Decode(const SyscallEvent& event, uint32_t part, Decoded* out) {
  *out = Decoded();
  if (event.arch != AUDIT_ARCH_X86_64) {
    if (part != 0) return false;
    SetFail(out, EPERM, "foreign syscall ABI");
    return true;
  }
  if (event.nr == SYS_sendmmsg) {
    uint32_t vlen = static_cast<uint32_t>(event.args[2]);
    if (vlen > kMaxMmsgParts) vlen = kMaxMmsgParts;
    if (part >= vlen) return false;
    bool stop = false;
    DecodeMsghdr(event, event.args[1] + uint64_t{part} * sizeof(mmsghdr),
                 static_cast<int>(event.args[3]), part == 0, out, &stop);
    return !stop;
  }
  if (part != 0) return false;
  switch (event.nr) {
    case SYS_connect:
      DecodeAddress(event, static_cast<int>(event.args[0]), event.args[1],
                    static_cast<int32_t>(event.args[2]), 0, /*is_connect=*/true, out);
      break;
    case SYS_sendto:
      if (event.args[4] == 0) {
        SetContinue(out, "no address");
        break;
      }
      DecodeAddress(event, static_cast<int>(event.args[0]), event.args[4],
                    static_cast<int32_t>(event.args[5]), static_cast<int>(event.args[3]),
                    /*is_connect=*/false, out);
      break;
    case SYS_sendmsg: {
      bool stop = false;
      DecodeMsghdr(event, event.args[1], static_cast<int>(event.args[2]), true, out, &stop);
      break;
    }
    case SYS_mq_open:
      DecodeMqOpen(event, out);
      break;
    case SYS_shmget:
      DecodeSysvKey(event, v1::SHM_OPEN, out);
      break;
    case SYS_msgget:
      DecodeSysvKey(event, v1::MQ_OPEN, out);
      break;
    case SYS_semget:
      DecodeSysvKey(event, v1::SYNC_OPEN, out);
      break;
    case SYS_kill:
    case SYS_tkill:
    case SYS_tgkill:
    case SYS_rt_sigqueueinfo:
    case SYS_rt_tgsigqueueinfo:
    case SYS_pidfd_send_signal:
      DecodeSignal(event, out);
      break;
    default:
      SetContinue(out, "not an interaction syscall");
      break;
  }
  return true;
}

void SyscallDecoder::DecodeAddress(const SyscallEvent& event, int fd, uint64_t addr,
                                   int64_t addrlen, int send_flags, bool is_connect, Decoded* out) {
  ObjectInfo& obj = out->object;
  obj.fd = fd;
  if (addrlen < 0 || static_cast<uint64_t>(addrlen) > kSockaddrMax) {
    SetFail(out, EINVAL, "address length out of range");
    return;
  }
  if (addrlen < static_cast<int64_t>(sizeof(sa_family_t))) {
    SetContinue(out, "address too short: the kernel rejects it");
    return;
  }
  alignas(sockaddr_storage) unsigned char raw[kSockaddrMax];
  size_t len = static_cast<size_t>(addrlen);
  out->read_process = true;
  ssize_t n = memory_.Read(event.pid, addr, raw, len);
  if (n < 0) {
    SetReadFailure(out, static_cast<int>(n), "address not readable");
    return;
  }
  if (static_cast<size_t>(n) < len) {
    SetFail(out, EFAULT, "address runs into unmapped memory");
    return;
  }
  sa_family_t family;
  std::memcpy(&family, raw, sizeof(family));
  obj.family = family;

  if (family == AF_UNIX) {
    constexpr size_t kPathOffset = offsetof(sockaddr_un, sun_path);
    const char* path = reinterpret_cast<const char*>(raw + kPathOffset);
    size_t path_bytes = len - kPathOffset;
    if (path_bytes == 0) {
      SetContinue(out, "unnamed unix address: the kernel rejects it");
      return;
    }
    if (path[0] == '\0') {
      if (path_bytes == 1) {
        SetContinue(out, "empty abstract name: the kernel rejects it");
        return;
      }
      obj.abstract = true;
      obj.abstract_len = static_cast<uint8_t>(std::min(path_bytes - 1, sizeof(obj.abstract_raw)));
      std::memcpy(obj.abstract_raw, path + 1, obj.abstract_len);
      NameAppend(&obj, "@", 1);
      for (size_t i = 1; i < path_bytes; ++i) {
        char c = path[i] == '\0' ? '@' : path[i];
        NameAppend(&obj, &c, 1);
      }
    } else {
      size_t path_len = strnlen(path, path_bytes);
      obj.relative = path[0] != '/';
      NameAppend(&obj, path, path_len);
    }
    SetDecide(out, v1::UNIX_CONNECT);
    return;
  }

  if (family != AF_INET && family != AF_INET6) {
    SetContinue(out, family == AF_UNSPEC ? "AF_UNSPEC (disconnect)" : "not an interaction family");
    return;
  }
  char text[INET6_ADDRSTRLEN];
  if (family == AF_INET) {
    if (len < sizeof(sockaddr_in)) {
      SetContinue(out, "short IPv4 address: the kernel rejects it");
      return;
    }
    sockaddr_in sin;
    std::memcpy(&sin, raw, sizeof(sin));
    obj.port = ntohs(sin.sin_port);
    obj.loopback = IsV4Loopback(ntohl(sin.sin_addr.s_addr));
    inet_ntop(AF_INET, &sin.sin_addr, text, sizeof(text));
    NameFormat(&obj, "%s:%u", text, static_cast<unsigned>(obj.port));
  } else {
    if (len < kIpv6MinLen) {
      SetContinue(out, "short IPv6 address: the kernel rejects it");
      return;
    }
    sockaddr_in6 sin6;
    std::memset(&sin6, 0, sizeof(sin6));
    std::memcpy(&sin6, raw, len < sizeof(sin6) ? len : sizeof(sin6));
    obj.port = ntohs(sin6.sin6_port);
    const in6_addr& a = sin6.sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&a)) {
      // Reaches the same IPv4 socket: name it the IPv4 way so one rule covers both.
      uint32_t v4;
      std::memcpy(&v4, a.s6_addr + 12, sizeof(v4));
      obj.loopback = IsV4Loopback(ntohl(v4));
      inet_ntop(AF_INET, &v4, text, sizeof(text));
      NameFormat(&obj, "%s:%u", text, static_cast<unsigned>(obj.port));
    } else {
      obj.loopback = IN6_IS_ADDR_LOOPBACK(&a) || IN6_IS_ADDR_UNSPECIFIED(&a);
      inet_ntop(AF_INET6, &a, text, sizeof(text));
      NameFormat(&obj, "[%s]:%u", text, static_cast<unsigned>(obj.port));
    }
  }
  if (!obj.loopback) {
    // The VM's network namespace decides where a non-local address leads; not a crossing
    // between VMs of this host.
    SetContinue(out, "not a loopback address");
    return;
  }
  int type = fds_.SocketType(event.pid, fd);
  if (type < 0) {
    switch (-type) {
      case EBADF:
        SetFail(out, EBADF, "not an open fd");
        return;
      case ENOTSOCK:
        SetFail(out, ENOTSOCK, "not a socket");
        return;
      default:
        SetReadFailure(out, type, "socket not inspectable");
        return;
    }
  }
  obj.socket_type = type;
  if (type == SOCK_DGRAM || type == SOCK_RAW) {
    SetDecide(out, v1::UDP_SEND);
  } else if (is_connect || (send_flags & MSG_FASTOPEN) != 0) {
    SetDecide(out, v1::TCP_CONNECT);
  } else {
    SetContinue(out, "stream socket: the address of a send is ignored");
  }
}

void SyscallDecoder::DecodeMsghdr(const SyscallEvent& event, uint64_t msghdr_addr, int send_flags,
                                  bool first, Decoded* out, bool* stop) {
  msghdr mh;
  out->read_process = true;
  ssize_t n = memory_.Read(event.pid, msghdr_addr, &mh, sizeof(mh));
  if (n < 0 || static_cast<size_t>(n) < sizeof(mh)) {
    if (!first && (n >= 0 || n == -EFAULT)) {
      // sendmmsg stops at the first bad entry after the first and returns what it sent; let
      // the kernel do exactly that.
      *stop = true;
      return;
    }
    SetReadFailure(out, n < 0 ? static_cast<int>(n) : -EFAULT, "msghdr not readable");
    return;
  }
  int namelen = static_cast<int>(mh.msg_namelen);
  if (mh.msg_name == nullptr || namelen == 0) {
    SetContinue(out, "no address");
    return;
  }
  if (namelen < 0) {
    SetFail(out, EINVAL, "negative msg_namelen");
    return;
  }
  // The kernel silently clamps an oversized msg_namelen (unlike connect and sendto).
  if (static_cast<size_t>(namelen) > kSockaddrMax) namelen = kSockaddrMax;
  DecodeAddress(event, static_cast<int>(event.args[0]), reinterpret_cast<uintptr_t>(mh.msg_name),
                namelen, send_flags,
                /*is_connect=*/false, out);
}

void SyscallDecoder::DecodeMqOpen(const SyscallEvent& event, Decoded* out) {
  ObjectInfo& obj = out->object;
  obj.create = (static_cast<int>(event.args[1]) & O_CREAT) != 0;
  char name[kMqNameMax + 1];
  out->read_process = true;
  ssize_t n = memory_.Read(event.pid, event.args[0], name, sizeof(name));
  if (n < 0) {
    SetReadFailure(out, static_cast<int>(n), "queue name not readable");
    return;
  }
  const char* nul = static_cast<const char*>(std::memchr(name, '\0', static_cast<size_t>(n)));
  if (nul == nullptr) {
    if (static_cast<size_t>(n) == sizeof(name)) {
      SetFail(out, ENAMETOOLONG, "queue name longer than NAME_MAX");
    } else {
      SetFail(out, EFAULT, "queue name runs into unmapped memory");
    }
    return;
  }
  size_t len = static_cast<size_t>(nul - name);
  if (len == 0 || std::memchr(name, '/', len) != nullptr) {
    SetContinue(out, "invalid queue name: the kernel rejects it");
    return;
  }
  // glibc strips the leading '/' before the syscall; the policy names queues with it.
  NameAppend(&obj, "/", 1);
  NameAppend(&obj, name, len);
  SetDecide(out, v1::MQ_OPEN);
}

void SyscallDecoder::DecodeSysvKey(const SyscallEvent& event, v1::InteractionKind kind,
                                   Decoded* out) {
  ObjectInfo& obj = out->object;
  obj.ipc_key = static_cast<uint32_t>(event.args[0]);
  int flags = static_cast<int>(event.args[kind == v1::SHM_OPEN || kind == v1::SYNC_OPEN ? 2 : 1]);
  obj.create = (flags & IPC_CREAT) != 0;
  if (static_cast<key_t>(obj.ipc_key) == IPC_PRIVATE) {
    SetContinue(out, "IPC_PRIVATE: a new object no one else can name");
    return;
  }
  NameFormat(&obj, "key:0x%08x", obj.ipc_key);
  SetDecide(out, kind);
}

void SyscallDecoder::DecodeSignal(const SyscallEvent& event, Decoded* out) {
  ObjectInfo& obj = out->object;
  int sig = 0;
  switch (event.nr) {
    case SYS_kill:
    case SYS_rt_sigqueueinfo:
      obj.target_pid = static_cast<int32_t>(event.args[0]);
      sig = static_cast<int>(event.args[1]);
      break;
    case SYS_tkill:
      obj.target_tid = static_cast<int32_t>(event.args[0]);
      obj.target_pid = obj.target_tid;
      sig = static_cast<int>(event.args[1]);
      break;
    case SYS_tgkill:
    case SYS_rt_tgsigqueueinfo:
      obj.target_pid = static_cast<int32_t>(event.args[0]);
      obj.target_tid = static_cast<int32_t>(event.args[1]);
      sig = static_cast<int>(event.args[2]);
      break;
    case SYS_pidfd_send_signal: {
      sig = static_cast<int>(event.args[1]);
      if (sig < 0 || sig > kMaxSignal) break;  // Rejected below, before looking at the fd.
      int32_t target = 0;
      int rc = fds_.PidOfPidfd(event.pid, static_cast<int>(event.args[0]), &target);
      out->read_process = true;
      if (rc == -EBADF) {
        SetFail(out, EBADF, "not a pidfd");
        return;
      }
      if (rc < 0) {
        SetReadFailure(out, rc, "pidfd not inspectable");
        return;
      }
      if (target < 0) {
        SetFail(out, ESRCH, "the pidfd's process has exited");
        return;
      }
      obj.target_pid = target;
      break;
    }
    default:
      break;
  }
  obj.signal = sig;
  if (sig < 0 || sig > kMaxSignal) {
    SetContinue(out, "invalid signal: the kernel rejects it");
    return;
  }
  if (obj.target_pid > 0) {
    NameFormat(&obj, "pid:%d", obj.target_pid);
  } else if (obj.target_pid == 0) {
    NameAppend(&obj, "pgrp:self", 9);
  } else if (obj.target_pid == -1) {
    NameAppend(&obj, "all", 3);
  } else {
    NameFormat(&obj, "pgrp:%" PRId64, -static_cast<int64_t>(obj.target_pid));
  }
  SetDecide(out, v1::SIGNAL);
}

}  // namespace shuttle::agent::intercept
