// PolicyDecider's `ask` path with a fake asker: cache hits answer at once, misses defer the call
// and the answer finishes it, failures fall to the rule's fail mode and are counted; and the
// same through the interception handler and the fake source.
#include <errno.h>
#include <linux/audit.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/audit/audit_testing.h"
#include "agent/decide/ask_cache.h"
#include "agent/decide/ask_testing.h"
#include "agent/decide/policy_decider.h"
#include "agent/decide/policy_holder.h"
#include "agent/intercept/fakes.h"
#include "agent/intercept/intercept_handler.h"
#include "common/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace shuttle::agent {
namespace {

using testing::Answer;
using testing::CompileYaml;
using testing::FakeAsker;
using ::testing::HasSubstr;
using testing::RecordingScope;
using testing::ReplyLog;

constexpr absl::Duration kWait = absl::Seconds(10);

class AskDeciderTest : public ::testing::Test {
 protected:
  AskDeciderTest() : cache_(CacheOptions()), decider_(holder_, metrics_) {
    holder_.AddObserver([this](const std::shared_ptr<const policy::CompiledPolicy>& compiled) {
      cache_.OnPolicy(*compiled);
    });
    std::string error;
    auto compiled = CompileYaml(testing::kAskPolicy, 7, &error);
    EXPECT_NE(compiled, nullptr) << error;
    holder_.Set(compiled);
    decider_.EnableAsk(asker_, cache_);
    decider_.set_audit_sink(&audit_);
  }

  AskCacheOptions CacheOptions() {
    AskCacheOptions options;
    options.clock = &clock_;
    return options;
  }

  intercept::Answer Decide(const char* path, intercept::NotificationScope* scope) {
    return testing::DecideUnixConnect(decider_, path, scope);
  }

  // A call to `path` whose Authorize fails with `error` must end with `expected` (0: continue)
  // and count one fail-mode decision for `reason`.
  void ExpectFailMode(const char* path, absl::Status error, int expected, const char* reason) {
    RecordingScope scope(replies_, 1);
    ASSERT_TRUE(Decide(path, &scope).is_deferred());
    asker_.Complete(0, std::move(error));
    auto finished = replies_.Wait(1, kWait);
    ASSERT_TRUE(finished.has_value());
    EXPECT_EQ(finished->answer.error, expected);
    EXPECT_TRUE(
        Scraped(absl::StrCat("shuttle_agent_fail_mode_decisions_total{reason=\"", reason, "\"} 1")))
        << Scrape();
  }

  std::string Scrape() { return prometheus::TextSerializer().Serialize(metrics_.Collect()); }
  bool Scraped(const std::string& line) { return Scrape().find(line) != std::string::npos; }

  // First: replies of calls a test leaves waiting record here while the rest is torn down.
  ReplyLog replies_;
  FakeClock clock_;
  PolicyHolder holder_;
  prometheus::Registry metrics_;
  FakeAsker asker_;
  AskCache cache_;
  testing::RecordingSink audit_;
  PolicyDecider decider_;
};

TEST_F(AskDeciderTest, MissDefersTheCallAndTheAnswerFinishesIt) {
  RecordingScope scope(replies_, 1);
  intercept::Answer answer = Decide("/run/db.sock", &scope);
  EXPECT_TRUE(answer.is_deferred());
  EXPECT_EQ(scope.defers(), 1);
  EXPECT_EQ(replies_.size(), 0u) << "the caller waits for the controller";
  ASSERT_EQ(asker_.count(), 1u);
  const v1::AuthorizeRequest request = asker_.request(0);
  EXPECT_EQ(request.policy(), "asks");
  EXPECT_EQ(request.rule(), "ask-db");
  EXPECT_EQ(request.policy_version(), 7u);
  EXPECT_EQ(request.interaction().subject_vm(), "web");
  EXPECT_EQ(request.interaction().object_vm(), "db");
  EXPECT_EQ(request.interaction().kind(), v1::UNIX_CONNECT);
  EXPECT_EQ(request.interaction().object_name(), "/run/db.sock");
  EXPECT_EQ(request.interaction().pid(), static_cast<uint32_t>(getpid()));
  EXPECT_FALSE(request.interaction().program().empty());
  EXPECT_EQ(request.interaction().uid(), geteuid());
  EXPECT_EQ(asker_.timeout(0), absl::Seconds(2)) << "the rule's timeout is the deadline";
  EXPECT_TRUE(Scraped("shuttle_agent_ask_inflight 1")) << Scrape();

  // The answer comes on another thread, as gRPC's would.
  std::thread([this] { asker_.Complete(0, Answer(v1::VERDICT_ALLOW)); }).join();
  auto finished = replies_.Wait(1, kWait);
  ASSERT_TRUE(finished.has_value());
  EXPECT_TRUE(finished->answer.is_continue());
  EXPECT_TRUE(Scraped("shuttle_agent_ask_cache_total{result=\"miss\"} 1")) << Scrape();
  EXPECT_TRUE(Scraped("shuttle_agent_ask_inflight 0")) << Scrape();
  EXPECT_TRUE(Scraped("shuttle_agent_ask_duration_seconds_count 1")) << Scrape();
  EXPECT_TRUE(
      Scraped("shuttle_agent_decisions_total{kind=\"unix-connect\",scope=\"cross-vm\","
              "verdict=\"allow\"} 1"))
      << Scrape();

  // Cached: the next call is answered at once, without a second Authorize.
  RecordingScope again(replies_, 2);
  EXPECT_TRUE(Decide("/run/db.sock", &again).is_continue());
  EXPECT_EQ(again.defers(), 0);
  EXPECT_EQ(asker_.count(), 1u);
  EXPECT_TRUE(Scraped("shuttle_agent_ask_cache_total{result=\"hit\"} 1")) << Scrape();
  EXPECT_TRUE(Scraped("verdict=\"allow\"} 2")) << Scrape();

  // Both decisions are audited, with the controller's answer.
  std::vector<v1::AuditRecord> records = audit_.records();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].decision().verdict(), v1::VERDICT_ALLOW);
  EXPECT_EQ(records[0].decision().rule(), "ask-db");
  EXPECT_THAT(records[0].decision().reason(), HasSubstr("answered by the controller"));
  EXPECT_FALSE(records[0].interaction().program().empty());
  EXPECT_THAT(records[1].decision().reason(), HasSubstr("cached"));

  // After the ttl the answer is asked for again.
  clock_.Advance(absl::Seconds(30));
  RecordingScope later(replies_, 3);
  EXPECT_TRUE(Decide("/run/db.sock", &later).is_deferred());
  EXPECT_EQ(asker_.count(), 2u);
  EXPECT_TRUE(Scraped("shuttle_agent_ask_cache_total{result=\"expired\"} 1")) << Scrape();
  asker_.Complete(1, Answer(v1::VERDICT_DENY));
  auto denied = replies_.Wait(3, kWait);
  ASSERT_TRUE(denied.has_value());
  EXPECT_EQ(denied->answer.error, EACCES);
}

TEST_F(AskDeciderTest, ConcurrentCallsShareOneAuthorize) {
  RecordingScope a(replies_, 1), b(replies_, 2), c(replies_, 3);
  EXPECT_TRUE(Decide("/run/db.sock", &a).is_deferred());
  EXPECT_TRUE(Decide("/run/db.sock", &b).is_deferred());
  EXPECT_TRUE(Decide("/run/db.sock", &c).is_deferred());
  ASSERT_EQ(asker_.count(), 1u);
  asker_.Complete(0, Answer(v1::VERDICT_DENY));
  for (int id : {1, 2, 3}) {
    auto finished = replies_.Wait(id, kWait);
    ASSERT_TRUE(finished.has_value()) << id;
    EXPECT_EQ(finished->answer.error, EACCES) << id;
  }
  EXPECT_TRUE(Scraped("scope=\"cross-vm\",verdict=\"deny\"} 3")) << Scrape();
}

TEST_F(AskDeciderTest, TimeoutFailsClosedAndIsCounted) {
  ExpectFailMode("/run/db.sock", absl::DeadlineExceededError("Deadline Exceeded"), EACCES,
                 "timeout");
  EXPECT_TRUE(Scraped("scope=\"cross-vm\",verdict=\"deny\"} 1")) << Scrape();
  std::vector<v1::AuditRecord> records = audit_.records();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_THAT(records[0].decision().reason(), HasSubstr("fail mode decided (timeout)"));
}

TEST_F(AskDeciderTest, FailOpenRuleLetsTheCallThroughWhenUnavailable) {
  ExpectFailMode("/run/open.sock", absl::UnavailableError("connection refused"), 0, "unavailable");
  EXPECT_TRUE(Scraped("shuttle_agent_fail_mode_decisions_total{reason=\"timeout\"} 0")) << Scrape();
}

TEST_F(AskDeciderTest, ControllerErrorIsCountedAsError) {
  ExpectFailMode("/run/db.sock", absl::UnimplementedError("Authorize"), EACCES, "error");
}

TEST_F(AskDeciderTest, WithoutControllerTheFailModeDecidesAtOnce) {
  prometheus::Registry registry;
  PolicyDecider standalone(holder_, registry);
  RecordingScope scope(replies_, 1);
  EXPECT_EQ(testing::DecideUnixConnect(standalone, "/run/db.sock", &scope).error, EACCES);
  EXPECT_EQ(scope.defers(), 0);
  const std::string scraped = prometheus::TextSerializer().Serialize(registry.Collect());
  EXPECT_THAT(scraped,
              HasSubstr("shuttle_agent_fail_mode_decisions_total{reason=\"no_controller\"} 1"));
}

TEST_F(AskDeciderTest, MonitoredAskContinuesAtOnceAndCountsTheAnswerLater) {
  RecordingScope scope(replies_, 1);
  EXPECT_TRUE(Decide("/run/watch.sock", &scope).is_continue());
  EXPECT_EQ(scope.defers(), 0) << "a not-enforced rule never holds the caller";
  ASSERT_EQ(asker_.count(), 1u);
  EXPECT_FALSE(Scraped("verdict=\"deny\"}")) << Scrape();
  asker_.Complete(0, Answer(v1::VERDICT_DENY));
  EXPECT_TRUE(Scraped("scope=\"cross-vm\",verdict=\"deny\"} 1")) << Scrape();
  ASSERT_EQ(audit_.records().size(), 1u);
  EXPECT_FALSE(audit_.records()[0].decision().enforced());
}

TEST_F(AskDeciderTest, CallThatCannotWaitUsesTheFailModeButStillAsks) {
  EXPECT_EQ(Decide("/run/db.sock", nullptr).error, EACCES);
  EXPECT_TRUE(Scraped("shuttle_agent_fail_mode_decisions_total{reason=\"not_deferrable\"} 1"))
      << Scrape();
  ASSERT_EQ(asker_.count(), 1u) << "the answer is fetched for the next call";
  asker_.Complete(0, Answer(v1::VERDICT_ALLOW));
  EXPECT_TRUE(Decide("/run/db.sock", nullptr).is_continue());
  EXPECT_EQ(asker_.count(), 1u);
}

TEST_F(AskDeciderTest, AnswerArrivingInlineFinishesTheReplyBeforeDecideReturns) {
  asker_.AnswerInline(Answer(v1::VERDICT_DENY));
  RecordingScope scope(replies_, 1);
  EXPECT_TRUE(Decide("/run/db.sock", &scope).is_deferred());
  auto finished = replies_.Wait(1, absl::ZeroDuration());
  ASSERT_TRUE(finished.has_value());
  EXPECT_EQ(finished->answer.error, EACCES);
}

TEST_F(AskDeciderTest, PolicyChangeOfTheRuleAsksAgain) {
  RecordingScope scope(replies_, 1);
  ASSERT_TRUE(Decide("/run/db.sock", &scope).is_deferred());
  asker_.Complete(0, Answer(v1::VERDICT_ALLOW));
  ASSERT_TRUE(Decide("/run/db.sock", nullptr).is_continue());  // Cached.

  // The same rules as a new version: the answer stays.
  std::string error;
  holder_.Set(CompileYaml(testing::kAskPolicy, 8, &error));
  EXPECT_TRUE(Decide("/run/db.sock", nullptr).is_continue());
  EXPECT_EQ(asker_.count(), 1u);

  // ask-db's timeout changes: its answer is gone.
  std::string changed = testing::kAskPolicy;
  changed.replace(changed.find("timeout: 2s"), 11, "timeout: 3s");
  holder_.Set(CompileYaml(changed, 9, &error));
  RecordingScope again(replies_, 2);
  EXPECT_TRUE(Decide("/run/db.sock", &again).is_deferred());
  ASSERT_EQ(asker_.count(), 2u);
  EXPECT_EQ(asker_.request(1).policy_version(), 9u);
  EXPECT_EQ(asker_.timeout(1), absl::Seconds(3));
}

// Through the real handler and the fake source: the loop hands the reply over, another thread
// finishes it.
TEST_F(AskDeciderTest, DeferredThroughTheHandlerAndFakeSource) {
  constexpr pid_t kPid = 4242;
  constexpr uint64_t kAddr = 0x10000;
  intercept::FakeProcessMemory memory;
  intercept::FakeProcessFds fds;
  intercept::FakeVmResolver vms;
  vms.Set(kPid, "web");
  intercept::InterceptHandler handler(memory, fds, vms, decider_);
  intercept::FakeInterceptionSource source;

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, "/run/db.sock");
  memory.MapStruct(kPid, kAddr, addr);
  intercept::SyscallEvent event;
  event.id = 77;
  event.pid = kPid;
  event.nr = SYS_connect;
  event.arch = AUDIT_ARCH_X86_64;
  event.args[0] = 3;
  event.args[1] = kAddr;
  event.args[2] = sizeof(addr);
  source.Inject(event, "web");
  std::vector<intercept::FakeInterceptionSource::Handled> handled = source.Drain(handler);
  ASSERT_EQ(handled.size(), 1u);
  EXPECT_EQ(handled[0].response.kind, intercept::Response::Kind::kDeferred);
  EXPECT_TRUE(handled[0].deferred);
  EXPECT_EQ(handler.stats().deferred.load(), 1u);
  EXPECT_EQ(source.pending_replies(), 1u);

  std::thread([this] { asker_.Complete(0, Answer(v1::VERDICT_DENY)); }).join();
  auto reply = source.WaitForReply(77, kWait);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->answer.error, EACCES);
  EXPECT_FALSE(reply->abandoned);
  EXPECT_EQ(source.pending_replies(), 0u);
}

}  // namespace
}  // namespace shuttle::agent
