// Unit tests of the crossing: the real PolicyDecider and CrossingBroker and a real Broker
// (targets are all the host: no root needed), the fake interception source for deferred
// replies, and a fake CallerAccess that keeps the injected descriptor instead of doing the
// seccomp ioctls. Servers are unix sockets in a temporary directory.
#include "agent/broker/crossing.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/broker/errors.h"
#include "agent/decide/ask_cache.h"
#include "agent/decide/ask_testing.h"
#include "agent/decide/policy_decider.h"
#include "agent/decide/policy_holder.h"
#include "agent/intercept/fakes.h"
#include "gtest/gtest.h"
#include "policy/parser.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace shuttle::agent::broker {
namespace {

using intercept::Answer;
using intercept::FakeInterceptionSource;

constexpr absl::Duration kWait = absl::Seconds(10);

std::shared_ptr<const policy::CompiledPolicy> Compile(const std::string& yaml) {
  auto parsed = policy::ParsePolicyOrStatus(yaml, "t.yaml");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  v1::PolicyBundle bundle;
  bundle.set_version(1);
  *bundle.add_policies() = *parsed;
  auto compiled = policy::CompiledPolicy::Compile(bundle);
  EXPECT_TRUE(compiled.ok()) << compiled.status();
  return *compiled;
}

// Every VM is the host (the test's own namespaces); "gone" is a VM that does not exist.
class HostTargets final : public TargetSource {
 public:
  absl::StatusOr<BrokerTargetPtr> Get(const std::string& vm) override {
    if (vm == "gone") return absl::NotFoundError("no VM 'gone'");
    return BrokerTarget::Host();
  }
};

// Keeps injected descriptors by notification id. Thread-safe.
class FakeCaller final : public CallerAccess {
 public:
  absl::StatusOr<Credentials> ReadCredentials(pid_t) override { return Credentials{}; }
  absl::StatusOr<CallerSocket> InspectSocket(pid_t, int fd) override {
    if (fd < 0) return absl::NotFoundError("caller fd is not open");
    CallerSocket s;
    s.family = AF_UNIX;
    s.type = SOCK_STREAM;
    return s;
  }
  // Off unless a test sets `in_place`: then the "caller's socket" is a real unix socket of the
  // fake's (non-blocking if `in_place_nonblocking`), kept in `own` for the test to look at.
  absl::StatusOr<UniqueFd> DuplicateFd(pid_t, int) override {
    absl::MutexLock lock(&mu);
    if (!in_place) return absl::UnimplementedError("the fake caller has no real socket");
    own.reset(socket(AF_UNIX,
                     SOCK_STREAM | SOCK_CLOEXEC | (in_place_nonblocking ? SOCK_NONBLOCK : 0), 0));
    return UniqueFd(fcntl(own.get(), F_DUPFD_CLOEXEC, 0));
  }
  absl::Status AnswerResult(int, uint64_t id, int64_t result) override {
    absl::MutexLock lock(&mu);
    results[id] = result;
    return absl::OkStatus();
  }
  absl::Status InjectConnected(int, uint64_t id, int, const CallerSocket&, UniqueFd fd) override {
    absl::MutexLock lock(&mu);
    if (!inject_error.ok()) return inject_error;
    injected[id] = std::move(fd);
    return absl::OkStatus();
  }
  absl::StatusOr<int> InjectResult(int, uint64_t id, UniqueFd fd, uint32_t) override {
    absl::MutexLock lock(&mu);
    injected[id] = std::move(fd);
    return 7;
  }
  UniqueFd Take(uint64_t id) {
    absl::MutexLock lock(&mu);
    auto it = injected.find(id);
    if (it == injected.end()) return UniqueFd();
    UniqueFd fd = std::move(it->second);
    injected.erase(it);
    return fd;
  }

  absl::Mutex mu;
  bool in_place ABSL_GUARDED_BY(mu) = false;
  bool in_place_nonblocking ABSL_GUARDED_BY(mu) = false;
  UniqueFd own ABSL_GUARDED_BY(mu);
  std::map<uint64_t, int64_t> results ABSL_GUARDED_BY(mu);
  absl::Status inject_error ABSL_GUARDED_BY(mu);
  std::map<uint64_t, UniqueFd> injected ABSL_GUARDED_BY(mu);
};

// Asks the decider about `object` for each injected notification (the decoder's part is the
// decoder's tests' business).
class DirectHandler final : public intercept::NotificationHandler {
 public:
  explicit DirectHandler(intercept::Decider& decider) : decider_(decider) {}
  intercept::Response Handle(const intercept::SyscallEvent& event, std::string_view channel_vm,
                             intercept::NotificationScope& scope) override {
    intercept::InterceptedCall call;
    call.subject_vm = channel_vm;
    call.channel_vm = channel_vm;
    call.pid = event.pid;
    call.event = &event;
    call.object = &object;
    call.deferral = &scope;
    Answer answer = decider_.Decide(call);
    if (answer.is_deferred()) return {intercept::Response::Kind::kDeferred, 0};
    if (answer.is_continue()) return {intercept::Response::Kind::kContinue, 0};
    return {intercept::Response::Kind::kFail, answer.error};
  }
  intercept::ObjectInfo object;

 private:
  intercept::Decider& decider_;
};

// A listening unix stream socket at `path`.
UniqueFd Listen(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << path;
  EXPECT_EQ(listen(fd.get(), 4), 0);
  return fd;
}

class FakeStarter final : public OnDemandStarter {
 public:
  void StartFor(const std::string& subject_vm, pid_t, const std::string& target_vm,
                const BrokerRequest& request, absl::Time, Done done) override {
    calls.push_back(subject_vm + "->" + target_vm + " " + DescribeRequest(request));
    if (start) start();
    std::move(done)(result);
  }
  std::vector<std::string> calls;
  std::function<void()> start;
  absl::Status result = absl::OkStatus();
};

class CrossingTest : public ::testing::Test {
 protected:
  CrossingTest() : decider_(holder_, metrics_), handler_(decider_) {
    char tmpl[] = "/tmp/crossing_test.XXXXXX";
    dir_ = mkdtemp(tmpl);
    holder_.Set(Compile(absl::StrCat(R"(name: t
rules:
  - name: web-db
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: )",
                                     dir_, R"(/app.sock }
    action: allow
  - name: legacy
    subject: { vm: web }
    kind: unix-connect
    object: { path: /run/legacy.sock }
    action: redirect
    redirect: { vm: db, name: )",
                                     dir_, R"(/app.sock }
  - name: dgram
    subject: { vm: web }
    kind: udp-send
    object: { vm: db, address: "127.0.0.1:5353" }
    action: allow
  - name: abstract
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, abstract: "crossing-test-*" }
    action: allow
  - name: watched
    subject: { vm: mon }
    kind: unix-connect
    object: { vm: db, path: /run/watched.sock }
    action: allow
    audit_only: true
)")));
    auto broker = Broker::Create(Broker::Options{});
    EXPECT_TRUE(broker.ok()) << broker.status();
    broker_ = *std::move(broker);
    CrossingBroker::Options options;
    options.as_caller = false;
    options.open_timeout = absl::Seconds(5);
    crossing_ =
        std::make_unique<CrossingBroker>(*broker_, targets_, caller_, memory_, metrics_, options);
    decider_.set_crossing(crossing_.get());
  }
  ~CrossingTest() override {
    broker_.reset();  // Runs what is queued, which calls back into the crossing.
    crossing_.reset();
    std::system(absl::StrCat("rm -rf ", dir_).c_str());
  }

  // Injects a connect() of `name` by `vm` (notification `id`) and handles it.
  FakeInterceptionSource::Handled Connect(const std::string& vm, const std::string& name,
                                          uint64_t id, int nr = SYS_connect) {
    intercept::ObjectInfo& o = handler_.object;
    o = intercept::ObjectInfo();
    o.kind = nr == SYS_connect ? v1::UNIX_CONNECT : v1::UDP_SEND;
    o.fd = 5;
    o.family = AF_UNIX;
    for (char c : name) o.name_buf[o.name_len++] = c == '\0' ? '@' : c;
    if (name[0] == '@') {
      o.abstract = true;
      o.abstract_len = static_cast<uint8_t>(name.size() - 1);
      std::memcpy(o.abstract_raw, name.data() + 1, name.size() - 1);
    }
    intercept::SyscallEvent event;
    event.id = id;
    event.pid = getpid();
    event.nr = nr;
    source_.Inject(event, vm);
    auto handled = source_.Drain(handler_);
    EXPECT_EQ(handled.size(), 1u);
    return handled.at(0);
  }

  // The answer to notification `id`, once the crossing has also counted it; nullopt on timeout.
  std::optional<FakeInterceptionSource::Reply> Answered(uint64_t id) {
    auto reply = source_.WaitForReply(id, kWait);
    if (!crossing_->WaitForIdle(kWait)) return std::nullopt;
    return reply;
  }

  std::string Scrape() { return prometheus::TextSerializer().Serialize(metrics_.Collect()); }
  bool Has(const std::string& text) { return Scrape().find(text) != std::string::npos; }

  std::string dir_;
  PolicyHolder holder_;
  prometheus::Registry metrics_;
  PolicyDecider decider_;
  DirectHandler handler_;
  FakeInterceptionSource source_;
  HostTargets targets_;
  FakeCaller caller_;
  intercept::FakeProcessMemory memory_;
  std::unique_ptr<Broker> broker_;
  std::unique_ptr<CrossingBroker> crossing_;
};

TEST_F(CrossingTest, AllowedCrossingHandsOverASocketConnectedInTheTarget) {
  UniqueFd server = Listen(dir_ + "/app.sock");
  auto handled = Connect("web", dir_ + "/app.sock", 1);
  EXPECT_EQ(handled.response.kind, intercept::Response::Kind::kDeferred);
  auto reply = Answered(1);
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(reply->handed_over);
  UniqueFd client = caller_.Take(1);
  ASSERT_TRUE(client);
  UniqueFd accepted(accept4(server.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted);
  ASSERT_EQ(write(client.get(), "hi", 2), 2);
  char buf[2];
  ASSERT_EQ(read(accepted.get(), buf, 2), 2);
  EXPECT_EQ(std::string(buf, 2), "hi");
  EXPECT_TRUE(
      Has(R"(shuttle_agent_brokered_total{kind="unix-connect",result="ok",scope="cross-vm"} 1)"))
      << Scrape();
  EXPECT_TRUE(Has(R"(shuttle_agent_brokered_duration_seconds_count{kind="unix-connect"} 1)"))
      << Scrape();
  EXPECT_EQ(crossing_->in_flight(), 0);
}

// The fast path: the caller's own socket is connected on the loop thread (no worker, no
// descriptor swap) and connect() answered with 0.
TEST_F(CrossingTest, ConnectsTheCallersOwnSocketWhenNothingMustWait) {
  {
    absl::MutexLock lock(&caller_.mu);
    caller_.in_place = true;
  }
  UniqueFd server = Listen(dir_ + "/app.sock");
  auto handled = Connect("web", dir_ + "/app.sock", 11);
  EXPECT_EQ(handled.response.kind, intercept::Response::Kind::kDeferred);
  auto reply = Answered(11);
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(reply->handed_over);
  EXPECT_FALSE(caller_.Take(11));  // Nothing swapped in.
  absl::MutexLock lock(&caller_.mu);
  EXPECT_EQ(caller_.results[11], 0);
  UniqueFd accepted(accept4(server.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted);
  ASSERT_EQ(write(caller_.own.get(), "hi", 2), 2);
  char buf[2];
  ASSERT_EQ(read(accepted.get(), buf, 2), 2);
  EXPECT_EQ(std::string(buf, 2), "hi");
  // Blocking, as the caller made it: the connect's O_NONBLOCK was taken back.
  EXPECT_EQ(fcntl(caller_.own.get(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_TRUE(
      Has(R"(shuttle_agent_brokered_total{kind="unix-connect",result="ok",scope="cross-vm"} 1)"))
      << Scrape();
}

// A non-blocking caller whose server's backlog is full gets EAGAIN, as it would natively; a
// blocking one waits on a worker (the ordinary path).
TEST_F(CrossingTest, NonBlockingCallerGetsEagainWhenTheBacklogIsFull) {
  UniqueFd server = Listen(dir_ + "/app.sock");  // Backlog 4.
  std::vector<UniqueFd> fillers;
  for (int i = 0; i < 64; ++i) {
    UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, (dir_ + "/app.sock").c_str(), sizeof(addr.sun_path) - 1);
    const int rc = connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    if (rc != 0 && errno == EAGAIN) break;
    ASSERT_EQ(rc, 0) << strerror(errno);
    fillers.push_back(std::move(s));
  }
  ASSERT_LT(fillers.size(), 64u) << "the backlog never filled";
  {
    absl::MutexLock lock(&caller_.mu);
    caller_.in_place = true;
    caller_.in_place_nonblocking = true;
  }
  Connect("web", dir_ + "/app.sock", 12);
  auto reply = Answered(12);
  ASSERT_TRUE(reply.has_value());
  EXPECT_FALSE(reply->handed_over);
  EXPECT_EQ(reply->answer.error, EAGAIN);
  EXPECT_TRUE(Has(R"(kind="unix-connect",result="again",scope="cross-vm"} 1)")) << Scrape();
}

TEST_F(CrossingTest, RedirectOpensTheRedirectedName) {
  UniqueFd server = Listen(dir_ + "/app.sock");
  Connect("web", "/run/legacy.sock", 2);
  auto reply = Answered(2);
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(reply->handed_over);
  EXPECT_TRUE(caller_.Take(2));
  UniqueFd accepted(accept4(server.get(), nullptr, nullptr, SOCK_CLOEXEC));
  EXPECT_TRUE(accepted);
}

TEST_F(CrossingTest, NothingThereFailsWithTheTargetsErrno) {
  Connect("web", dir_ + "/app.sock", 3);
  auto reply = Answered(3);
  ASSERT_TRUE(reply.has_value());
  EXPECT_FALSE(reply->handed_over);
  EXPECT_EQ(reply->answer.error, ENOENT);
  EXPECT_TRUE(Has(R"(kind="unix-connect",result="not_found",scope="cross-vm"} 1)")) << Scrape();
}

TEST_F(CrossingTest, NothingListeningStartsOnDemandThenRetriesOnce) {
  FakeStarter starter;
  UniqueFd server;
  starter.start = [&] { server = Listen(dir_ + "/app.sock"); };
  crossing_->set_on_demand(&starter);
  Connect("web", dir_ + "/app.sock", 4);
  auto reply = Answered(4);
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(reply->handed_over);
  ASSERT_EQ(starter.calls.size(), 1u);
  EXPECT_EQ(starter.calls[0], "web->db unix stream " + dir_ + "/app.sock");

  // A starter that finds no service: the open's own error stands.
  FakeStarter none;
  none.result = absl::NotFoundError("no service");
  crossing_->set_on_demand(&none);
  server.reset();
  unlink((dir_ + "/app.sock").c_str());
  Connect("web", dir_ + "/app.sock", 6);
  reply = Answered(6);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->answer.error, ENOENT);
  EXPECT_EQ(none.calls.size(), 1u);
}

TEST_F(CrossingTest, InjectionFailureFailsTheCallWithItsErrno) {
  UniqueFd server = Listen(dir_ + "/app.sock");
  {
    absl::MutexLock lock(&caller_.mu);
    caller_.inject_error = ErrnoErrorWithCode(absl::StatusCode::kFailedPrecondition, EPROTOTYPE,
                                              "caller socket of another type");
  }
  Connect("web", dir_ + "/app.sock", 7);
  auto reply = Answered(7);
  ASSERT_TRUE(reply.has_value());
  EXPECT_FALSE(reply->handed_over);
  EXPECT_EQ(reply->answer.error, EPROTOTYPE);
  EXPECT_TRUE(Has(R"(result="inject_failed")")) << Scrape();
}

TEST_F(CrossingTest, AbstractNamesKeepTheirRawBytes) {
  const std::string name("crossing-test-\0x", 16);
  UniqueFd server(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, name.data(), name.size());
  ASSERT_EQ(bind(server.get(), reinterpret_cast<sockaddr*>(&addr),
                 offsetof(sockaddr_un, sun_path) + 1 + name.size()),
            0);
  ASSERT_EQ(listen(server.get(), 4), 0);
  // The decoder shows the embedded NUL as '@'; the raw bytes are what the broker connects to.
  Connect("web", std::string("@crossing-test-\0x", 17), 8);
  auto reply = Answered(8);
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(reply->handed_over) << reply->answer.error;
}

TEST_F(CrossingTest, IntraVmAndNotEnforcedContinue) {
  EXPECT_EQ(Connect("db", dir_ + "/app.sock", 9).response.kind,
            intercept::Response::Kind::kContinue);
  EXPECT_EQ(Connect("mon", "/run/watched.sock", 10).response.kind,
            intercept::Response::Kind::kContinue);
  EXPECT_FALSE(Has("shuttle_agent_brokered_total{")) << Scrape();
}

TEST_F(CrossingTest, DatagramSendsWithAnAddressAcrossVmsAreRefused) {
  auto handled = Connect("web", "127.0.0.1:5353", 11, SYS_sendto);
  EXPECT_EQ(handled.response.kind, intercept::Response::Kind::kFail);
  EXPECT_EQ(handled.response.error, EOPNOTSUPP);
  EXPECT_TRUE(Has(R"(kind="udp-send",result="unsupported",scope="cross-vm"} 1)")) << Scrape();
}

TEST_F(CrossingTest, MissingTargetVmFailsTheCall) {
  holder_.Set(Compile(R"(name: t
rules:
  - name: to-gone
    subject: { vm: web }
    kind: unix-connect
    object: { vm: gone, path: /run/x.sock }
    action: allow
)"));
  Connect("web", "/run/x.sock", 12);
  auto reply = Answered(12);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->answer.error, ENOENT);
  EXPECT_TRUE(Has(R"(result="vm_gone")")) << Scrape();
}

// An `ask` answered later: allow crosses like a matched allow rule; a redirect answer takes
// the controller's name.
TEST_F(CrossingTest, AskAnswersCrossWhenTheyArrive) {
  holder_.Set(Compile(absl::StrCat(R"(name: t
rules:
  - name: ask-db
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: )",
                                   dir_, R"(/app.sock }
    action: ask
    ask: { ttl: 0s, timeout: 5s }
)")));
  agent::testing::FakeAsker asker;
  AskCache cache;
  decider_.EnableAsk(asker, cache);
  UniqueFd server = Listen(dir_ + "/app.sock");
  UniqueFd other = Listen(dir_ + "/other.sock");

  EXPECT_EQ(Connect("web", dir_ + "/app.sock", 13).response.kind,
            intercept::Response::Kind::kDeferred);
  ASSERT_EQ(asker.count(), 1u);
  asker.Complete(0, agent::testing::Answer(v1::VERDICT_ALLOW));
  auto reply = Answered(13);
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(reply->handed_over);
  EXPECT_TRUE(UniqueFd(accept4(server.get(), nullptr, nullptr, SOCK_CLOEXEC)));

  Connect("web", dir_ + "/app.sock", 14);
  ASSERT_EQ(asker.count(), 2u);
  v1::AuthorizeResponse redirect = agent::testing::Answer(v1::VERDICT_REDIRECT);
  redirect.mutable_decision()->mutable_redirect()->set_vm("db");
  redirect.mutable_decision()->mutable_redirect()->set_name(dir_ + "/other.sock");
  asker.Complete(1, redirect);
  reply = Answered(14);
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(reply->handed_over);
  EXPECT_TRUE(UniqueFd(accept4(other.get(), nullptr, nullptr, SOCK_CLOEXEC)));
  EXPECT_TRUE(Has(R"(kind="unix-connect",result="ok",scope="cross-vm"} 2)")) << Scrape();
}

// A host process names host pids: the target's VM decides (host-vm rules), and an allowed
// signal continues (the kernel delivers it). A VM process's signals stay in its own VM.
TEST_F(CrossingTest, SignalsFromTheHostAreDecidedByTheTargetsVm) {
  holder_.Set(Compile(R"(name: t
rules:
  - name: host-signals-db
    subject: { vm: host }
    kind: signal
    object: { vm: db }
    action: allow
  - name: web-signals-db
    subject: { vm: web }
    kind: signal
    object: { vm: db }
    action: deny
)"));
  intercept::FakeVmResolver vms;
  vms.Set(4001, "db");
  vms.Set(4002, "mon");
  decider_.set_vm_resolver(&vms);
  auto signal = [&](const std::string& vm, int32_t target) {
    intercept::ObjectInfo& o = handler_.object;
    o = intercept::ObjectInfo();
    o.kind = v1::SIGNAL;
    o.target_pid = target;
    o.signal = SIGTERM;
    const std::string name = absl::StrCat("pid:", target);
    std::memcpy(o.name_buf, name.data(), name.size());
    o.name_len = name.size();
    intercept::SyscallEvent event;
    event.pid = getpid();
    event.nr = SYS_kill;
    source_.Inject(event, vm);
    return source_.Drain(handler_).at(0).response;
  };
  EXPECT_EQ(signal("", 4001).kind, intercept::Response::Kind::kContinue);  // host -> db: allowed.
  intercept::Response denied = signal("", 4002);  // host -> mon: default host-vm deny.
  EXPECT_EQ(denied.kind, intercept::Response::Kind::kFail);
  EXPECT_EQ(denied.error, EPERM);
  // web's pid 4001 is a process of web (its own PID namespace): intra-vm, the deny rule for
  // db's processes does not apply.
  EXPECT_EQ(signal("web", 4001).kind, intercept::Response::Kind::kContinue);
  EXPECT_TRUE(
      Has(R"(shuttle_agent_brokered_total{kind="signal",result="continued",scope="host-vm"} 1)"))
      << Scrape();
  EXPECT_TRUE(
      Has(R"(shuttle_agent_decisions_total{kind="signal",scope="intra-vm",verdict="allow"} 1)"))
      << Scrape();
}

TEST(CachedTargetsTest, HostAndUnknownVm) {
  CachedTargets targets([](const std::string& vm) -> absl::StatusOr<CachedTargets::Init> {
    return absl::NotFoundError("no VM " + vm);
  });
  auto host = targets.Get("host");
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_TRUE((*host)->is_host());
  EXPECT_EQ(targets.Get("host")->get(), host->get());  // Cached.
  EXPECT_TRUE(absl::IsNotFound(targets.Get("db").status()));
}

}  // namespace
}  // namespace shuttle::agent::broker
