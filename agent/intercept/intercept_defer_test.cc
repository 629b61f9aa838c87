// Deferred answers (InterceptedCall::Defer, PendingReply). Through the fake source: the handler
// returns kDeferred, multi-part calls can't defer, a backend without deferral says so. Through
// the real seccomp source: a thread of this test (or a forked child)
// installs a user-notify filter for connect() and calls it; the decider takes the reply; the
// test finishes it from another thread and the call returns what was given. Also: a dropped
// reply fails the call with EPERM, a reply outlives the removal of its listener (its fd stays
// open, so no ioctl can hit a reused fd number), and journal slots freed by other threads are
// reused. Needs no privileges (no_new_privs); labelled unit.
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/intercept/fakes.h"
#include "agent/intercept/intercept_handler.h"
#include "agent/intercept/process_access.h"
#include "agent/intercept/seccomp_source.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent::intercept {
namespace {

using ::shuttle::testing::IsOk;

constexpr absl::Duration kWait = absl::Seconds(20);
constexpr char kVm[] = "test-vm";

// Every caller is in kVm.
class AnyVm final : public VmResolver {
 public:
  std::optional<std::string> VmOfPid(pid_t) const override { return std::string(kVm); }
};

// Defers every call and hands the replies to the test, in order.
class DeferringDecider final : public Decider {
 public:
  Answer Decide(const InterceptedCall& call) override {
    PendingReplyPtr reply = call.Defer();
    if (reply == nullptr) return Answer::Fail(EPERM);
    absl::MutexLock lock(&mu_);
    replies_.push_back(std::move(reply));
    return Answer::Deferred();
  }
  // The next reply the loop handed over; null after `timeout`.
  PendingReplyPtr Take(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !replies_.empty(); };
    if (!mu_.AwaitWithTimeout(absl::Condition(&ready), timeout)) return nullptr;
    PendingReplyPtr reply = std::move(replies_.front());
    replies_.pop_front();
    return reply;
  }
  void Clear() {
    std::deque<PendingReplyPtr> dropped;
    absl::MutexLock lock(&mu_);
    dropped.swap(replies_);
  }

 private:
  absl::Mutex mu_;
  std::deque<PendingReplyPtr> replies_ ABSL_GUARDED_BY(mu_);
};

// Installs, for the calling thread only, a filter that sends connect() to a new listener;
// returns the listener fd or -errno. The caller must have no_new_privs (or CAP_SYS_ADMIN).
int InstallConnectFilter() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_connect, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  return fd < 0 ? -errno : static_cast<int>(fd);
}

// connect() of a fresh AF_UNIX stream socket to `path`: 0 or the errno.
int ConnectUnix(const std::string& path) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return errno;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  int rc = connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int err = rc == 0 ? 0 : errno;
  close(s);
  return err;
}

// One byte with room for one SCM_RIGHTS descriptor, for sendmsg() and recvmsg(). No
// allocation: usable in a forked child.
struct FdMessage {
  FdMessage() {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  FdMessage(const FdMessage&) = delete;
  FdMessage& operator=(const FdMessage&) = delete;

  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
};

// Ids in flight in the journal file (layout in inflight_journal.h).
std::vector<uint64_t> InFlight(const std::string& path) {
  std::vector<uint64_t> ids;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ids;
  uint64_t slot[2];
  for (off_t off = 64; pread(fd, slot, sizeof(slot), off) == sizeof(slot); off += sizeof(slot)) {
    if (slot[1] == 1) ids.push_back(slot[0]);
  }
  close(fd);
  return ids;
}

// --- fake source ----------------------------------------------------------------------------

// Defers when it may and records whether it could; answers `error` otherwise.
class MaybeDeferringDecider final : public Decider {
 public:
  Answer Decide(const InterceptedCall& call) override {
    ++calls_;
    PendingReplyPtr reply = call.Defer();
    if (reply == nullptr) return Answer::Fail(ECONNREFUSED);
    replies_.push_back(std::move(reply));
    return Answer::Deferred();
  }
  int calls_ = 0;
  std::vector<PendingReplyPtr> replies_;  // Loop thread (Drain) only.
};

constexpr pid_t kPid = 4242;
constexpr uint64_t kAddr = 0x10000;
constexpr uint64_t kVec = 0x30000;

SyscallEvent Event(uint64_t id, int nr, uint64_t a0, uint64_t a1, uint64_t a2) {
  SyscallEvent e;
  e.id = id;
  e.pid = kPid;
  e.nr = nr;
  e.arch = AUDIT_ARCH_X86_64;
  e.args[0] = a0;
  e.args[1] = a1;
  e.args[2] = a2;
  return e;
}

class FakeDeferTest : public ::testing::Test {
 protected:
  FakeDeferTest() : handler_(memory_, fds_, vms_, decider_) {
    vms_.Set(kPid, kVm);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, "/run/x.sock");
    memory_.MapStruct(kPid, kAddr, addr);
  }
  FakeInterceptionSource::Handled Deliver(const SyscallEvent& e) {
    source_.Inject(e, kVm);
    auto handled = source_.Drain(handler_);
    EXPECT_EQ(handled.size(), 1u);
    return handled.empty() ? FakeInterceptionSource::Handled{} : handled[0];
  }

  FakeProcessMemory memory_;
  FakeProcessFds fds_;
  FakeVmResolver vms_;
  MaybeDeferringDecider decider_;
  InterceptHandler handler_;
  FakeInterceptionSource source_;
};

TEST_F(FakeDeferTest, DeferredCallIsAnsweredByItsReplyFromAnotherThread) {
  auto h = Deliver(Event(5, SYS_connect, 3, kAddr, sizeof(sockaddr_un)));
  EXPECT_EQ(h.response.kind, Response::Kind::kDeferred);
  EXPECT_TRUE(h.deferred);
  EXPECT_EQ(handler_.stats().deferred.load(), 1u);
  EXPECT_EQ(handler_.stats().denied.load(), 0u);
  ASSERT_EQ(decider_.replies_.size(), 1u);
  EXPECT_EQ(source_.pending_replies(), 1u);
  EXPECT_FALSE(source_.WaitForReply(5, absl::ZeroDuration()).has_value());
  PendingReplyPtr reply = std::move(decider_.replies_[0]);
  std::thread([&reply] { reply->Finish(Answer::Fail(ENETUNREACH)); }).join();
  auto answered = source_.WaitForReply(5, kWait);
  ASSERT_TRUE(answered.has_value());
  EXPECT_EQ(answered->answer.error, ENETUNREACH);
  EXPECT_FALSE(answered->abandoned);
  EXPECT_EQ(source_.pending_replies(), 0u);
}

TEST_F(FakeDeferTest, DroppedReplyAnswersEperm) {
  Deliver(Event(6, SYS_connect, 3, kAddr, sizeof(sockaddr_un)));
  ASSERT_EQ(decider_.replies_.size(), 1u);
  decider_.replies_.clear();
  auto answered = source_.WaitForReply(6, kWait);
  ASSERT_TRUE(answered.has_value());
  EXPECT_EQ(answered->answer.error, EPERM);
  EXPECT_TRUE(answered->abandoned);
}

TEST_F(FakeDeferTest, BackendWithoutDeferralMakesTheDeciderAnswerNow) {
  source_.set_deferral(false);
  auto h = Deliver(Event(7, SYS_connect, 3, kAddr, sizeof(sockaddr_un)));
  EXPECT_EQ(h.response.kind, Response::Kind::kFail);
  EXPECT_EQ(h.response.error, ECONNREFUSED);
  EXPECT_FALSE(h.deferred);
}

TEST_F(FakeDeferTest, MultiPartCallsCannotDefer) {
  fds_.SetSocket(kPid, 3, SOCK_DGRAM);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(53);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  memory_.MapStruct(kPid, kAddr + 0x100, sin);
  mmsghdr vec[2] = {};
  for (mmsghdr& m : vec) {
    m.msg_hdr.msg_name = reinterpret_cast<void*>(kAddr + 0x100);
    m.msg_hdr.msg_namelen = sizeof(sin);
  }
  memory_.MapStruct(kPid, kVec, vec);
  // Two messages: decided now (the decider could not defer).
  auto h = Deliver(Event(8, SYS_sendmmsg, 3, kVec, 2));
  EXPECT_EQ(h.response.kind, Response::Kind::kFail);
  EXPECT_EQ(h.response.error, ECONNREFUSED);
  // One message is a single-part call: it may defer.
  h = Deliver(Event(9, SYS_sendmmsg, 3, kVec, 1));
  EXPECT_EQ(h.response.kind, Response::Kind::kDeferred);
  EXPECT_EQ(decider_.calls_, 2);
}

// --- real seccomp source --------------------------------------------------------------------

class SeccompDeferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shuttle-defer-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    journal_ = dir_ + "/inflight";
    SeccompInterceptionSource::Options options;
    options.journal_path = journal_;
    options.journal_slots = 1;  // Every deferral after the first needs a released slot.
    auto source = SeccompInterceptionSource::Create(options);
    ASSERT_THAT(source, IsOk());
    source_ = *std::move(source);
    handler_ = std::make_unique<InterceptHandler>(memory_, fds_, vms_, decider_);
    loop_ = std::thread([this] { EXPECT_THAT(source_->Run(*handler_), IsOk()); });
  }

  void TearDown() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;  // Callers waiting for Go() leave.
    }
    decider_.Clear();  // Replies not taken answer EPERM: no caller stays blocked.
    if (source_ != nullptr) source_->Stop();
    if (loop_.joinable()) loop_.join();
    source_.reset();  // Closes the listeners: any call still waiting fails with ENOSYS.
    for (std::thread& t : callers_) t.join();
    std::string cmd = "rm -rf '" + dir_ + "'";
    EXPECT_EQ(system(cmd.c_str()), 0);
  }

  // Starts a thread that installs the filter, then connects to `path` `count` times, each
  // after a Go(); serves its listener. Returns false if the filter could not be installed.
  bool StartCaller(int count, std::string path) {
    callers_.emplace_back([this, count, path] {
      prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
      int fd = InstallConnectFilter();
      {
        absl::MutexLock lock(&mu_);
        listener_ = fd;
      }
      if (fd < 0) return;
      for (int i = 0; i < count; ++i) {
        {
          // One call per Go(), so that the test knows which call is in flight.
          absl::MutexLock lock(&mu_);
          auto allowed = [this, i]()
                             ABSL_SHARED_LOCKS_REQUIRED(mu_) { return go_ > i || stopping_; };
          mu_.Await(absl::Condition(&allowed));
          if (stopping_ && go_ <= i) return;
        }
        int err = ConnectUnix(path);
        absl::MutexLock lock(&mu_);
        results_.push_back(err);
      }
    });
    int fd;
    {
      absl::MutexLock lock(&mu_);
      auto set = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return listener_ != 0; };
      mu_.AwaitWithTimeout(absl::Condition(&set), kWait);
      fd = listener_;
      listener_ = 0;
    }
    if (fd < 0) ADD_FAILURE() << "seccomp listener: " << std::strerror(-fd);
    if (fd <= 0) return false;
    EXPECT_THAT(source_->Add(UniqueFd(fd), kVm), IsOk());
    return true;
  }

  // Lets the callers make their next call.
  void Go() {
    absl::MutexLock lock(&mu_);
    ++go_;
  }

  // Waits for the `n`-th result of the callers (0-based) and returns it; -1 on timeout.
  int Result(size_t n) {
    absl::MutexLock lock(&mu_);
    auto done = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return results_.size() > n; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&done), kWait)) return -1;
    return results_[n];
  }
  size_t results() {
    absl::MutexLock lock(&mu_);
    return results_.size();
  }

  std::string dir_;
  std::string journal_;
  RealProcessMemory memory_;
  RealProcessFds fds_;
  AnyVm vms_;
  DeferringDecider decider_;
  std::unique_ptr<SeccompInterceptionSource> source_;
  std::unique_ptr<InterceptHandler> handler_;
  std::thread loop_;
  std::vector<std::thread> callers_;
  absl::Mutex mu_;
  int listener_ ABSL_GUARDED_BY(mu_) = 0;
  int go_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<int> results_ ABSL_GUARDED_BY(mu_);
};

TEST_F(SeccompDeferTest, ReplyFinishedOnAnotherThreadAnswersTheCall) {
  const std::string path = dir_ + "/absent.sock";
  ASSERT_TRUE(StartCaller(3, path));
  for (int i = 0; i < 3; ++i) {
    Go();
    PendingReplyPtr reply = decider_.Take(kWait);
    ASSERT_NE(reply, nullptr) << "call " << i << " never reached the decider";
    // The loop has moved on; the call waits, and the journal shows it in flight.
    EXPECT_EQ(results(), static_cast<size_t>(i));
    EXPECT_EQ(InFlight(journal_).size(), 1u) << i;
    const int error = EHOSTUNREACH + i;
    std::thread([&reply, error] { reply->Finish(Answer::Fail(error)); }).join();
    EXPECT_EQ(Result(static_cast<size_t>(i)), error);
    EXPECT_TRUE(InFlight(journal_).empty()) << i;
  }
  // One slot for three deferrals: each reused the slot a finished reply released.
  EXPECT_EQ(source_->stats().unjournaled.load(), 0u);
  EXPECT_EQ(source_->stats().deferred.load(), 3u);
  EXPECT_EQ(source_->stats().deferred_finished.load(), 3u);
  // The handler counts after Decide() returns, which may be after the reply was finished.
  source_->Stop();
  loop_.join();
  EXPECT_EQ(handler_->stats().deferred.load(), 3u);
}

TEST_F(SeccompDeferTest, ContinueLetsTheCallRun) {
  const std::string path = dir_ + "/listening.sock";
  int server = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(server, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(server, 4), 0);
  ASSERT_TRUE(StartCaller(1, path));
  Go();
  PendingReplyPtr reply = decider_.Take(kWait);
  ASSERT_NE(reply, nullptr);
  std::thread([&reply] { reply->Finish(Answer::Continue()); }).join();
  EXPECT_EQ(Result(0), 0) << "the kernel ran the connect";
  close(server);
}

TEST_F(SeccompDeferTest, DroppedReplyFailsClosed) {
  ASSERT_TRUE(StartCaller(1, dir_ + "/absent.sock"));
  Go();
  PendingReplyPtr reply = decider_.Take(kWait);
  ASSERT_NE(reply, nullptr);
  std::thread([&reply] { reply.reset(); }).join();
  EXPECT_EQ(Result(0), EPERM);
  EXPECT_EQ(source_->stats().deferred_abandoned.load(), 1u);
  EXPECT_TRUE(InFlight(journal_).empty());
}

TEST_F(SeccompDeferTest, SecondFinishIsIgnored) {
  ASSERT_TRUE(StartCaller(1, dir_ + "/absent.sock"));
  Go();
  PendingReplyPtr reply = decider_.Take(kWait);
  ASSERT_NE(reply, nullptr);
  reply->Finish(Answer::Fail(ECONNREFUSED));
  reply->Finish(Answer::Fail(EACCES));
  EXPECT_EQ(Result(0), ECONNREFUSED);
  EXPECT_EQ(source_->stats().deferred_finished.load(), 1u);
  EXPECT_EQ(source_->stats().send_errors.load(), 0u);
}

// FinishWith hands the listener and id to `send`, which answers by itself (here a plain SEND
// with a result, as the broker's ADDFD|SEND does); the reply is then finished: nothing more is
// sent, and the journal slot is free for the next deferral.
TEST_F(SeccompDeferTest, FinishWithLetsTheSenderAnswer) {
  ASSERT_TRUE(StartCaller(2, dir_ + "/absent.sock"));
  Go();
  PendingReplyPtr reply = decider_.Take(kWait);
  ASSERT_NE(reply, nullptr);
  absl::Status sent = reply->FinishWith([](int fd, uint64_t id) {
    seccomp_notif_resp resp{};
    resp.id = id;
    resp.error = -ENETDOWN;
    if (ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0) {
      return absl::InternalError(std::strerror(errno));
    }
    return absl::OkStatus();
  });
  EXPECT_THAT(sent, IsOk());
  EXPECT_EQ(Result(0), ENETDOWN);
  EXPECT_TRUE(InFlight(journal_).empty());
  // Finished: a later Finish, FinishWith or the destructor sends nothing.
  reply->Finish(Answer::Fail(EACCES));
  EXPECT_EQ(reply->FinishWith([](int, uint64_t) { return absl::OkStatus(); }).code(),
            absl::StatusCode::kFailedPrecondition);
  reply.reset();
  EXPECT_EQ(source_->stats().deferred_abandoned.load(), 0u);
  EXPECT_EQ(source_->stats().send_errors.load(), 0u);
  // The slot was released: the second call defers and is journaled.
  Go();
  reply = decider_.Take(kWait);
  ASSERT_NE(reply, nullptr);
  EXPECT_EQ(InFlight(journal_).size(), 1u);
  reply->Finish(Answer::Fail(EHOSTDOWN));
  EXPECT_EQ(Result(1), EHOSTDOWN);
}

// A `send` that fails (not NOT_FOUND) leaves the call pending and the reply unfinished: the
// caller answers it with Finish(); a NOT_FOUND (caller gone) finishes it.
TEST_F(SeccompDeferTest, FailedFinishWithLeavesTheReplyToFinish) {
  ASSERT_TRUE(StartCaller(1, dir_ + "/absent.sock"));
  Go();
  PendingReplyPtr reply = decider_.Take(kWait);
  ASSERT_NE(reply, nullptr);
  absl::Status sent = reply->FinishWith(
      [](int, uint64_t) { return absl::FailedPreconditionError("wrong socket type"); });
  EXPECT_EQ(sent.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(results(), 0u);
  EXPECT_EQ(InFlight(journal_).size(), 1u);
  reply->Finish(Answer::Fail(EPROTOTYPE));
  EXPECT_EQ(Result(0), EPROTOTYPE);
  EXPECT_EQ(source_->stats().deferred_finished.load(), 1u);
}

// The caller dies while its reply is pending; the listener is removed (its last process
// exited). The reply still holds the listener's fd, so its late answer goes to that listener
// (and finds the call gone), never to whatever file would have reused the number.
TEST_F(SeccompDeferTest, ReplyOutlivesTheRemovalOfItsListener) {
  const std::string path = dir_ + "/absent.sock";
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Only async-signal-safe calls from here on.
    close(pair[0]);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    int fd = InstallConnectFilter();
    if (fd < 0) _exit(2);
    FdMessage out;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&out.msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    if (sendmsg(pair[1], &out.msg, 0) != 1) _exit(3);
    close(fd);
    ConnectUnix(path);  // Waits until killed.
    _exit(0);
  }
  close(pair[1]);
  FdMessage in;
  ssize_t got = recvmsg(pair[0], &in.msg, MSG_CMSG_CLOEXEC);
  close(pair[0]);
  int listener = -1;
  cmsghdr* cmsg = got == 1 ? CMSG_FIRSTHDR(&in.msg) : nullptr;
  if (cmsg != nullptr && cmsg->cmsg_type == SCM_RIGHTS) {
    std::memcpy(&listener, CMSG_DATA(cmsg), sizeof(int));
  }
  if (listener < 0) {
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    FAIL() << "the child sent no listener";
  }
  ASSERT_THAT(source_->Add(UniqueFd(listener), kVm), IsOk());
  PendingReplyPtr reply = decider_.Take(kWait);
  ASSERT_NE(reply, nullptr);

  ASSERT_EQ(kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(source_->WaitForListenerCount(0, kWait)) << "the listener was not removed";
  EXPECT_EQ(source_->stats().listeners_closed.load(), 1u);
  EXPECT_NE(fcntl(listener, F_GETFD), -1) << "the reply keeps the listener's fd open";

  reply->Finish(Answer::Fail(EACCES));
  EXPECT_EQ(source_->stats().send_gone.load(), 1u) << "the call died with its process";
  EXPECT_EQ(source_->stats().send_errors.load(), 0u);
  reply.reset();
  EXPECT_EQ(fcntl(listener, F_GETFD), -1) << "closed with the last reply";
  EXPECT_EQ(errno, EBADF);
  EXPECT_TRUE(InFlight(journal_).empty());
}

}  // namespace
}  // namespace shuttle::agent::intercept
