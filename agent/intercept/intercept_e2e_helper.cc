// The program intercept_e2e_test launches into its VM through shuttle-launch. Each mode makes
// real interaction syscalls and prints one "name value" line per result on stdout (value: 0 or
// the errno), so the test can compare what the program saw with what the decider saw.
//   all TAG       one of each: unix path, abstract, TCP, UDP sendto, UDP connect+send, sendmsg
//                 without a name, POSIX mq, SysV shm, kill(self, 0), an x32 syscall
//   loop N TAG    N connect() calls to a unix socket; prints "ok", "failed", "enosys" counts
//   bench N TAG   N connect() calls, timed; prints "ns_per_connect"
//   sigbench N    N kill(getpid(), 0) calls, timed; prints "ns_per_call"
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cinttypes>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

int Result(int rc) { return rc == 0 ? 0 : errno; }

void Print(const char* name, int64_t value) {
  std::printf("%s %" PRId64 "\n", name, value);
  std::fflush(stdout);
}

sockaddr_un UnixAddr(const std::string& path, bool abstract, socklen_t* len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  size_t off = abstract ? 1 : 0;
  std::memcpy(a.sun_path + off, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + off + path.size() +
                                (abstract ? 0 : 1));
  return a;
}

// A listening unix socket at `path` (or abstract name); -1 on failure.
int UnixListener(const std::string& path, bool abstract) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  socklen_t len;
  sockaddr_un a = UnixAddr(path, abstract, &len);
  if (!abstract) unlink(path.c_str());
  if (bind(s, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(s, 128) != 0) return -1;
  return s;
}

int UnixConnect(const std::string& path, bool abstract) {
  int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  socklen_t len;
  sockaddr_un a = UnixAddr(path, abstract, &len);
  int rc = Result(connect(c, reinterpret_cast<sockaddr*>(&a), len));
  close(c);
  return rc;
}

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

uint16_t BoundPort(int s) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

int All(const std::string& tag) {
  Print("pid", getpid());
  Print("uid", getuid());
  char host[64] = {};
  gethostname(host, sizeof(host) - 1);
  Print("host_is_vm", std::strcmp(host, "vm-e2e") == 0);
  std::string path = "/tmp/shuttle-e2e-" + tag + ".sock";
  int ul = UnixListener(path, false);
  Print("unix", ul < 0 ? errno : UnixConnect(path, false));
  std::string abstract_name = "shuttle-e2e-" + tag;
  int al = UnixListener(abstract_name, true);
  Print("abstract", al < 0 ? errno : UnixConnect(abstract_name, true));

  int tl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in any = Loopback(0);
  if (bind(tl, reinterpret_cast<sockaddr*>(&any), sizeof(any)) != 0 || listen(tl, 16) != 0) {
    Print("tcp_setup", errno);
    return 1;
  }
  uint16_t tcp_port = BoundPort(tl);
  Print("tcp_port", tcp_port);
  int tc = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in to = Loopback(tcp_port);
  Print("tcp", Result(connect(tc, reinterpret_cast<sockaddr*>(&to), sizeof(to))));
  // sendmsg without a name on the connected socket: intercepted, but not an interaction.
  char byte = 'x';
  iovec iov{&byte, 1};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  Print("sendmsg_noname", sendmsg(tc, &mh, MSG_NOSIGNAL) == 1 ? 0 : errno);

  int ur = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (bind(ur, reinterpret_cast<sockaddr*>(&any), sizeof(any)) != 0) Print("udp_setup", errno);
  uint16_t udp_port = BoundPort(ur);
  Print("udp_port", udp_port);
  int us = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in uto = Loopback(udp_port);
  Print("udp_sendto",
        sendto(us, "a", 1, 0, reinterpret_cast<sockaddr*>(&uto), sizeof(uto)) == 1 ? 0 : errno);
  int uc = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  Print("udp_connect", Result(connect(uc, reinterpret_cast<sockaddr*>(&uto), sizeof(uto))));
  Print("udp_send", send(uc, "b", 1, 0) == 1 ? 0 : errno);  // Not intercepted.

  std::string mq_name = "/shuttle-e2e-" + tag;
  mq_attr attr{};
  attr.mq_maxmsg = 1;
  attr.mq_msgsize = 16;
  mqd_t q = mq_open(mq_name.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600, &attr);
  Print("mq", q == static_cast<mqd_t>(-1) ? errno : 0);
  if (q != static_cast<mqd_t>(-1)) {
    mq_close(q);
    mq_unlink(mq_name.c_str());
  }
  int shm = shmget(0x5e770001, 4096, IPC_CREAT | 0600);
  Print("shm", shm < 0 ? errno : 0);
  if (shm >= 0) shmctl(shm, IPC_RMID, nullptr);
  Print("kill0", Result(kill(getpid(), 0)));
  int64_t x32 = syscall(0x40000000 | SYS_getpid);
  Print("x32", x32 < 0 ? errno : 0);

  // Bad input: the agent must answer as the kernel would, never hang or crash.
  int bad = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  Print("bad_connect", Result(connect(bad, reinterpret_cast<sockaddr*>(1), 16)));
  socklen_t ulen;
  sockaddr_un ua = UnixAddr(path, false, &ulen);
  Print("big_addrlen", Result(connect(bad, reinterpret_cast<sockaddr*>(&ua), 4096)));
  Print("bad_sendmsg", syscall(SYS_sendmsg, bad, 1, 0) < 0 ? errno : 0);
  Print("bad_mq", syscall(SYS_mq_open, 1, O_RDONLY, 0, 0) < 0 ? errno : 0);
  std::string long_name = "/" + std::string(300, 'q');
  mqd_t lq = mq_open(long_name.c_str(), O_RDONLY);
  Print("long_mq", lq == static_cast<mqd_t>(-1) ? errno : 0);
  close(bad);
  // A queue name that ends exactly at the end of a mapping (the next page is unmapped): a
  // partial read of the caller's memory must still find it.
  int64_t page = sysconf(_SC_PAGESIZE);
  char* two = static_cast<char*>(
      mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  munmap(two + page, page);
  std::string edge = "edge-" + tag;  // As glibc passes it: without the leading '/'.
  char* at = two + page - (edge.size() + 1);
  std::memcpy(at, edge.c_str(), edge.size() + 1);
  int64_t eq = syscall(SYS_mq_open, at, O_RDWR | O_CREAT | O_CLOEXEC, 0600, nullptr);
  Print("edge_mq", eq < 0 ? errno : 0);
  if (eq >= 0) {
    close(static_cast<int>(eq));
    mq_unlink(("/" + edge).c_str());
  }
  // The same, unterminated: the kernel would fault, so must the agent.
  std::memset(two + page - 8, 'u', 8);
  Print("edge_unterminated",
        syscall(SYS_mq_open, two + page - 8, O_RDONLY, 0, nullptr) < 0 ? errno : 0);
  unlink(path.c_str());
  return 0;
}

int Loop(int64_t n, const std::string& tag, bool timed) {
  std::string path = "/tmp/shuttle-e2e-" + tag + ".sock";
  int l = UnixListener(path, false);
  if (l < 0) {
    Print("listen", errno);
    return 1;
  }
  socklen_t len;
  sockaddr_un a = UnixAddr(path, false, &len);
  int64_t ok = 0, failed = 0, enosys = 0;
  timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int64_t i = 0; i < n; ++i) {
    int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = connect(c, reinterpret_cast<sockaddr*>(&a), len);
    if (rc == 0) {
      ++ok;
    } else if (errno == ENOSYS) {
      ++enosys;
    } else {
      ++failed;
    }
    close(c);
    int s = accept4(l, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (s >= 0) close(s);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  unlink(path.c_str());
  Print("ok", ok);
  Print("failed", failed);
  Print("enosys", enosys);
  if (timed && n > 0) {
    int64_t ns = (t1.tv_sec - t0.tv_sec) * int64_t{1000000000} + (t1.tv_nsec - t0.tv_nsec);
    Print("ns_per_connect", ns / n);
  }
  return ok == n ? 0 : 1;
}

// N kill(getpid(), 0) calls, timed: the cheapest intercepted syscall, so the difference to a
// bare run is the notification round trip itself.
int SignalBench(int64_t n) {
  timespec t0, t1;
  int64_t failed = 0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int64_t i = 0; i < n; ++i) failed += kill(getpid(), 0) != 0;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  int64_t ns = (t1.tv_sec - t0.tv_sec) * int64_t{1000000000} + (t1.tv_nsec - t0.tv_nsec);
  Print("ok", n - failed);
  Print("ns_per_call", n > 0 ? ns / n : 0);
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], "all") == 0) return All(argv[2]);
  if (argc == 4 && (std::strcmp(argv[1], "loop") == 0 || std::strcmp(argv[1], "bench") == 0)) {
    return Loop(std::strtoll(argv[2], nullptr, 10), argv[3], argv[1][0] == 'b');
  }
  if (argc == 3 && std::strcmp(argv[1], "sigbench") == 0) {
    return SignalBench(std::strtoll(argv[2], nullptr, 10));
  }
  std::fprintf(stderr, "usage: %s all TAG | loop N TAG | bench N TAG | sigbench N\n", argv[0]);
  return 2;
}
