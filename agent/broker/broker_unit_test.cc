// Broker pieces that need no privileges: request validation, descriptions, errno mapping, /proc
// parsing, the worker queue (overload, deadlines while queued), and brokering to the host
// target, whose sockets need neither namespaces nor root.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "agent/broker/broker.h"
#include "agent/broker/broker_target.h"
#include "agent/broker/errors.h"
#include "agent/broker/injection.h"
#include "agent/broker/openers.h"
#include "agent/broker/proc_files.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent::broker {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

using broker_internal::IsLocalAddress;
using broker_internal::ValidateRequest;

sockaddr_storage Address(const std::string& ip, uint16_t port) {
  absl::StatusOr<InetRequest> r = InetRequest::Make(ip, port, SOCK_STREAM);
  EXPECT_THAT(r, IsOk());
  return r.ok() ? r->address : sockaddr_storage{};
}

TEST(ValidateRequestTest, AcceptsWellFormedRequests) {
  EXPECT_THAT(ValidateRequest(UnixPathRequest{"/run/app.sock", SOCK_STREAM}), IsOk());
  EXPECT_THAT(ValidateRequest(UnixAbstractRequest{std::string("a\0b", 3), SOCK_DGRAM}), IsOk());
  EXPECT_THAT(ValidateRequest(*InetRequest::Make("::1", 53, SOCK_DGRAM)), IsOk());
  EXPECT_THAT(ValidateRequest(MqRequest{"/jobs", O_WRONLY | O_CREAT | O_EXCL | O_NONBLOCK}),
              IsOk());
}

TEST(ValidateRequestTest, RefusesBadRequestsSayingWhy) {
  EXPECT_THAT(ValidateRequest(UnixPathRequest{"run/app.sock", SOCK_STREAM}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not absolute")));
  EXPECT_THAT(ValidateRequest(UnixPathRequest{std::string("/a\0b", 4), SOCK_STREAM}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NUL")));
  EXPECT_THAT(ValidateRequest(UnixPathRequest{"/run/app.sock", SOCK_RAW}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("SOCK_SEQPACKET")));
  EXPECT_THAT(ValidateRequest(UnixAbstractRequest{"", SOCK_STREAM}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("0 bytes")));
  EXPECT_THAT(ValidateRequest(UnixAbstractRequest{std::string(108, 'x'), SOCK_STREAM}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("108 bytes")));
  EXPECT_THAT(ValidateRequest(*InetRequest::Make("10.0.0.1", 80, SOCK_STREAM)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tcp 10.0.0.1:80")));
  EXPECT_THAT(ValidateRequest(*InetRequest::Make("127.0.0.1", 0, SOCK_STREAM)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("port 0")));
  EXPECT_THAT(ValidateRequest(*InetRequest::Make("127.0.0.1", 80, SOCK_SEQPACKET)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("IP socket type")));
  EXPECT_THAT(ValidateRequest(MqRequest{"/a/b", O_RDONLY}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'/a/b'")));
  EXPECT_THAT(ValidateRequest(MqRequest{"/", O_RDONLY}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("queue name")));
  EXPECT_THAT(ValidateRequest(MqRequest{"/q", O_RDONLY | O_TRUNC}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mq_open flags")));
  MqRequest attr_without_create{"/q", O_RDONLY};
  attr_without_create.attr = mq_attr{};
  EXPECT_THAT(ValidateRequest(attr_without_create),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("without O_CREAT")));
  EXPECT_THAT(InetRequest::Make("localhost", 1, SOCK_STREAM),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not an IP address")));
}

TEST(IsLocalAddressTest, LoopbackAndAnyOnly) {
  EXPECT_TRUE(IsLocalAddress(Address("127.0.0.1", 1)));
  EXPECT_TRUE(IsLocalAddress(Address("127.255.0.9", 1)));
  EXPECT_TRUE(IsLocalAddress(Address("0.0.0.0", 1)));
  EXPECT_TRUE(IsLocalAddress(Address("::1", 1)));
  EXPECT_TRUE(IsLocalAddress(Address("::", 1)));
  EXPECT_TRUE(IsLocalAddress(Address("::ffff:127.0.0.2", 1)));
  EXPECT_FALSE(IsLocalAddress(Address("128.0.0.1", 1)));
  EXPECT_FALSE(IsLocalAddress(Address("::ffff:10.0.0.1", 1)));
  EXPECT_FALSE(IsLocalAddress(Address("fe80::1", 1)));
}

TEST(DescribeRequestTest, NamesKindAndObject) {
  EXPECT_EQ(DescribeRequest(UnixPathRequest{"/run/a.sock", SOCK_SEQPACKET}),
            "unix seqpacket /run/a.sock");
  EXPECT_EQ(DescribeRequest(UnixAbstractRequest{std::string("x\0y", 3), SOCK_DGRAM}),
            "unix dgram @x\\x00y");
  EXPECT_EQ(DescribeRequest(*InetRequest::Make("::1", 5432, SOCK_STREAM)), "tcp [::1]:5432");
  EXPECT_EQ(DescribeRequest(*InetRequest::Make("127.0.0.1", 53, SOCK_DGRAM)), "udp 127.0.0.1:53");
  EXPECT_EQ(DescribeRequest(MqRequest{"/jobs", O_RDONLY}), "mq /jobs");
}

TEST(ErrorsTest, ErrnoTravelsWithTheStatus) {
  absl::Status s = ErrnoError(ECONNREFUSED, "VM db: unix stream /x: connect");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), HasSubstr("VM db"));
  EXPECT_EQ(ErrnoForStatus(s), ECONNREFUSED);
  absl::Status d = ErrnoErrorWithCode(absl::StatusCode::kDeadlineExceeded, ETIMEDOUT, "late");
  EXPECT_EQ(d.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ErrnoForStatus(d), ETIMEDOUT);
  // Without an attached errno the code decides.
  EXPECT_EQ(ErrnoForStatus(absl::NotFoundError("x")), ENOENT);
  EXPECT_EQ(ErrnoForStatus(absl::UnavailableError("VM gone")), ECONNREFUSED);
  EXPECT_EQ(AttachedErrno(absl::UnavailableError("VM gone")), std::nullopt);
}

TEST(ProcFilesTest, FieldValueFindsWholeKeys) {
  const std::string info = "pos:\t0\nflags:\t02004002\nmnt_id:\t15\nPid:\t-1\n";
  EXPECT_EQ(broker_internal::FieldValue(info, "flags"), "02004002");
  EXPECT_EQ(broker_internal::FieldValue(info, "Pid"), "-1");
  EXPECT_EQ(broker_internal::FieldValue(info, "flag"), std::nullopt);
  EXPECT_EQ(broker_internal::FieldValue(info, "ino"), std::nullopt);
  EXPECT_THAT(broker_internal::ReadProcFile("/proc/self/no-such-file"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no-such-file")));
}

// A kept pidfd is used again while its process lives, and never once it is gone: the pid then
// fails as gone (or would be opened afresh for a new process of that number).
TEST(CallerTest, KeptPidfdsFollowTheirThreads) {
  CallerPidfds pidfds(/*capacity=*/2);
  UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct stat want;
  ASSERT_EQ(fstat(s.get(), &want), 0);
  auto same_file = [&](const absl::StatusOr<UniqueFd>& copy) {
    struct stat got;
    return copy.ok() && fstat(copy->get(), &got) == 0 && got.st_ino == want.st_ino;
  };
  const pid_t self = static_cast<pid_t>(syscall(SYS_gettid));
  EXPECT_TRUE(same_file(pidfds.Duplicate(self, s.get())));
  EXPECT_TRUE(same_file(pidfds.Duplicate(self, s.get())));  // Through the kept pidfd.
  EXPECT_EQ(pidfds.size(), 1u);
  EXPECT_THAT(pidfds.Duplicate(self, 999999),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("not open")));

  // Another process holding the same socket (fork: the child's fd 's' is its own copy).
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    pause();
    _exit(0);
  }
  EXPECT_TRUE(same_file(pidfds.Duplicate(child, s.get())));
  EXPECT_EQ(pidfds.size(), 2u);
  ASSERT_EQ(kill(child, SIGKILL), 0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);  // Reaped: the pid is free now.
  // The kept pidfd is of a process that is gone: not used, dropped, and the pid names nothing.
  EXPECT_THAT(pidfds.Duplicate(child, s.get()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("gone")));
  EXPECT_EQ(pidfds.size(), 1u);
}

TEST(CallerTest, ReadsOwnCredentialsAndSocket) {
  absl::StatusOr<Credentials> creds = ReadCallerCredentials(getpid());
  ASSERT_THAT(creds, IsOk());
  EXPECT_EQ(creds->uid, geteuid());
  EXPECT_EQ(creds->gid, getegid());
  UniqueFd s(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  absl::StatusOr<CallerSocket> info = InspectCallerSocket(getpid(), s.get());
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->family, AF_UNIX);
  EXPECT_EQ(info->type, SOCK_SEQPACKET);
  EXPECT_TRUE(info->nonblocking);
  EXPECT_TRUE(info->cloexec);
  EXPECT_FALSE(info->connected);
  EXPECT_EQ(info->send_timeout.tv_sec, 0);
  EXPECT_EQ(info->receive_timeout.tv_sec, 0);
  // A connected pair with timeouts: both read, as the injection carries them over.
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  UniqueFd a(pair[0]), b(pair[1]);
  const timeval send_timeout{3, 0}, receive_timeout{5, 0};
  ASSERT_EQ(setsockopt(a.get(), SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout)), 0);
  ASSERT_EQ(setsockopt(a.get(), SOL_SOCKET, SO_RCVTIMEO, &receive_timeout, sizeof(receive_timeout)),
            0);
  info = InspectCallerSocket(getpid(), a.get());
  ASSERT_THAT(info, IsOk());
  EXPECT_TRUE(info->connected);
  EXPECT_FALSE(info->nonblocking);
  EXPECT_FALSE(info->cloexec);
  EXPECT_EQ(info->send_timeout.tv_sec, 3);
  EXPECT_EQ(info->receive_timeout.tv_sec, 5);
  UniqueFd file(open("/proc/self/status", O_RDONLY));  // Not close-on-exec, not a socket.
  EXPECT_THAT(InspectCallerSocket(getpid(), file.get()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("not a socket")));
  EXPECT_THAT(InspectCallerSocket(getpid(), 999999),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("not open")));
}

TEST(BrokerTargetTest, RefusesBadVms) {
  EXPECT_THAT(BrokerTarget::ForVm("host", getpid(), UniqueFd()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'host'")));
  EXPECT_THAT(BrokerTarget::ForVm("db", getpid(), UniqueFd(open("/", O_PATH | O_CLOEXEC))),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a pidfd")));
}

// A listening unix socket in a temporary directory of the host.
class HostBrokerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/broker-unit-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/s.sock";
    listener_.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a = {};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof(a.sun_path) - 1);
    ASSERT_EQ(bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ASSERT_EQ(listen(listener_.get(), 16), 0);
    SHUTTLE_ASSERT_OK_AND_ASSIGN(host_, BrokerTarget::Host());
  }
  void TearDown() override {
    unlink(path_.c_str());
    rmdir(dir_.c_str());
  }

  OpenOptions Bounded() {
    OpenOptions o;
    o.deadline = absl::Now() + absl::Seconds(5);
    return o;
  }

  std::string dir_, path_;
  UniqueFd listener_;
  BrokerTargetPtr host_;
};

TEST_F(HostBrokerTest, ConnectsAHostPathAndDataFlows) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Broker> broker, Broker::Create({}));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      UniqueFd fd, broker->OpenAndWait(host_, UnixPathRequest{path_, SOCK_STREAM}, Bounded()));
  UniqueFd server(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(server.valid());
  ASSERT_EQ(write(fd.get(), "ab", 2), 2);
  char buf[4] = {};
  ASSERT_EQ(read(server.get(), buf, sizeof(buf)), 2);
  EXPECT_EQ(std::string(buf, 2), "ab");
  EXPECT_EQ(broker->stats().brokered.load(), 1u);
  EXPECT_THAT(broker->OpenAndWait(host_, UnixPathRequest{dir_ + "/none", SOCK_STREAM}, Bounded()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("host: unix stream")));
  EXPECT_EQ(broker->stats().failed_not_found.load(), 1u);
}

TEST_F(HostBrokerTest, InvalidRequestFailsAtOnce) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Broker> broker, Broker::Create({}));
  bool called = false;
  broker->Open(
      host_, UnixPathRequest{"relative", SOCK_STREAM}, Bounded(), [&](absl::StatusOr<UniqueFd> r) {
        called = true;
        EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("relative")));
      });
  EXPECT_TRUE(called);  // On this thread, before Open returned.
  EXPECT_EQ(broker->stats().failed_invalid.load(), 1u);
  EXPECT_THAT(Broker::Create({.threads = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at least one thread")));
}

TEST_F(HostBrokerTest, FullQueueIsRefusedAndStaleJobsExpire) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Broker> broker,
                               Broker::Create({.threads = 1, .max_queued = 1}));
  // Hold the only worker inside a callback.
  absl::Notification running, release;
  broker->Open(host_, UnixPathRequest{path_, SOCK_STREAM}, Bounded(),
               [&](absl::StatusOr<UniqueFd> r) {
                 running.Notify();
                 release.WaitForNotification();
               });
  ASSERT_TRUE(running.WaitForNotificationWithTimeout(absl::Seconds(5)));
  // One job fits in the queue; its deadline passes while it waits there.
  absl::Notification stale_done;
  absl::Status stale;
  OpenOptions expired;
  expired.deadline = absl::Now();
  broker->Open(host_, UnixPathRequest{path_, SOCK_STREAM}, expired,
               [&](absl::StatusOr<UniqueFd> r) {
                 stale = r.status();
                 stale_done.Notify();
               });
  // The next one does not fit.
  absl::Status overload;
  broker->Open(host_, UnixPathRequest{path_, SOCK_STREAM}, Bounded(),
               [&](absl::StatusOr<UniqueFd> r) { overload = r.status(); });
  EXPECT_THAT(overload, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("queued")));
  release.Notify();
  ASSERT_TRUE(stale_done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_THAT(stale, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("while queued")));
  EXPECT_EQ(ErrnoForStatus(stale), ETIMEDOUT);
  EXPECT_EQ(broker->stats().failed_overload.load(), 1u);
  EXPECT_EQ(broker->stats().failed_deadline.load(), 1u);
}

}  // namespace
}  // namespace shuttle::agent::broker
