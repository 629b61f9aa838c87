#include "controller/service/service_testing.h"

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_matchers.h"
#include "common/tls.h"
#include "controller/store/sqlite_store.h"
#include "prometheus/text_serializer.h"

namespace shuttle::controller::testing {

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

double ScrapeValue(prometheus::Registry& registry, const std::string& name) {
  const std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
  const std::string prefix = name + " ";
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, prefix)) continue;
    double value = 0;
    if (absl::SimpleAtod(line.substr(prefix.size()), &value)) return value;
  }
  return -1;
}

namespace {

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace

void ControllerServerTest::SetUp() {
  pki_ = dir_.File("pki");
  ASSERT_THAT(tls::EnsureControllerPki(pki_), shuttle::testing::IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, OpenSqliteStore(dir_.File("controller.db"), clock_));
  policies_ = std::make_unique<PolicyRegistry>(*store_, metrics_);
  ASSERT_THAT(policies_->Load(), shuttle::testing::IsOk());
  authorizer_ = std::make_unique<Authorizer>(false, metrics_);
  PushOptions options;
  options.heartbeat_thread = false;
  push_ = std::make_unique<PushManager>(*store_, *policies_, clock_, metrics_, options);
  ASSERT_THAT(push_->Start(), shuttle::testing::IsOk());
  answers_ = std::make_unique<AnswerAuthority>(*store_, clock_);
  ASSERT_THAT(answers_->Load(), shuttle::testing::IsOk());
  audit_ = std::make_unique<AuditLog>(*store_, metrics_);
  policy_service_ = std::make_unique<PolicyServiceImpl>(*policies_, *authorizer_, executor_);
  agent_service_ = std::make_unique<AgentServiceImpl>(*store_, *push_, *authorizer_, executor_,
                                                      clock_, pki_, metrics_, *answers_, *audit_);
  fleet_service_ =
      std::make_unique<FleetServiceImpl>(*store_, *push_, *authorizer_, executor_, clock_);
  audit_service_ = std::make_unique<AuditServiceImpl>(*audit_, *authorizer_, executor_, metrics_,
                                                      audit_options_);
  answer_service_ = std::make_unique<AnswerServiceImpl>(*answers_, *authorizer_, executor_);

  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::shared_ptr<grpc::ServerCredentials> creds,
                               tls::LoadServerCredentials(pki_, tls::ClientCertMode::kOptional));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", creds, &port);
  AddAgentKeepaliveArgs(builder);
  builder.RegisterService(policy_service_.get());
  builder.RegisterService(agent_service_.get());
  builder.RegisterService(fleet_service_.get());
  builder.RegisterService(audit_service_.get());
  builder.RegisterService(answer_service_.get());
  server_ = builder.BuildAndStart();
  ASSERT_NE(server_, nullptr);
  ASSERT_NE(port, 0);
  target_ = absl::StrCat("localhost:", port);

  admin_ = Channel(pki_ + "/admin.pem", pki_ + "/admin.key");
  anonymous_ = Channel("", "");
}

void ControllerServerTest::TearDown() {
  if (server_ != nullptr) {
    if (audit_ != nullptr) audit_->Close();  // Ends Follow streams, as the controller does.
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    server_->Wait();
  }
}

std::shared_ptr<grpc::Channel> ControllerServerTest::Channel(const std::string& cert,
                                                             const std::string& key) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      tls::LoadClientCredentials(pki_ + "/ca.pem", cert, key);
  EXPECT_TRUE(creds.ok()) << creds.status();
  return grpc::CreateChannel(target_, *creds);
}

absl::StatusOr<std::string> ControllerServerTest::CreateToken(const std::string& host_id,
                                                              absl::Duration ttl) {
  v1::CreateTokenRequest req;
  req.set_host_id(host_id);
  if (ttl > absl::ZeroDuration()) req.mutable_ttl()->set_seconds(absl::ToInt64Seconds(ttl));
  v1::CreateTokenResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = v1::FleetService::NewStub(admin_)->CreateToken(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s);
  return resp.token();
}

grpc::Status ControllerServerTest::Enroll(const std::string& token, const std::string& host_id,
                                          v1::EnrollResponse* resp, std::string* key_pem) {
  // The CSR's subject does not matter: the controller names the certificate by host_id.
  absl::StatusOr<tls::CsrAndKey> csr = tls::CreateCsr("agent");
  EXPECT_TRUE(csr.ok()) << csr.status();
  v1::EnrollRequest req;
  req.set_join_token(token);
  req.set_host_id(host_id);
  req.set_csr_pem(csr->csr_pem);
  grpc::ClientContext ctx;
  if (key_pem != nullptr) *key_pem = csr->key_pem;
  return v1::AgentService::NewStub(anonymous_)->Enroll(&ctx, req, resp);
}

std::shared_ptr<grpc::Channel> ControllerServerTest::EnrolledChannel(const std::string& host_id) {
  absl::StatusOr<std::string> token = CreateToken(host_id);
  EXPECT_TRUE(token.ok()) << token.status();
  v1::EnrollResponse resp;
  std::string key;
  grpc::Status s = Enroll(*token, host_id, &resp, &key);
  EXPECT_TRUE(s.ok()) << s.error_message();
  WriteFile(dir_.File(host_id + ".pem"), resp.certificate_pem());
  WriteFile(dir_.File(host_id + ".key"), key);
  return Channel(dir_.File(host_id + ".pem"), dir_.File(host_id + ".key"));
}

uint64_t ControllerServerTest::Apply(const std::string& source) {
  v1::ApplyRequest req;
  req.set_source(source);
  absl::StatusOr<v1::ApplyResponse> resp = policies_->Apply(req, "test");
  EXPECT_TRUE(resp.ok()) << resp.status();
  return resp.ok() ? resp->revision().fleet_version() : 0;
}

absl::StatusOr<v1::HostStatus> ControllerServerTest::GetHost(const std::string& host_id) {
  v1::GetHostRequest req;
  req.set_host_id(host_id);
  v1::GetHostResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = v1::FleetService::NewStub(admin_)->GetHost(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s);
  return resp.host();
}

}  // namespace shuttle::controller::testing
