// The processes broker_integration_test runs (a single-threaded program, so nothing runs
// between fork and exec in the multithreaded test). It reads nothing but its arguments and
// stdin, prints "key=value" lines on stdout, and exits when stdin reaches EOF (the test closed
// it or died).
//
//   vm ROOT HOST_SOCK  a fake VM: new mount, network (loopback up) and IPC namespaces, a tmpfs
//                      at ROOT as its root (chroot) with /proc, symlinks that try to leave it
//                      (towards HOST_SOCK, a socket path on the host), and these servers:
//                        /run/app.sock /run/other.sock /run/private.sock (mode 0700) unix
//                        stream echo, /run/seq.sock seqpacket echo, /run/dgram.sock datagram
//                        sink, /run/full.sock and TCP "full" (backlog 0, never accept),
//                        abstract "shuttle-broker-test" echo, TCP and UDP echo on 127.0.0.1,
//                        queues /shuttle-req -> "echo:MSG" -> /shuttle-resp.
//                      Echo replies are "TAG uid=PEER_UID PAYLOAD" (unix) or "TAG PAYLOAD";
//                      the payload "last-dgram" is answered with the last datagram received.
//                      Prints "ready tcp=P tcp_full=P udp=P".
//   connect PATH [nonblock] [cloexec] [dgram]
//                      installs a seccomp filter that sends connect() and mq_open() to a
//                      listener (prints "listener=FD"), then connects a unix socket to PATH and
//                      prints what it got: "connect=ERRNO fd=N nonblock=B cloexec=B
//                      rcvtimeo=S reply=TEXT" (reply only for stream sockets).
//   mq NAME            same filter; mq_open(NAME, O_WRONLY|O_NONBLOCK), prints "mq=ERRNO
//                      fd=N nonblock=B cloexec=B sent=ERRNO" after sending "from-caller".
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <mqueue.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cinttypes>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "broker_test_helper: %s: %s\n", what, std::strerror(errno));
  std::exit(2);
}

void Check(bool ok, const char* what) {
  if (!ok) Die(what);
}

socklen_t UnixAddress(const std::string& name, bool abstract, sockaddr_un* a) {
  std::memset(a, 0, sizeof(*a));
  a->sun_family = AF_UNIX;
  const size_t off = abstract ? 1 : 0;
  std::memcpy(a->sun_path + off, name.data(), name.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + off + name.size());
}

int UnixServer(const std::string& name, bool abstract, int type, int backlog) {
  const int s = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  sockaddr_un a;
  const socklen_t len = UnixAddress(name, abstract, &a);
  Check(s >= 0 && bind(s, reinterpret_cast<sockaddr*>(&a), len) == 0, name.c_str());
  if (type != SOCK_DGRAM) Check(listen(s, backlog) == 0, "listen");
  return s;
}

int InetServer(int type, int backlog, int* port) {
  const int s = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  Check(s >= 0 && bind(s, reinterpret_cast<sockaddr*>(&a), len) == 0, "bind inet");
  if (type == SOCK_STREAM) Check(listen(s, backlog) == 0, "listen inet");
  Check(getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0, "getsockname");
  *port = ntohs(a.sin_port);
  return s;
}

void LoopbackUp() {
  const int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq ifr{};
  std::strcpy(ifr.ifr_name, "lo");
  Check(s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0, "SIOCGIFFLAGS");
  ifr.ifr_flags |= IFF_UP;
  Check(ioctl(s, SIOCSIFFLAGS, &ifr) == 0, "SIOCSIFFLAGS");
  close(s);
}

// What a poll slot is.
enum class Role { kStdin, kListener, kConnection, kUdp, kDgramSink, kQueue };
struct Slot {
  Role role;
  std::string tag;
  bool unix_socket = false;
};

int RunVm(const std::string& root, const std::string& host_sock) {
  Check(unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC) == 0, "unshare");
  Check(mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0, "make / private");
  LoopbackUp();
  Check(mount("tmpfs", root.c_str(), "tmpfs", 0, "size=4m,mode=0755") == 0, "mount tmpfs");
  Check(mkdir((root + "/run").c_str(), 0755) == 0, "mkdir run");
  Check(mkdir((root + "/proc").c_str(), 0555) == 0, "mkdir proc");
  Check(mount("proc", (root + "/proc").c_str(), "proc", 0, nullptr) == 0, "mount proc");
  // Ways out of the root that the broker must not take.
  Check(symlink(host_sock.c_str(), (root + "/run/abs-link").c_str()) == 0, "abs-link");
  Check(
      symlink(("../../../../../../.." + host_sock).c_str(), (root + "/run/rel-link").c_str()) == 0,
      "rel-link");
  Check(symlink(("/proc/self/root" + host_sock).c_str(), (root + "/run/magic-link").c_str()) == 0,
        "magic-link");
  // A way that stays inside: an absolute symlink means the VM's own root.
  Check(symlink("/run/app.sock", (root + "/run/inside-link").c_str()) == 0, "inside-link");
  Check(chroot(root.c_str()) == 0 && chdir("/") == 0, "chroot");
  umask(0);

  std::vector<pollfd> fds;
  std::vector<Slot> slots;
  auto add = [&](int fd, Role role, const std::string& tag, bool unix_socket) {
    fds.push_back(pollfd{fd, POLLIN, 0});
    slots.push_back(Slot{role, tag, unix_socket});
  };
  add(0, Role::kStdin, "", false);
  add(UnixServer("/run/app.sock", false, SOCK_STREAM, 16), Role::kListener, "app", true);
  add(UnixServer("/run/other.sock", false, SOCK_STREAM, 16), Role::kListener, "other", true);
  add(UnixServer("/run/private.sock", false, SOCK_STREAM, 16), Role::kListener, "private", true);
  Check(chmod("/run/private.sock", 0700) == 0, "chmod private");
  add(UnixServer("/run/seq.sock", false, SOCK_SEQPACKET, 16), Role::kListener, "seq", true);
  add(UnixServer("/run/dgram.sock", false, SOCK_DGRAM, 0), Role::kDgramSink, "", true);
  add(UnixServer("shuttle-broker-test", true, SOCK_STREAM, 16), Role::kListener, "abstract", true);
  UnixServer("/run/full.sock", false, SOCK_STREAM, 0);  // Never accepted.
  int tcp_port = 0, tcp_full_port = 0, udp_port = 0;
  add(InetServer(SOCK_STREAM, 16, &tcp_port), Role::kListener, "tcp", false);
  InetServer(SOCK_STREAM, 0, &tcp_full_port);  // Never accepted.
  add(InetServer(SOCK_DGRAM, 0, &udp_port), Role::kUdp, "udp", false);
  mq_attr attr{};
  attr.mq_maxmsg = 4;
  attr.mq_msgsize = 128;
  const mqd_t req = mq_open("/shuttle-req", O_RDONLY | O_CREAT | O_NONBLOCK, 0666, &attr);
  const mqd_t resp = mq_open("/shuttle-resp", O_WRONLY | O_CREAT | O_NONBLOCK, 0666, &attr);
  Check(req >= 0 && resp >= 0, "mq_open");
  add(req, Role::kQueue, "", false);

  std::printf("ready tcp=%d tcp_full=%d udp=%d\n", tcp_port, tcp_full_port, udp_port);
  std::fflush(stdout);

  std::string last_dgram;
  char buf[512];
  for (;;) {
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      Die("poll");
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      const int fd = fds[i].fd;
      switch (slots[i].role) {
        case Role::kStdin:
          if (read(0, buf, sizeof(buf)) <= 0) return 0;
          break;
        case Role::kListener: {
          const int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
          if (c >= 0) add(c, Role::kConnection, slots[i].tag, slots[i].unix_socket);
          break;
        }
        case Role::kConnection: {
          const ssize_t n = read(fd, buf, sizeof(buf));
          if (n <= 0) {
            close(fd);
            fds[i].fd = -1;  // poll ignores negative fds.
            break;
          }
          std::string payload(buf, static_cast<size_t>(n));
          if (payload == "last-dgram") payload = last_dgram;
          std::string reply = slots[i].tag;
          if (slots[i].unix_socket) {
            ucred cred{};
            socklen_t len = sizeof(cred);
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
            reply += " uid=" + std::to_string(cred.uid);
          }
          reply += " " + payload;
          if (write(fd, reply.data(), reply.size()) < 0) Die("write");
          break;
        }
        case Role::kUdp: {
          sockaddr_storage from{};
          socklen_t len = sizeof(from);
          const ssize_t n =
              recvfrom(fd, buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &len);
          if (n < 0) break;
          const std::string reply = "udp " + std::string(buf, static_cast<size_t>(n));
          sendto(fd, reply.data(), reply.size(), 0, reinterpret_cast<sockaddr*>(&from), len);
          break;
        }
        case Role::kDgramSink: {
          const ssize_t n = recv(fd, buf, sizeof(buf), 0);
          if (n >= 0) last_dgram.assign(buf, static_cast<size_t>(n));
          break;
        }
        case Role::kQueue: {
          char msg[128];
          const ssize_t n = mq_receive(fd, msg, sizeof(msg), nullptr);
          if (n < 0) break;
          const std::string reply = "echo:" + std::string(msg, static_cast<size_t>(n));
          mq_send(resp, reply.data(), reply.size(), 0);
          break;
        }
      }
    }
  }
}

// Sends connect() and mq_open() of this process to a new seccomp listener; prints its number.
void InstallFilter() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_connect, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mq_open, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<uint16_t>(sizeof(filter) / sizeof(filter[0])), filter};
  Check(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
  const int64_t listener =
      syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  Check(listener >= 0, "seccomp");
  std::printf("listener=%" PRId64 "\n", listener);
  std::fflush(stdout);
}

bool HasArg(int argc, char** argv, const char* want) {
  for (int i = 3; i < argc; ++i) {
    if (std::strcmp(argv[i], want) == 0) return true;
  }
  return false;
}

int RunConnect(int argc, char** argv) {
  const bool dgram = HasArg(argc, argv, "dgram");
  const int type = (dgram ? SOCK_DGRAM : SOCK_STREAM) |
                   (HasArg(argc, argv, "nonblock") ? SOCK_NONBLOCK : 0) |
                   (HasArg(argc, argv, "cloexec") ? SOCK_CLOEXEC : 0);
  const int s = socket(AF_UNIX, type, 0);
  Check(s >= 0, "socket");
  const timeval rcvtimeo{7, 0};  // Also bounds the read below.
  Check(setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &rcvtimeo, sizeof(rcvtimeo)) == 0, "rcvtimeo");
  InstallFilter();
  sockaddr_un a;
  const socklen_t len = UnixAddress(argv[2], false, &a);
  const int rc = connect(s, reinterpret_cast<sockaddr*>(&a), len);
  const int err = rc == 0 ? 0 : errno;
  timeval tv{};
  socklen_t tv_len = sizeof(tv);
  getsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, &tv_len);
  std::printf("connect=%d fd=%d nonblock=%d cloexec=%d rcvtimeo=%ld", err, s,
              (fcntl(s, F_GETFL) & O_NONBLOCK) != 0, (fcntl(s, F_GETFD) & FD_CLOEXEC) != 0,
              static_cast<long>(tv.tv_sec));
  if (rc == 0 && !dgram) {
    Check(write(s, "ping", 4) == 4, "write");
    pollfd p{s, POLLIN, 0};
    char buf[256];
    ssize_t n = -1;
    if (poll(&p, 1, 7000) == 1) n = read(s, buf, sizeof(buf));
    std::printf(" reply=%s", n > 0 ? std::string(buf, static_cast<size_t>(n)).c_str() : "-");
  }
  std::printf("\n");
  std::fflush(stdout);
  return 0;
}

int RunMq(const char* name) {
  InstallFilter();
  const int64_t fd = syscall(SYS_mq_open, name + 1, O_WRONLY | O_NONBLOCK, 0, nullptr);
  const int err = fd >= 0 ? 0 : errno;
  mq_attr attr{};
  int sent = -1;
  if (fd >= 0) {
    mq_getattr(static_cast<mqd_t>(fd), &attr);
    sent = mq_send(static_cast<mqd_t>(fd), "from-caller", 11, 0) == 0 ? 0 : errno;
  }
  std::printf("mq=%d fd=%" PRId64 " nonblock=%d cloexec=%d sent=%d\n", err, fd,
              (attr.mq_flags & O_NONBLOCK) != 0,
              fd >= 0 && (fcntl(static_cast<int>(fd), F_GETFD) & FD_CLOEXEC) != 0, sent);
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "vm" && argc == 4) return RunVm(argv[2], argv[3]);
  if (mode == "connect" && argc >= 3) return RunConnect(argc, argv);
  if (mode == "mq" && argc == 3) return RunMq(argv[2]);
  std::fprintf(stderr,
               "usage: broker_test_helper vm ROOT HOST_SOCK | connect PATH [flags] | mq "
               "NAME\n");
  return 2;
}
