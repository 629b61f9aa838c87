// PushManager without gRPC: a fake sink records what a stream would carry. Agent messages are
// handled on the manager's worker thread, so the test waits for the sink to receive what it
// expects (a condition, with a deadline), never for a fixed time.
#include "controller/push/push_manager.h"

#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/status_matchers.h"
#include "controller/registry/policy_registry.h"
#include "controller/store/sqlite_store.h"
#include "controller/store/store_testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"

namespace shuttle::controller {
namespace {

using ::shuttle::controller::testing::TempDir;
using ::testing::HasSubstr;

class FakeSink final : public PushSink {
 public:
  void Send(const v1::StreamResponse& message) override {
    absl::MutexLock lock(&mu_);
    messages_.push_back(message);
  }
  void Close(const absl::Status& status) override {
    absl::MutexLock lock(&mu_);
    closed_ = status;
  }

  // Waits (up to 10 s) until `n` messages arrived; returns the n-th (1-based).
  v1::StreamResponse WaitFor(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return messages_.size() >= n; };
    mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
    EXPECT_GE(messages_.size(), n);
    return messages_.size() >= n ? messages_[n - 1] : v1::StreamResponse();
  }
  // Waits (up to 10 s) until the stream was closed; returns how.
  absl::Status WaitClosed() {
    absl::MutexLock lock(&mu_);
    auto closed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_.has_value(); };
    mu_.AwaitWithTimeout(absl::Condition(&closed), absl::Seconds(10));
    return closed_.value_or(absl::DeadlineExceededError("stream not closed within 10 s"));
  }
  size_t count() {
    absl::MutexLock lock(&mu_);
    return messages_.size();
  }
  std::optional<absl::Status> closed() {
    absl::MutexLock lock(&mu_);
    return closed_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::StreamResponse> messages_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> closed_ ABSL_GUARDED_BY(mu_);
};

std::string PolicyYaml(const std::string& name, const std::string& vm, const std::string& path) {
  return "name: " + name + "\nrules:\n  - name: r\n    subject: {vm: " + vm +
         "}\n    kind: unix-connect\n    object: {vm: db, path: " + path + "}\n    action: allow\n";
}

class PushManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, OpenSqliteStore(dir_.File("c.db"), clock_));
    registry_ = std::make_unique<PolicyRegistry>(*store_, metrics_);
    ASSERT_THAT(registry_->Load(), shuttle::testing::IsOk());
    PushOptions options;
    options.heartbeat_thread = false;
    push_ = std::make_unique<PushManager>(*store_, *registry_, clock_, metrics_, options);
    ASSERT_THAT(push_->Start(), shuttle::testing::IsOk());
  }

  uint64_t Apply(const std::string& source) {
    v1::ApplyRequest req;
    req.set_source(source);
    absl::StatusOr<v1::ApplyResponse> resp = registry_->Apply(req, "test");
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->revision().fleet_version() : 0;
  }

  static v1::StreamRequest::Hello Hello(const std::string& host, std::vector<std::string> vms) {
    v1::StreamRequest::Hello hello;
    hello.set_host_id(host);
    for (const std::string& vm : vms) hello.add_vms()->set_name(vm);
    return hello;
  }

  static v1::StreamRequest::Ack AckOf(const v1::StreamResponse& r) {
    v1::StreamRequest::Ack ack;
    ack.set_version(r.push().version());
    ack.set_nonce(r.push().nonce());
    return ack;
  }

  TempDir dir_;
  FakeClock clock_;
  prometheus::Registry metrics_;
  StorePtr store_;
  std::unique_ptr<PolicyRegistry> registry_;
  std::unique_ptr<PushManager> push_;
};

TEST_F(PushManagerTest, OnePushOutstandingThenTheNewest) {
  const uint64_t v1 = Apply(PolicyYaml("a", "web", "/run/a"));
  FakeSink sink;
  const uint64_t session = push_->Connect(Hello("h1", {"web"}), &sink);
  v1::StreamResponse first = sink.WaitFor(1);
  ASSERT_TRUE(first.has_push());
  EXPECT_EQ(first.push().version(), v1);
  EXPECT_FALSE(first.push().is_delta());

  // Two changes while the first push is unanswered: nothing is sent yet.
  Apply(PolicyYaml("a", "web", "/run/a2"));
  const uint64_t v3 = Apply(PolicyYaml("b", "web", "/run/b"));
  // The manager handles snapshots in order on one thread; an ACK queued after them is handled
  // after them too, and its push must carry the newest version.
  push_->OnAck(session, AckOf(first));
  v1::StreamResponse second = sink.WaitFor(2);
  ASSERT_TRUE(second.has_push());
  EXPECT_EQ(second.push().version(), v3);
  EXPECT_TRUE(second.push().is_delta());
  EXPECT_EQ(second.push().base_version(), v1);
  EXPECT_EQ(second.push().upserts_size(), 2);
  EXPECT_EQ(sink.count(), 2u);

  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::HostStatus host, push_->GetHost("h1"));
  EXPECT_TRUE(host.connected());
  EXPECT_EQ(host.policy_version(), v1);
  push_->Disconnect(session);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(host, push_->GetHost("h1"));
  EXPECT_FALSE(host.connected());
}

TEST_F(PushManagerTest, VmChangeRepushesTheSameVersion) {
  const uint64_t v1 = Apply(PolicyYaml("a", "web", "/run/a"));
  FakeSink sink;
  const uint64_t session = push_->Connect(Hello("h1", {}), &sink);
  v1::StreamResponse first = sink.WaitFor(1);
  ASSERT_EQ(first.push().snapshot().policies_size(), 1);
  EXPECT_EQ(first.push().snapshot().policies(0).rules_size(), 0);  // No VM "web" yet.
  push_->OnAck(session, AckOf(first));

  v1::StreamRequest::Heartbeat heartbeat;
  heartbeat.add_vms()->set_name("web");
  push_->OnHeartbeat(session, heartbeat);
  v1::StreamResponse second = sink.WaitFor(2);
  ASSERT_TRUE(second.has_push());
  EXPECT_EQ(second.push().version(), v1);
  EXPECT_TRUE(second.push().is_delta());
  ASSERT_EQ(second.push().upserts_size(), 1);
  EXPECT_EQ(second.push().upserts(0).rules_size(), 1);
  push_->OnAck(session, AckOf(second));

  // The same VMs again change nothing: the next message is the next version's push, a delta
  // against the re-pushed content (worker order: ACK, heartbeat, snapshot).
  push_->OnHeartbeat(session, heartbeat);
  const uint64_t v2 = Apply(PolicyYaml("b", "web", "/run/b"));
  v1::StreamResponse third = sink.WaitFor(3);
  ASSERT_TRUE(third.has_push());
  EXPECT_EQ(third.push().version(), v2);
  EXPECT_EQ(third.push().base_version(), v1);
  ASSERT_EQ(third.push().upserts_size(), 1);
  EXPECT_EQ(third.push().upserts(0).name(), "b");
  push_->Tick();
  EXPECT_TRUE(sink.WaitFor(4).has_heartbeat());
  push_->Disconnect(session);  // The sink dies before the manager.
}

TEST_F(PushManagerTest, HostsShareBundlesOnlyWhenAlike) {
  const uint64_t v1 = Apply(PolicyYaml("a", "web", "/run/a"));
  FakeSink web1, web2, bare;
  const uint64_t s1 = push_->Connect(Hello("h1", {"web"}), &web1);
  const uint64_t s2 = push_->Connect(Hello("h2", {"web"}), &web2);
  const uint64_t s3 = push_->Connect(Hello("h3", {}), &bare);
  for (auto [sink, session, rules] :
       {std::tuple{&web1, s1, 1}, std::tuple{&web2, s2, 1}, std::tuple{&bare, s3, 0}}) {
    v1::StreamResponse first = sink->WaitFor(1);
    ASSERT_EQ(first.push().snapshot().policies_size(), 1);
    EXPECT_EQ(first.push().snapshot().policies(0).rules_size(), rules);
    EXPECT_EQ(first.push().version(), v1);
    push_->OnAck(session, AckOf(first));
  }
  // A change: each host gets the delta against what it ACKed, computed for its own VMs.
  const uint64_t v2 = Apply(PolicyYaml("a", "web", "/run/a2"));
  for (auto [sink, rules] : {std::pair{&web1, 1}, std::pair{&web2, 1}, std::pair{&bare, 0}}) {
    v1::StreamResponse second = sink->WaitFor(2);
    ASSERT_TRUE(second.push().is_delta());
    EXPECT_EQ(second.push().version(), v2);
    EXPECT_EQ(second.push().base_version(), v1);
    // The rule changed only where it applies; elsewhere only the version moves.
    ASSERT_EQ(second.push().upserts_size(), rules);
    if (rules > 0) {
      EXPECT_EQ(second.push().upserts(0).rules(0).object().path(), "/run/a2");
    }
  }
  EXPECT_NE(web1.WaitFor(2).push().nonce(), web2.WaitFor(2).push().nonce());
  for (uint64_t s : {s1, s2, s3}) push_->Disconnect(s);
}

TEST_F(PushManagerTest, EveryAckedVersionReachesTheStore) {
  uint64_t last = Apply(PolicyYaml("a", "web", "/run/a0"));
  FakeSink sink;
  const uint64_t session = push_->Connect(Hello("h1", {"web"}), &sink);
  for (int i = 1; i <= 20; ++i) {
    v1::StreamResponse push = sink.WaitFor(static_cast<size_t>(i));
    ASSERT_EQ(push.push().version(), last);
    // The worker handles this ACK before the next snapshot, so every version is pushed.
    push_->OnAck(session, AckOf(push));
    if (i < 20) last = Apply(PolicyYaml("a", "web", "/run/a" + std::to_string(i)));
  }
  push_->Disconnect(session);
  // Saves of one host may collapse into one write, but the newest is never lost: destroying the
  // manager waits for the writes still queued.
  push_.reset();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(HostRecord stored, store_->GetHost("h1"));
  EXPECT_EQ(stored.acked_version, last);
}

TEST_F(PushManagerTest, SilentAgentIsClosedAndNewStreamReplacesOld) {
  Apply(PolicyYaml("a", "web", "/run/a"));
  FakeSink old_sink;
  push_->Connect(Hello("h1", {}), &old_sink);
  FakeSink sink;
  const uint64_t session = push_->Connect(Hello("h1", {}), &sink);
  ASSERT_TRUE(old_sink.closed().has_value());
  EXPECT_EQ(old_sink.closed()->code(), absl::StatusCode::kAborted);
  EXPECT_THAT(old_sink.closed()->message(), HasSubstr("replaced"));

  sink.WaitFor(1);
  clock_.Advance(absl::Seconds(16));
  push_->Tick();
  ASSERT_TRUE(sink.closed().has_value());
  EXPECT_EQ(sink.closed()->code(), absl::StatusCode::kUnavailable);
  push_->Disconnect(session);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::HostStatus host, push_->GetHost("h1"));
  EXPECT_FALSE(host.connected());
  EXPECT_EQ(host.last_seen().seconds(), absl::ToUnixSeconds(clock_.Now()));
}

TEST_F(PushManagerTest, WrongAckVersionEndsTheStreamAndStaleNonceIsIgnored) {
  Apply(PolicyYaml("a", "web", "/run/a"));
  FakeSink sink;
  const uint64_t session = push_->Connect(Hello("h1", {}), &sink);
  v1::StreamResponse first = sink.WaitFor(1);
  v1::StreamRequest::Ack stale;
  stale.set_version(first.push().version());
  stale.set_nonce("not-the-nonce");
  push_->OnAck(session, stale);
  v1::StreamRequest::Ack wrong = AckOf(first);
  wrong.set_version(first.push().version() + 7);
  push_->OnAck(session, wrong);
  absl::Status closed = sink.WaitClosed();
  EXPECT_EQ(closed.code(), absl::StatusCode::kInvalidArgument) << closed;
  EXPECT_THAT(closed.message(), HasSubstr("names version"));
  EXPECT_EQ(sink.count(), 1u);  // The stale ACK was ignored: no new push.
  push_->Disconnect(session);
}

TEST_F(PushManagerTest, StopClosesEveryStreamAndRefusesNewOnes) {
  FakeSink sink;
  const uint64_t session = push_->Connect(Hello("h1", {}), &sink);
  EXPECT_NE(session, 0u);
  push_->Stop();
  ASSERT_TRUE(sink.closed().has_value());
  EXPECT_EQ(sink.closed()->code(), absl::StatusCode::kUnavailable);
  push_->Disconnect(session);
  FakeSink late;
  EXPECT_EQ(push_->Connect(Hello("h2", {}), &late), 0u);
  ASSERT_TRUE(late.closed().has_value());
  EXPECT_EQ(late.closed()->code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace shuttle::controller
