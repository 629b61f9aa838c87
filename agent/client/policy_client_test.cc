#include "agent/client/policy_client.h"

#include <sys/stat.h>

#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/security/credentials.h>

#include "agent/client/fake_controller.h"
#include "agent/client/policy_snapshot.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"

namespace shuttle::agent {
namespace {

using ::shuttle::agent::testing::FakeController;
using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(10);

v1::Policy MakePolicy(const std::string& name, const std::string& rule_name) {
  v1::Policy p;
  p.set_name(name);
  v1::Rule* rule = p.add_rules();
  rule->set_name(rule_name);
  rule->mutable_subject()->set_vm("web");
  rule->add_kinds(v1::UNIX_CONNECT);
  rule->mutable_object()->set_vm("db");
  rule->mutable_object()->set_path("/run/" + name + ".sock");
  rule->set_action(v1::ALLOW);
  return p;
}

v1::StreamResponse FullPush(uint64_t version, const std::string& nonce,
                            std::vector<v1::Policy> policies) {
  v1::StreamResponse r;
  v1::StreamResponse::Push* push = r.mutable_push();
  push->set_version(version);
  push->set_nonce(nonce);
  push->mutable_snapshot()->set_version(version);
  for (v1::Policy& p : policies) *push->mutable_snapshot()->add_policies() = std::move(p);
  return r;
}

v1::StreamResponse DeltaPush(uint64_t version, uint64_t base, const std::string& nonce,
                             std::vector<v1::Policy> upserts, std::vector<std::string> removals) {
  v1::StreamResponse r;
  v1::StreamResponse::Push* push = r.mutable_push();
  push->set_version(version);
  push->set_nonce(nonce);
  push->set_is_delta(true);
  push->set_base_version(base);
  for (v1::Policy& p : upserts) *push->add_upserts() = std::move(p);
  for (std::string& n : removals) push->add_removals(std::move(n));
  return r;
}

// The value of one sample of `name` with label `label`=`value` (or no label), or -1.
double MetricValue(prometheus::Registry& registry, const std::string& name,
                   const std::string& label = "", const std::string& value = "") {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      bool match = label.empty();
      for (const prometheus::ClientMetric::Label& l : metric.label) {
        if (l.name == label && l.value == value) match = true;
      }
      if (!match) continue;
      if (family.type == prometheus::MetricType::Counter) return metric.counter.value;
      if (family.type == prometheus::MetricType::Gauge) return metric.gauge.value;
    }
  }
  return -1;
}

class PolicyClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/policy-client-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }

  PolicyClientOptions Options() {
    PolicyClientOptions options;
    options.controller_address = controller_.address();
    options.host_id = "host-1";
    options.agent_version = "test";
    options.credentials = grpc::InsecureChannelCredentials();
    options.snapshot_path = LastGoodPolicyPath(dir_);
    options.heartbeat_interval = absl::Hours(1);
    options.random = [] { return 0.0; };  // Reconnect at once: tests don't wait out backoff.
    return options;
  }

  std::unique_ptr<PolicyClient> NewClient(PolicyHolder& holder, prometheus::Registry& registry,
                                          PolicyClientOptions options) {
    ::mkdir((dir_ + "/policy").c_str(), 0700);
    return std::make_unique<PolicyClient>(
        std::move(options), holder,
        [] {
          v1::VmInfo vm;
          vm.set_name("web");
          vm.set_init_pid(42);
          vm.set_running(true);
          return std::vector<v1::VmInfo>{vm};
        },
        registry);
  }

  // Waits for the Hello of a new stream and returns it.
  v1::StreamRequest::Hello ExpectHello(int* session = nullptr) {
    std::optional<v1::StreamRequest> hello = controller_.Next(kWait, false, session);
    EXPECT_TRUE(hello.has_value());
    EXPECT_TRUE(hello.has_value() && hello->has_hello()) << (hello ? hello->DebugString() : "");
    return hello.has_value() ? hello->hello() : v1::StreamRequest::Hello();
  }

  v1::StreamRequest ExpectReply() {
    std::optional<v1::StreamRequest> reply = controller_.Next(kWait);
    EXPECT_TRUE(reply.has_value()) << "no reply from the agent";
    return reply.value_or(v1::StreamRequest());
  }

  FakeController controller_;
  std::string dir_;
};

TEST_F(PolicyClientTest, HelloThenFullPushIsEnforcedPersistedAndAcked) {
  PolicyHolder holder;
  prometheus::Registry registry;
  std::unique_ptr<PolicyClient> client = NewClient(holder, registry, Options());
  client->Start();

  v1::StreamRequest::Hello hello = ExpectHello();
  EXPECT_EQ(hello.host_id(), "host-1");
  EXPECT_EQ(hello.current_version(), 0u);
  EXPECT_EQ(hello.agent_version(), "test");
  ASSERT_EQ(hello.vms_size(), 1);
  EXPECT_EQ(hello.vms(0).name(), "web");
  EXPECT_EQ(hello.vms(0).init_pid(), 42u);
  EXPECT_TRUE(client->WaitFor([](const PolicyClientState& s) { return s.connected; }, kWait));
  EXPECT_EQ(MetricValue(registry, "shuttle_agent_controller_connected"), 1);

  controller_.Send(FullPush(5, "nonce-5", {MakePolicy("a", "r1")}));
  v1::StreamRequest reply = ExpectReply();
  ASSERT_TRUE(reply.has_ack()) << reply.DebugString();
  EXPECT_EQ(reply.ack().version(), 5u);
  EXPECT_EQ(reply.ack().nonce(), "nonce-5");

  EXPECT_EQ(holder.Get()->version(), 5u);
  EXPECT_EQ(holder.Get()->rule_count(), 1u);
  absl::StatusOr<v1::PolicyBundle> persisted = LoadPolicySnapshot(LastGoodPolicyPath(dir_));
  ASSERT_THAT(persisted, IsOk());
  EXPECT_EQ(persisted->version(), 5u);
  EXPECT_EQ(MetricValue(registry, "shuttle_agent_policy_version"), 5);
  EXPECT_EQ(MetricValue(registry, "shuttle_agent_policy_pushes_total", "result", "ack"), 1);
  EXPECT_EQ(client->state().acks, 1u);
}

TEST_F(PolicyClientTest, FullSnapshotLargerThanGrpcsDefaultLimitIsTaken) {
  PolicyHolder holder;
  prometheus::Registry registry;
  std::unique_ptr<PolicyClient> client = NewClient(holder, registry, Options());
  client->Start();
  ExpectHello();

  // Over gRPC's default 4 MiB receive limit, which would end the stream at every reconnect.
  v1::Policy big = MakePolicy("a", "r1");
  big.set_description(std::string(size_t{5} << 20, 'x'));
  controller_.Send(FullPush(5, "n5", {big}));
  v1::StreamRequest reply = ExpectReply();
  ASSERT_TRUE(reply.has_ack()) << reply.DebugString().substr(0, 200);
  EXPECT_EQ(reply.ack().version(), 5u);
  EXPECT_EQ(holder.Get()->version(), 5u);
  EXPECT_EQ(controller_.sessions(), 1);
}

TEST_F(PolicyClientTest, UncompilablePushIsNackedAndThePreviousVersionStays) {
  PolicyHolder holder;
  prometheus::Registry registry;
  std::unique_ptr<PolicyClient> client = NewClient(holder, registry, Options());
  client->Start();
  ExpectHello();
  controller_.Send(FullPush(5, "n5", {MakePolicy("a", "r1")}));
  ASSERT_TRUE(ExpectReply().has_ack());
  std::shared_ptr<const policy::CompiledPolicy> before = holder.Get();

  // A rule without a name does not validate (ValidatePolicy), so version 6 can't compile.
  controller_.Send(FullPush(6, "n6", {MakePolicy("a", "r1"), MakePolicy("b", "")}));
  v1::StreamRequest reply = ExpectReply();
  ASSERT_TRUE(reply.has_nack()) << reply.DebugString();
  EXPECT_EQ(reply.nack().version(), 5u);
  EXPECT_EQ(reply.nack().nonce(), "n6");
  EXPECT_THAT(reply.nack().error(), HasSubstr("name"));

  EXPECT_EQ(holder.Get(), before);  // The very same snapshot is still enforced.
  EXPECT_EQ(holder.Get()->version(), 5u);
  absl::StatusOr<v1::PolicyBundle> persisted = LoadPolicySnapshot(LastGoodPolicyPath(dir_));
  ASSERT_THAT(persisted, IsOk());
  EXPECT_EQ(persisted->version(), 5u);
  EXPECT_EQ(MetricValue(registry, "shuttle_agent_policy_pushes_total", "result", "nack"), 1);
  EXPECT_EQ(MetricValue(registry, "shuttle_agent_policy_version"), 5);

  // The stream goes on: the next good push is taken.
  controller_.Send(FullPush(7, "n7", {MakePolicy("a", "r1"), MakePolicy("b", "r2")}));
  reply = ExpectReply();
  ASSERT_TRUE(reply.has_ack()) << reply.DebugString();
  EXPECT_EQ(reply.ack().version(), 7u);
  EXPECT_EQ(holder.Get()->rule_count(), 2u);
  EXPECT_EQ(controller_.sessions(), 1);
}

TEST_F(PolicyClientTest, DeltaIsMergedAndAWrongBaseAsksForAFullSnapshot) {
  PolicyHolder holder;
  prometheus::Registry registry;
  std::unique_ptr<PolicyClient> client = NewClient(holder, registry, Options());
  client->Start();
  ExpectHello();
  controller_.Send(FullPush(5, "n5", {MakePolicy("a", "r1"), MakePolicy("c", "r3")}));
  ASSERT_TRUE(ExpectReply().has_ack());

  controller_.Send(DeltaPush(6, 5, "n6", {MakePolicy("b", "r2")}, {"c"}));
  v1::StreamRequest reply = ExpectReply();
  ASSERT_TRUE(reply.has_ack()) << reply.DebugString();
  EXPECT_EQ(reply.ack().version(), 6u);
  EXPECT_EQ(holder.Get()->version(), 6u);
  absl::StatusOr<v1::PolicyBundle> persisted = LoadPolicySnapshot(LastGoodPolicyPath(dir_));
  ASSERT_THAT(persisted, IsOk());
  std::vector<std::string> names;
  for (const v1::Policy& p : persisted->policies()) names.push_back(p.name());
  EXPECT_THAT(names, ElementsAre("a", "b"));

  // A delta on a version this agent does not have: NACK, then a new stream whose Hello says
  // what the agent enforces, so the controller sends a full snapshot.
  controller_.Send(DeltaPush(8, 7, "n8", {MakePolicy("d", "r4")}, {}));
  reply = ExpectReply();
  ASSERT_TRUE(reply.has_nack()) << reply.DebugString();
  EXPECT_EQ(reply.nack().version(), 6u);
  EXPECT_EQ(reply.nack().nonce(), "n8");
  EXPECT_THAT(reply.nack().error(), HasSubstr("full snapshot"));
  int session = 0;
  v1::StreamRequest::Hello hello = ExpectHello(&session);
  EXPECT_EQ(session, 2);
  EXPECT_EQ(hello.current_version(), 6u);
  EXPECT_EQ(holder.Get()->version(), 6u);

  controller_.Send(FullPush(8, "n8b", {MakePolicy("a", "r1"), MakePolicy("d", "r4")}));
  reply = ExpectReply();
  ASSERT_TRUE(reply.has_ack()) << reply.DebugString();
  EXPECT_EQ(reply.ack().version(), 8u);
}

TEST_F(PolicyClientTest, FreshClientEnforcesThePersistedSnapshotBeforeConnecting) {
  {
    PolicyHolder holder;
    prometheus::Registry registry;
    std::unique_ptr<PolicyClient> client = NewClient(holder, registry, Options());
    client->Start();
    ExpectHello();
    controller_.Send(FullPush(5, "n5", {MakePolicy("a", "r1")}));
    ASSERT_TRUE(ExpectReply().has_ack());
    client->Stop();
  }

  PolicyHolder holder;
  prometheus::Registry registry;
  PolicyClientOptions options = Options();
  options.controller_address = "127.0.0.1:1";  // Nobody there: the snapshot alone counts.
  std::unique_ptr<PolicyClient> offline = NewClient(holder, registry, options);
  absl::StatusOr<uint64_t> loaded = offline->LoadPersisted();
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(*loaded, 5u);
  EXPECT_EQ(holder.Get()->version(), 5u);
  EXPECT_EQ(holder.Get()->rule_count(), 1u);
  EXPECT_EQ(MetricValue(registry, "shuttle_agent_policy_version"), 5);

  // Reconnected to the real controller, it says Hello with version 5 and takes a delta on it.
  PolicyHolder holder2;
  prometheus::Registry registry2;
  std::unique_ptr<PolicyClient> client = NewClient(holder2, registry2, Options());
  ASSERT_THAT(client->LoadPersisted(), IsOk());
  client->Start();
  EXPECT_EQ(ExpectHello().current_version(), 5u);
  controller_.Send(DeltaPush(6, 5, "n6", {MakePolicy("b", "r2")}, {}));
  v1::StreamRequest reply = ExpectReply();
  ASSERT_TRUE(reply.has_ack()) << reply.DebugString();
  EXPECT_EQ(holder2.Get()->rule_count(), 2u);
}

TEST_F(PolicyClientTest, MissingSnapshotIsNotFound) {
  PolicyHolder holder;
  prometheus::Registry registry;
  std::unique_ptr<PolicyClient> client = NewClient(holder, registry, Options());
  EXPECT_THAT(client->LoadPersisted(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("last-good")));
  EXPECT_EQ(holder.Get()->version(), 0u);
}

TEST_F(PolicyClientTest, ReconnectsWhenTheStreamEnds) {
  PolicyHolder holder;
  prometheus::Registry registry;
  std::unique_ptr<PolicyClient> client = NewClient(holder, registry, Options());
  client->Start();
  ExpectHello();
  controller_.Send(FullPush(5, "n5", {MakePolicy("a", "r1")}));
  ASSERT_TRUE(ExpectReply().has_ack());

  controller_.EndStream();
  int session = 0;
  EXPECT_EQ(ExpectHello(&session).current_version(), 5u);
  EXPECT_EQ(session, 2);
  EXPECT_TRUE(client->WaitFor(
      [](const PolicyClientState& s) { return s.connected && s.sessions == 2; }, kWait));
  EXPECT_GE(client->state().reconnects, 1u);
  EXPECT_GE(MetricValue(registry, "shuttle_agent_controller_reconnects_total"), 1);
}

TEST_F(PolicyClientTest, SendsHeartbeatsWithTheVms) {
  PolicyHolder holder;
  prometheus::Registry registry;
  PolicyClientOptions options = Options();
  options.heartbeat_interval = absl::Milliseconds(20);
  std::unique_ptr<PolicyClient> client = NewClient(holder, registry, options);
  client->Start();
  ExpectHello();
  std::optional<v1::StreamRequest> beat = controller_.Next(kWait, /*heartbeats=*/true);
  ASSERT_TRUE(beat.has_value());
  ASSERT_TRUE(beat->has_heartbeat()) << beat->DebugString();
  ASSERT_EQ(beat->heartbeat().vms_size(), 1);
  EXPECT_EQ(beat->heartbeat().vms(0).name(), "web");
}

// A VM created or destroyed is reported at once, not at the next heartbeat (an hour away here):
// the controller compiles per host and pushes the new VM's rules on hearing of it.
TEST_F(PolicyClientTest, ChangedVmsAreReportedAtOnce) {
  PolicyHolder holder;
  prometheus::Registry registry;
  std::unique_ptr<PolicyClient> client = NewClient(holder, registry, Options());
  client->Start();
  ExpectHello();
  ASSERT_TRUE(client->WaitFor([](const PolicyClientState& s) { return s.connected; }, kWait));
  EXPECT_FALSE(controller_.Next(absl::Milliseconds(200), /*heartbeats=*/true).has_value());
  client->NotifyVmsChanged();
  std::optional<v1::StreamRequest> beat = controller_.Next(kWait, /*heartbeats=*/true);
  ASSERT_TRUE(beat.has_value());
  ASSERT_TRUE(beat->has_heartbeat()) << beat->DebugString();
  ASSERT_EQ(beat->heartbeat().vms_size(), 1);
  EXPECT_EQ(beat->heartbeat().vms(0).name(), "web");
  // One change, one heartbeat.
  EXPECT_FALSE(controller_.Next(absl::Milliseconds(200), /*heartbeats=*/true).has_value());
}

TEST_F(PolicyClientTest, StopCancelsAnOpenStreamPromptly) {
  PolicyHolder holder;
  prometheus::Registry registry;
  std::unique_ptr<PolicyClient> client = NewClient(holder, registry, Options());
  client->Start();
  ExpectHello();
  ASSERT_TRUE(client->WaitFor([](const PolicyClientState& s) { return s.connected; }, kWait));
  const absl::Time start = absl::Now();
  client->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_FALSE(client->state().connected);
  EXPECT_EQ(MetricValue(registry, "shuttle_agent_controller_connected"), 0);
}

}  // namespace
}  // namespace shuttle::agent
