// A whole controller in-process for service tests: a SQLite store in a temporary directory, a
// temporary PKI, the registry, push manager, standing answers and audit log, and every gRPC
// service on 127.0.0.1:0 over mTLS, with a FakeClock. Tests talk to it as admin, as an anonymous
// client, or as an enrolled agent (EnrolledChannel), so they check the wire contract the agent
// and shuttlectl follow. Tests only.
#ifndef SHUTTLE_CONTROLLER_SERVICE_SERVICE_TESTING_H_
#define SHUTTLE_CONTROLLER_SERVICE_SERVICE_TESTING_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/executor.h"
#include "controller/audit/audit_log.h"
#include "controller/authz/answers.h"
#include "controller/authz/authz.h"
#include "controller/push/push_manager.h"
#include "controller/registry/policy_registry.h"
#include "controller/service/agent_service.h"
#include "controller/service/answer_service.h"
#include "controller/service/audit_service.h"
#include "controller/service/fleet_service.h"
#include "controller/service/policy_service.h"
#include "controller/store/store.h"
#include "controller/store/store_testing.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "shuttle/v1/agent.grpc.pb.h"
#include "shuttle/v1/fleet.grpc.pb.h"

namespace shuttle::controller::testing {

// Writes `content` to `path`, failing the test if it can't.
void WriteFile(const std::string& path, const std::string& content);

// The value of the first sample line of `name` (with its labels, e.g.
// `shuttle_x_total{outcome="allow"}`) in the registry's text exposition, or -1 if absent.
double ScrapeValue(prometheus::Registry& registry, const std::string& name);

class ControllerServerTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // A channel to the server with the given client certificate ("" for none).
  std::shared_ptr<grpc::Channel> Channel(const std::string& cert, const std::string& key);

  // A join token from FleetService.CreateToken as admin; ttl zero: the default.
  absl::StatusOr<std::string> CreateToken(const std::string& host_id,
                                          absl::Duration ttl = absl::ZeroDuration());

  // Enroll over an anonymous channel with a new key; the key is returned in *key_pem.
  grpc::Status Enroll(const std::string& token, const std::string& host_id,
                      v1::EnrollResponse* resp, std::string* key_pem = nullptr);

  // Enrolls `host_id` and returns a channel with its new certificate.
  std::shared_ptr<grpc::Channel> EnrolledChannel(const std::string& host_id);

  // Applies a policy through the registry; returns its fleet version (0 on failure).
  uint64_t Apply(const std::string& source);

  // FleetService.GetHost as admin.
  absl::StatusOr<v1::HostStatus> GetHost(const std::string& host_id);

  // Options the fixture builds the audit service with; set before SetUp to change them.
  AuditServiceOptions audit_options_;

  TempDir dir_;
  std::string pki_;
  FakeClock clock_;
  prometheus::Registry metrics_;
  StorePtr store_;
  std::unique_ptr<PolicyRegistry> policies_;
  std::unique_ptr<Authorizer> authorizer_;
  Executor executor_{2};
  std::unique_ptr<PushManager> push_;
  std::unique_ptr<AnswerAuthority> answers_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<PolicyServiceImpl> policy_service_;
  std::unique_ptr<AgentServiceImpl> agent_service_;
  std::unique_ptr<FleetServiceImpl> fleet_service_;
  std::unique_ptr<AuditServiceImpl> audit_service_;
  std::unique_ptr<AnswerServiceImpl> answer_service_;
  std::unique_ptr<grpc::Server> server_;  // Declared last: shut down before the rest.
  std::string target_;
  std::shared_ptr<grpc::Channel> admin_;
  std::shared_ptr<grpc::Channel> anonymous_;
};

}  // namespace shuttle::controller::testing

#endif  // SHUTTLE_CONTROLLER_SERVICE_SERVICE_TESTING_H_
