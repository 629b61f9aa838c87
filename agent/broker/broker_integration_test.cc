// The broker against real namespaces, sockets, queues and seccomp listeners: a fake VM
// (broker_test_helper vm: own mount, network and IPC namespaces, a tmpfs root, servers of every
// kind) is brokered into, and intercepted callers (broker_test_helper connect/mq) get brokered
// descriptors through SECCOMP_IOCTL_NOTIF_ADDFD. Needs root; fails (never skips) without it.
// Every wait is bounded.
#include <fcntl.h>
#include <linux/seccomp.h>
#include <mqueue.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/broker/broker.h"
#include "agent/broker/broker_target.h"
#include "agent/broker/errors.h"
#include "agent/broker/injection.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent::broker {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(5);  // Bound of every wait in these tests.
constexpr uid_t kCallerUid = 1234;

// A broker_test_helper process: its stdin (closing it ends the helper) and stdout.
class Helper {
 public:
  static absl::StatusOr<std::unique_ptr<Helper>> Start(const std::vector<std::string>& args) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
      return absl::ErrnoToStatus(errno, "pipe2");
    }
    std::vector<std::string> all = {SHUTTLE_BROKER_HELPER_PATH};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    argv.reserve(all.size() + 1);
    for (std::string& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) return absl::ErrnoToStatus(errno, "fork");
    if (pid == 0) {  // Only async-signal-safe calls until exec.
      dup2(in[0], 0);
      dup2(out[1], 1);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    auto helper = std::unique_ptr<Helper>(new Helper(pid, in[1], out[0]));
    if (helper->pidfd_ < 0) return absl::ErrnoToStatus(errno, "pidfd_open");
    return helper;
  }

  ~Helper() {
    close(stdin_);
    syscall(SYS_pidfd_send_signal, pidfd_, SIGKILL, nullptr, 0);
    waitpid(pid_, nullptr, 0);
    close(stdout_);
    close(pidfd_);
  }

  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_; }

  // The next line of output (without its newline), waiting at most kWait.
  absl::StatusOr<std::string> ReadLine() {
    const absl::Time deadline = absl::Now() + kWait;
    for (;;) {
      const size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      pollfd p = {stdout_, POLLIN, 0};
      const int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (ms <= 0 || poll(&p, 1, ms) <= 0) {
        return absl::DeadlineExceededError("helper printed no complete line: '" + buffer_ + "'");
      }
      char buf[512];
      const ssize_t n = read(stdout_, buf, sizeof(buf));
      if (n <= 0) return absl::UnavailableError("helper exited; output: '" + buffer_ + "'");
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

  // Takes a duplicate of the helper's fd `fd`.
  UniqueFd TakeFd(int fd) const {
    return UniqueFd(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd_, fd, 0)));
  }

 private:
  Helper(pid_t pid, int in, int out)
      : pid_(pid),
        pidfd_(static_cast<int>(syscall(SYS_pidfd_open, pid, 0))),
        stdin_(in),
        stdout_(out) {}

  const pid_t pid_;
  const int pidfd_;
  const int stdin_;
  const int stdout_;
  std::string buffer_;
};

// "a=1 b=x reply=rest of line" -> {a: 1, b: x, reply: "rest of line"}.
std::map<std::string, std::string> Fields(const std::string& line) {
  std::map<std::string, std::string> out;
  std::string head = line;
  const size_t reply = line.find("reply=");
  if (reply != std::string::npos) {
    out["reply"] = line.substr(reply + 6);
    head = line.substr(0, reply);
  }
  for (absl::string_view kv : absl::StrSplit(head, ' ', absl::SkipEmpty())) {
    std::vector<std::string> parts = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (parts.size() == 2) out[parts[0]] = parts[1];
  }
  return out;
}

// Sends `payload` on `fd` and returns the reply (empty on timeout or error).
std::string RoundTrip(int fd, const std::string& payload) {
  if (write(fd, payload.data(), payload.size()) != static_cast<ssize_t>(payload.size())) return "";
  pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(kWait))) != 1) return "";
  char buf[512];
  const ssize_t n = read(fd, buf, sizeof(buf));
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

OpenOptions Bounded() {
  OpenOptions o;
  o.deadline = absl::Now() + kWait;
  return o;
}

OpenOptions AsCaller() {
  OpenOptions o = Bounded();
  o.as = Credentials{kCallerUid, kCallerUid, {}};
  return o;
}

class BrokerVmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "broker_integration_test needs root (namespaces, mounts, "
                                "seccomp listeners); CI runs it as root. Run it with sudo.";
    char dir[] = "/tmp/broker-test-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    ASSERT_EQ(mkdir((dir_ + "/vmroot").c_str(), 0755), 0);
    host_sock_path_ = dir_ + "/host.sock";
    // A host socket the VM's escape attempts aim at: reaching it would be an escape.
    host_listener_.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_un a = {};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, host_sock_path_.c_str(), sizeof(a.sun_path) - 1);
    ASSERT_EQ(bind(host_listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ASSERT_EQ(listen(host_listener_.get(), 16), 0);

    SHUTTLE_ASSERT_OK_AND_ASSIGN(vm_, Helper::Start({"vm", dir_ + "/vmroot", host_sock_path_}));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string ready, vm_->ReadLine());
    std::map<std::string, std::string> f = Fields(ready);
    ASSERT_TRUE(absl::SimpleAtoi(f["tcp"], &tcp_port_) &&
                absl::SimpleAtoi(f["tcp_full"], &tcp_full_port_) &&
                absl::SimpleAtoi(f["udp"], &udp_port_))
        << ready;
    SHUTTLE_ASSERT_OK_AND_ASSIGN(
        target_,
        BrokerTarget::ForVm("fakevm", vm_->pid(),
                            UniqueFd(static_cast<int>(syscall(SYS_pidfd_open, vm_->pid(), 0)))));
    Broker::Options options;
    options.threads = 2;
    SHUTTLE_ASSERT_OK_AND_ASSIGN(broker_, Broker::Create(options));
  }

  void TearDown() override {
    broker_.reset();
    vm_.reset();
    if (!dir_.empty()) {
      unlink(host_sock_path_.c_str());
      rmdir((dir_ + "/vmroot").c_str());
      rmdir(dir_.c_str());
    }
  }

  absl::StatusOr<UniqueFd> Open(BrokerRequest request, OpenOptions options = Bounded()) {
    return broker_->OpenAndWait(target_, std::move(request), std::move(options));
  }

  absl::StatusOr<UniqueFd> OpenPath(const std::string& path, int type = SOCK_STREAM) {
    return Open(UnixPathRequest{path, type});
  }

  // True if nothing ever connected to the host socket.
  bool HostUntouched() {
    UniqueFd c(accept4(host_listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    return !c.valid() && errno == EAGAIN;
  }

  std::string dir_;
  std::string host_sock_path_;
  UniqueFd host_listener_;
  std::unique_ptr<Helper> vm_;
  int tcp_port_ = 0, tcp_full_port_ = 0, udp_port_ = 0;
  BrokerTargetPtr target_;
  std::unique_ptr<Broker> broker_;
};

TEST_F(BrokerVmTest, UnixPathStreamEchoes) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd fd, OpenPath("/run/app.sock"));
  EXPECT_EQ(RoundTrip(fd.get(), "hello"), "app uid=0 hello");
  EXPECT_EQ(fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  EXPECT_EQ(fcntl(fd.get(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_EQ(broker_->stats().brokered.load(), 1u);
}

TEST_F(BrokerVmTest, UnixPathSeqpacketEchoes) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd fd, OpenPath("/run/seq.sock", SOCK_SEQPACKET));
  EXPECT_EQ(RoundTrip(fd.get(), "one packet"), "seq uid=0 one packet");
}

TEST_F(BrokerVmTest, UnixPathDgramDelivers) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd dgram, OpenPath("/run/dgram.sock", SOCK_DGRAM));
  ASSERT_EQ(send(dgram.get(), "datagram-1", 10, 0), 10);
  // An unbound datagram client has no address to answer to: read the result back over a stream.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd stream, OpenPath("/run/app.sock"));
  EXPECT_EQ(RoundTrip(stream.get(), "last-dgram"), "app uid=0 datagram-1");
}

TEST_F(BrokerVmTest, PathsResolveInsideTheVmRoot) {
  // Absolute symlinks and ".." above the root stay inside the VM.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd via_link, OpenPath("/run/inside-link"));
  EXPECT_EQ(RoundTrip(via_link.get(), "x"), "app uid=0 x");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd via_dots, OpenPath("/../../run/../run/./app.sock"));
  EXPECT_EQ(RoundTrip(via_dots.get(), "y"), "app uid=0 y");
}

TEST_F(BrokerVmTest, EscapesFromTheVmRootAreRefused) {
  // Each of these names the host's socket from inside the VM; none may reach it.
  EXPECT_THAT(OpenPath("/../../../../.." + host_sock_path_),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("fakevm")));
  EXPECT_THAT(OpenPath("/run/abs-link"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("abs")));
  EXPECT_THAT(OpenPath("/run/rel-link"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("rel")));
  EXPECT_THAT(OpenPath("/run/magic-link"),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("magic link")));
  EXPECT_THAT(OpenPath("/proc/self/root" + host_sock_path_),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("magic link")));
  EXPECT_THAT(OpenPath(absl::StrCat("/proc/", getpid(), "/root", host_sock_path_)),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("magic link")));
  EXPECT_TRUE(HostUntouched());
  EXPECT_EQ(broker_->stats().failed_not_found.load(), 3u);
  EXPECT_EQ(broker_->stats().failed_denied.load(), 3u);
  // The same host socket through the host target is reachable: the refusals above were the
  // VM root's doing, not a broken socket.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(BrokerTargetPtr host, BrokerTarget::Host());
  EXPECT_THAT(broker_->OpenAndWait(host, UnixPathRequest{host_sock_path_, SOCK_STREAM}, Bounded()),
              IsOk());
  EXPECT_FALSE(HostUntouched());
}

TEST_F(BrokerVmTest, NotASocketIsRefused) {
  absl::StatusOr<UniqueFd> fd = OpenPath("/run");
  EXPECT_THAT(fd, StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not a socket")));
  EXPECT_EQ(ErrnoForStatus(fd.status()), ECONNREFUSED);
}

TEST_F(BrokerVmTest, AbstractEchoesOnlyInTheVmNetworkNamespace) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd fd,
                               Open(UnixAbstractRequest{"shuttle-broker-test", SOCK_STREAM}));
  EXPECT_EQ(RoundTrip(fd.get(), "abc"), "abstract uid=0 abc");
  // The name does not exist in the host's namespace (the worker went back there).
  SHUTTLE_ASSERT_OK_AND_ASSIGN(BrokerTargetPtr host, BrokerTarget::Host());
  absl::StatusOr<UniqueFd> on_host = broker_->OpenAndWait(
      host, UnixAbstractRequest{"shuttle-broker-test", SOCK_STREAM}, Bounded());
  EXPECT_THAT(on_host, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("host")));
  EXPECT_EQ(ErrnoForStatus(on_host.status()), ECONNREFUSED);
  EXPECT_EQ(broker_->stats().failed_refused.load(), 1u);
}

TEST_F(BrokerVmTest, TcpEchoes) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(InetRequest request,
                               InetRequest::Make("127.0.0.1", tcp_port_, SOCK_STREAM));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd fd, Open(request));
  EXPECT_EQ(RoundTrip(fd.get(), "over tcp"), "tcp over tcp");
  EXPECT_EQ(fcntl(fd.get(), F_GETFL) & O_NONBLOCK, 0);
}

TEST_F(BrokerVmTest, UdpEchoes) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(InetRequest request,
                               InetRequest::Make("127.0.0.1", udp_port_, SOCK_DGRAM));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd fd, Open(request));
  EXPECT_EQ(RoundTrip(fd.get(), "over udp"), "udp over udp");
}

TEST_F(BrokerVmTest, TcpWithNothingListeningIsRefused) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(InetRequest request, InetRequest::Make("127.0.0.1", 1, SOCK_STREAM));
  absl::StatusOr<UniqueFd> fd = Open(request);
  EXPECT_THAT(fd, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("tcp 127.0.0.1:1")));
  EXPECT_EQ(ErrnoForStatus(fd.status()), ECONNREFUSED);
}

TEST_F(BrokerVmTest, UnixConnectEndsAtTheDeadlineWhenTheBacklogIsFull) {
  // Backlog 0 admits one pending connection; the next waits for an accept that never comes.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd first, OpenPath("/run/full.sock"));
  OpenOptions options;
  options.deadline = absl::Now() + absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  absl::StatusOr<UniqueFd> second = Open(UnixPathRequest{"/run/full.sock", SOCK_STREAM}, options);
  const absl::Duration took = absl::Now() - start;
  EXPECT_THAT(second, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("deadline")));
  EXPECT_EQ(ErrnoForStatus(second.status()), ETIMEDOUT);
  EXPECT_GE(took, absl::Milliseconds(250));
  EXPECT_LT(took, absl::Seconds(3));
  EXPECT_EQ(broker_->stats().failed_deadline.load(), 1u);
}

TEST_F(BrokerVmTest, TcpConnectEndsAtTheDeadlineWhenTheBacklogIsFull) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(InetRequest request,
                               InetRequest::Make("127.0.0.1", tcp_full_port_, SOCK_STREAM));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd first, Open(request));
  OpenOptions options;
  options.deadline = absl::Now() + absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  EXPECT_THAT(Open(request, options),
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("tcp")));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

TEST_F(BrokerVmTest, ConnectsAsTheCaller) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd fd, Open(UnixPathRequest{"/run/app.sock"}, AsCaller()));
  EXPECT_EQ(RoundTrip(fd.get(), "who"), absl::StrCat("app uid=", kCallerUid, " who"));
  // File permissions are checked as the caller: the 0700 root socket is not its to reach.
  EXPECT_THAT(Open(UnixPathRequest{"/run/private.sock"}, AsCaller()),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("private.sock")));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd as_root, OpenPath("/run/private.sock"));
  EXPECT_EQ(RoundTrip(as_root.get(), "z"), "private uid=0 z");
  // The workers are the agent again afterwards.
  EXPECT_EQ(geteuid(), 0u);
}

TEST_F(BrokerVmTest, MessageQueueRoundTrip) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd req, Open(MqRequest{"/shuttle-req", O_WRONLY}, AsCaller()));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd resp, Open(MqRequest{"/shuttle-resp", O_RDONLY}));
  ASSERT_EQ(mq_send(req.get(), "hi", 2, 0), 0) << strerror(errno);
  char buf[128];
  timespec until = absl::ToTimespec(absl::Now() + kWait);
  const ssize_t n = mq_timedreceive(resp.get(), buf, sizeof(buf), nullptr, &until);
  ASSERT_GT(n, 0) << strerror(errno);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), "echo:hi");
  // The queue is the VM's: the host has no such queue.
  EXPECT_EQ(mq_open("/shuttle-req", O_RDONLY), -1);
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(BrokerVmTest, MessageQueueIsCreatedOnlyWhenTheCallerAsks) {
  EXPECT_THAT(Open(MqRequest{"/fresh", O_RDWR}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("mq /fresh")));
  MqRequest create{"/fresh", O_RDWR | O_CREAT | O_EXCL, 0600, mq_attr{}};
  create.attr->mq_maxmsg = 2;
  create.attr->mq_msgsize = 16;
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd created, Open(create, AsCaller()));
  mq_attr attr{};
  ASSERT_EQ(mq_getattr(created.get(), &attr), 0);
  EXPECT_EQ(attr.mq_maxmsg, 2);
  EXPECT_THAT(Open(MqRequest{"/fresh", O_RDWR}), IsOk());
  EXPECT_EQ(mq_open("/fresh", O_RDONLY), -1);  // Not on the host.
  // Created as the caller: mode 0600 keeps another user out.
  OpenOptions other = Bounded();
  other.as = Credentials{kCallerUid + 1, kCallerUid + 1, {}};
  EXPECT_THAT(Open(MqRequest{"/fresh", O_RDWR}, other),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("mq_open")));
}

TEST_F(BrokerVmTest, GoneVmIsUnavailable) {
  vm_.reset();  // Kills and reaps the VM's "init".
  EXPECT_THAT(OpenPath("/run/app.sock"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("gone")));
  EXPECT_THAT(Open(UnixAbstractRequest{"shuttle-broker-test", SOCK_STREAM}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("fakevm")));
  EXPECT_EQ(broker_->stats().failed_vm_gone.load(), 2u);
}

TEST_F(BrokerVmTest, TargetRefusesAPidfdOfAnotherProcess) {
  EXPECT_THAT(
      BrokerTarget::ForVm("fakevm", vm_->pid() + 100000,
                          UniqueFd(static_cast<int>(syscall(SYS_pidfd_open, vm_->pid(), 0)))),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("refers to pid")));
}

// Intercepted callers: the test is the supervisor of a helper's seccomp listener.
class BrokerInjectionTest : public BrokerVmTest {
 protected:
  // Starts `args`, takes its listener and receives its first notification.
  void StartCaller(const std::vector<std::string>& args) {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(caller_, Helper::Start(args));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string line, caller_->ReadLine());
    int fd = -1;
    ASSERT_TRUE(absl::SimpleAtoi(Fields(line)["listener"], &fd)) << line;
    listener_ = caller_->TakeFd(fd);
    ASSERT_TRUE(listener_.valid()) << strerror(errno);
    pollfd p = {listener_.get(), POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(kWait))), 1);
    ASSERT_EQ(ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_RECV, &notif_), 0) << strerror(errno);
  }

  // The caller's report line, as fields.
  std::map<std::string, std::string> Report() {
    absl::StatusOr<std::string> line = caller_->ReadLine();
    EXPECT_THAT(line, IsOk());
    return line.ok() ? Fields(*line) : std::map<std::string, std::string>{};
  }

  // Answers the caller's connect() with a brokered connect to the VM's /run/other.sock (a
  // redirect: the caller asked for a path that exists nowhere).
  void BrokerConnectToOther() {
    ASSERT_EQ(notif_.data.nr, __NR_connect);
    const int caller_fd = static_cast<int>(notif_.data.args[0]);
    SHUTTLE_ASSERT_OK_AND_ASSIGN(CallerSocket socket, InspectCallerSocket(tid(), caller_fd));
    EXPECT_EQ(socket.family, AF_UNIX);
    OpenOptions options = Bounded();
    SHUTTLE_ASSERT_OK_AND_ASSIGN(options.as, ReadCallerCredentials(tid()));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd fd,
                                 Open(UnixPathRequest{"/run/other.sock", socket.type}, options));
    EXPECT_THAT(InjectConnectedSocket(listener_.get(), notif_.id, caller_fd, socket, std::move(fd)),
                IsOk());
  }

  pid_t tid() const { return static_cast<pid_t>(notif_.pid); }

  std::unique_ptr<Helper> caller_;
  UniqueFd listener_;
  seccomp_notif notif_ = {};
};

TEST_F(BrokerInjectionTest, InjectedConnectReturnsZeroOnTheCallersFd) {
  StartCaller({"connect", "/nowhere/app.sock", "cloexec"});
  BrokerConnectToOther();
  std::map<std::string, std::string> r = Report();
  EXPECT_EQ(r["connect"], "0");
  EXPECT_EQ(r["reply"], "other uid=0 ping");
  EXPECT_EQ(r["nonblock"], "0");
  EXPECT_EQ(r["cloexec"], "1");
  EXPECT_EQ(r["rcvtimeo"], "7");  // The caller's socket option survived the swap.
}

TEST_F(BrokerInjectionTest, InjectedConnectKeepsNonblockAndNoCloexec) {
  StartCaller({"connect", "/nowhere/app.sock", "nonblock"});
  BrokerConnectToOther();
  std::map<std::string, std::string> r = Report();
  EXPECT_EQ(r["connect"], "0");
  EXPECT_EQ(r["reply"], "other uid=0 ping");
  EXPECT_EQ(r["nonblock"], "1");
  EXPECT_EQ(r["cloexec"], "0");
}

TEST_F(BrokerInjectionTest, SocketTypeMismatchIsAClearError) {
  StartCaller({"connect", "/nowhere/app.sock", "dgram"});
  const int caller_fd = static_cast<int>(notif_.data.args[0]);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CallerSocket socket, InspectCallerSocket(tid(), caller_fd));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd stream, OpenPath("/run/other.sock", SOCK_STREAM));
  absl::Status injected =
      InjectConnectedSocket(listener_.get(), notif_.id, caller_fd, socket, std::move(stream));
  EXPECT_THAT(injected, StatusIs(absl::StatusCode::kFailedPrecondition,
                                 HasSubstr(absl::StrCat("fd ", caller_fd, " is a socket of"))));
  // The notification is still pending: fail it with the errno the status carries.
  EXPECT_THAT(FailNotification(listener_.get(), notif_.id, ErrnoForStatus(injected)), IsOk());
  EXPECT_EQ(Report()["connect"], absl::StrCat(EPROTOTYPE));
}

TEST_F(BrokerInjectionTest, InjectedMqOpenReturnsTheVmsQueue) {
  StartCaller({"mq", "/caller-queue"});
  ASSERT_EQ(notif_.data.nr, __NR_mq_open);
  const int flags = static_cast<int>(notif_.data.args[1]);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd queue, Open(MqRequest{"/shuttle-req", flags}));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      int newfd, InjectAsResult(listener_.get(), notif_.id, std::move(queue), O_CLOEXEC));
  std::map<std::string, std::string> r = Report();
  EXPECT_EQ(r["mq"], "0");
  EXPECT_EQ(r["fd"], absl::StrCat(newfd));
  EXPECT_EQ(r["nonblock"], "1");
  EXPECT_EQ(r["cloexec"], "1");
  EXPECT_EQ(r["sent"], "0");
  // The VM's server echoed what the caller sent into the VM's queue.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd resp, Open(MqRequest{"/shuttle-resp", O_RDONLY}));
  char buf[128];
  timespec until = absl::ToTimespec(absl::Now() + kWait);
  const ssize_t n = mq_timedreceive(resp.get(), buf, sizeof(buf), nullptr, &until);
  ASSERT_GT(n, 0) << strerror(errno);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), "echo:from-caller");
}

TEST_F(BrokerInjectionTest, InjectingForAGoneCallerIsNotFound) {
  StartCaller({"connect", "/nowhere/app.sock"});
  const int caller_fd = static_cast<int>(notif_.data.args[0]);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(CallerSocket socket, InspectCallerSocket(tid(), caller_fd));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(UniqueFd fd, OpenPath("/run/other.sock"));
  caller_.reset();  // Killed and reaped: the notification is no longer pending.
  EXPECT_THAT(InjectConnectedSocket(listener_.get(), notif_.id, caller_fd, socket, std::move(fd)),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("gone")));
}

}  // namespace
}  // namespace shuttle::agent::broker
