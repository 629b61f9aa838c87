// AgentService (Enroll, PolicyStream) and FleetService over real gRPC with mTLS: the services,
// the push manager, the registry and a SQLite store in-process on 127.0.0.1:0, a temporary PKI,
// and a FakeClock for token expiry (service_testing.h). The test plays the agent with a raw
// stream, so it checks the wire contract that agent/client follows.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/status_matchers.h"
#include "common/tls.h"
#include "controller/service/fleet_service.h"
#include "controller/service/service_testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "shuttle/v1/agent.grpc.pb.h"
#include "shuttle/v1/fleet.grpc.pb.h"
#include "shuttle/v1/policy.grpc.pb.h"

namespace shuttle::controller {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kPolicyV1[] = R"yaml(name: webapp
rules:
  - name: web-to-db
    subject: {vm: web}
    kind: unix-connect
    object: {vm: db, path: /run/db.sock}
    action: allow
  - name: cache-only
    subject: {vm: cache}
    kind: unix-connect
    object: {vm: db, path: /run/db.sock}
    action: allow
)yaml";
constexpr char kPolicyV2[] = R"yaml(name: webapp
rules:
  - name: web-to-db
    subject: {vm: web}
    kind: unix-connect
    object: {vm: db, path: /run/db2.sock}
    action: allow
)yaml";
constexpr char kOtherPolicy[] = R"yaml(name: other
rules:
  - name: any
    subject: {vm: web}
    kind: unix-connect
    object: {vm: host, path: /run/x.sock}
    action: deny
)yaml";

constexpr char kThirdPolicy[] = R"yaml(name: third
hosts: ["web-*"]
rules:
  - name: signals
    subject: {vm: web}
    kind: signal
    object: {vm: host}
    action: allow
)yaml";

std::vector<std::string> RuleNames(const v1::Policy& p) {
  std::vector<std::string> out;
  for (const v1::Rule& r : p.rules()) out.push_back(r.name());
  return out;
}

// The fixture is the whole controller in-process (service_testing.h).
using AgentFleetTest = ::shuttle::controller::testing::ControllerServerTest;

TEST_F(AgentFleetTest, CertificateLessCallersReachOnlyEnroll) {
  {
    grpc::ClientContext ctx;
    v1::ListHostsResponse resp;
    grpc::Status s = v1::FleetService::NewStub(anonymous_)->ListHosts(&ctx, {}, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::CreateTokenResponse resp;
    grpc::Status s = v1::FleetService::NewStub(anonymous_)->CreateToken(&ctx, {}, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    v1::ListPoliciesResponse resp;
    grpc::Status s = v1::PolicyService::NewStub(anonymous_)->List(&ctx, {}, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    auto stream = v1::AgentService::NewStub(anonymous_)->PolicyStream(&ctx);
    v1::StreamResponse resp;
    EXPECT_FALSE(stream->Read(&resp));
    grpc::Status s = stream->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
  }
  // An operator certificate is not an agent's.
  {
    grpc::ClientContext ctx;
    auto stream = v1::AgentService::NewStub(admin_)->PolicyStream(&ctx);
    v1::StreamResponse resp;
    EXPECT_FALSE(stream->Read(&resp));
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
}

TEST_F(AgentFleetTest, EnrollConsumesTokensOnce) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string token, CreateToken(""));
  EXPECT_THAT(token, ::testing::StartsWith(kJoinTokenPrefix));
  EXPECT_EQ(token.size(), 4u + 64u);

  v1::EnrollResponse resp;
  grpc::Status s = Enroll(token, "web-1", &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_THAT(tls::VerifyCert(resp.ca_pem(), resp.certificate_pem(), tls::CertPurpose::kClient),
              shuttle::testing::IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(tls::PeerIdentity id,
                               tls::IdentityFromCertPem(resp.certificate_pem()));
  EXPECT_EQ(id.common_name, "web-1");
  EXPECT_EQ(id.role, "agent");

  s = Enroll(token, "web-1", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("already used"));

  s = Enroll("sjt_0000", "web-1", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), HasSubstr("unknown join token"));

  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string short_lived, CreateToken("", absl::Seconds(1)));
  clock_.Advance(absl::Seconds(2));
  s = Enroll(short_lived, "web-2", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("expired"));

  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string bound, CreateToken("db-1"));
  s = Enroll(bound, "web-2", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("issued for host \"db-1\""));
  s = Enroll(bound, "../etc", &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  s = Enroll(bound, "db-1", &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();

  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::HostStatus host, GetHost("web-1"));
  EXPECT_FALSE(host.connected());
  EXPECT_EQ(host.policy_version(), 0u);
  EXPECT_EQ(GetHost("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AgentFleetTest, PushAckDeltaNack) {
  const uint64_t v1 = Apply(kPolicyV1);
  std::shared_ptr<grpc::Channel> agent = EnrolledChannel("web-1");

  grpc::ClientContext ctx;
  auto stream = v1::AgentService::NewStub(agent)->PolicyStream(&ctx);
  v1::StreamRequest hello;
  hello.mutable_hello()->set_host_id("web-1");
  v1::VmInfo* vm = hello.mutable_hello()->add_vms();
  vm->set_name("web");
  vm->set_running(true);
  ASSERT_TRUE(stream->Write(hello));

  // First push: a full snapshot, filtered to this host's VMs.
  v1::StreamResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  ASSERT_TRUE(resp.has_push());
  const v1::StreamResponse::Push first = resp.push();
  EXPECT_EQ(first.version(), v1);
  EXPECT_FALSE(first.is_delta());
  EXPECT_FALSE(first.nonce().empty());
  EXPECT_EQ(first.snapshot().version(), v1);
  ASSERT_EQ(first.snapshot().policies_size(), 1);
  EXPECT_THAT(RuleNames(first.snapshot().policies(0)), ElementsAre("web-to-db"));

  v1::StreamRequest ack;
  ack.mutable_ack()->set_version(v1);
  ack.mutable_ack()->set_nonce(first.nonce());
  ASSERT_TRUE(stream->Write(ack));

  // A change: a delta against what the agent ACKed. Add a policy too, so the delta is
  // "one upsert of two".
  const uint64_t v2 = Apply(kOtherPolicy);
  ASSERT_TRUE(stream->Read(&resp));
  ASSERT_TRUE(resp.has_push());
  v1::StreamResponse::Push second = resp.push();
  EXPECT_EQ(second.version(), v2);
  EXPECT_TRUE(second.is_delta());
  EXPECT_EQ(second.base_version(), v1);
  ASSERT_EQ(second.upserts_size(), 1);
  EXPECT_EQ(second.upserts(0).name(), "other");
  EXPECT_EQ(second.removals_size(), 0);
  EXPECT_NE(second.nonce(), first.nonce());
  ack.mutable_ack()->set_version(v2);
  ack.mutable_ack()->set_nonce(second.nonce());
  ASSERT_TRUE(stream->Write(ack));

  const uint64_t v3 = Apply(kPolicyV2);
  ASSERT_TRUE(stream->Read(&resp));
  v1::StreamResponse::Push third = resp.push();
  EXPECT_EQ(third.version(), v3);
  EXPECT_TRUE(third.is_delta());
  EXPECT_EQ(third.base_version(), v2);
  ASSERT_EQ(third.upserts_size(), 1);
  EXPECT_EQ(third.upserts(0).name(), "webapp");
  v1::StreamRequest nack;
  nack.mutable_nack()->set_version(v2);
  nack.mutable_nack()->set_nonce(third.nonce());
  nack.mutable_nack()->set_error("rule web-to-db: no such socket");
  ASSERT_TRUE(stream->Write(nack));

  // The next change is pushed only once the NACK is handled, so after reading it the host
  // table shows the NACK. Its base is still v2: the NACKed v3 never took effect.
  const uint64_t v4 = Apply(kThirdPolicy);
  ASSERT_TRUE(stream->Read(&resp));
  v1::StreamResponse::Push fourth = resp.push();
  EXPECT_EQ(fourth.version(), v4);
  EXPECT_TRUE(fourth.is_delta());
  EXPECT_EQ(fourth.base_version(), v2);
  ASSERT_EQ(fourth.upserts_size(), 2);
  // In fleet order (by name).
  EXPECT_EQ(fourth.upserts(0).name(), "third");
  EXPECT_EQ(fourth.upserts(1).name(), "webapp");
  EXPECT_THAT(RuleNames(fourth.upserts(1)), ElementsAre("web-to-db"));
  EXPECT_EQ(fourth.removals_size(), 0);

  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::HostStatus host, GetHost("web-1"));
  EXPECT_TRUE(host.connected());
  EXPECT_EQ(host.policy_version(), v2);
  EXPECT_EQ(host.fleet_version(), v4);
  EXPECT_EQ(host.last_nack_version(), v3);
  EXPECT_EQ(host.last_nack_error(), "rule web-to-db: no such socket");
  ASSERT_EQ(host.vms_size(), 1);
  EXPECT_EQ(host.vms(0).name(), "web");

  // Heartbeat from the controller on demand (the thread is off in this test).
  push_->Tick();
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_TRUE(resp.has_heartbeat());

  // A second stream from the same host replaces the first.
  grpc::ClientContext ctx2;
  auto stream2 = v1::AgentService::NewStub(agent)->PolicyStream(&ctx2);
  hello.mutable_hello()->set_current_version(v2);
  ASSERT_TRUE(stream2->Write(hello));
  ASSERT_TRUE(stream2->Read(&resp));
  ASSERT_TRUE(resp.has_push());
  // It reports v2, which it ACKed to us: a delta from there.
  EXPECT_TRUE(resp.push().is_delta());
  EXPECT_EQ(resp.push().base_version(), v2);
  while (stream->Read(&resp)) {
  }
  grpc::Status old = stream->Finish();
  EXPECT_EQ(old.error_code(), grpc::StatusCode::ABORTED) << old.error_message();
  EXPECT_THAT(old.error_message(), HasSubstr("replaced"));

  stream2->WritesDone();
  ctx2.TryCancel();
  stream2->Finish();
}

TEST_F(AgentFleetTest, HelloForAnotherHostIsRefused) {
  std::shared_ptr<grpc::Channel> agent = EnrolledChannel("web-1");
  grpc::ClientContext ctx;
  auto stream = v1::AgentService::NewStub(agent)->PolicyStream(&ctx);
  v1::StreamRequest hello;
  hello.mutable_hello()->set_host_id("db-1");
  ASSERT_TRUE(stream->Write(hello));
  v1::StreamResponse resp;
  EXPECT_FALSE(stream->Read(&resp));
  grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(s.error_message(), "certificate names 'web-1', hello claims 'db-1'");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::HostStatus host, GetHost("web-1"));
  EXPECT_FALSE(host.connected());
}

}  // namespace
}  // namespace shuttle::controller
