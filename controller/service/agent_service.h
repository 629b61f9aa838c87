// AgentService over gRPC: Enroll (join token + CSR -> certificate), the bidirectional
// PolicyStream, whose reactor is a thin PushSink over the PushManager, Authorize (answered from
// the standing answers, on the gRPC thread: it never blocks) and UploadAudit (stored by the
// AuditLog on the executor).
#ifndef SHUTTLE_CONTROLLER_SERVICE_AGENT_SERVICE_H_
#define SHUTTLE_CONTROLLER_SERVICE_AGENT_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/clock.h"
#include "common/executor.h"
#include "common/metrics.h"
#include "controller/audit/audit_log.h"
#include "controller/authz/answers.h"
#include "controller/authz/authz.h"
#include "controller/push/push_manager.h"
#include "controller/store/store.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "shuttle/v1/agent.grpc.pb.h"

namespace shuttle::controller {

// OK iff `host_id` can be a host id (and so a certificate CN): 1..64 characters of
// [A-Za-z0-9._-], not starting with '.' or '-'. INVALID_ARGUMENT naming the problem otherwise.
absl::Status ValidateHostId(absl::string_view host_id);

// Server channel args so a dead agent is noticed within seconds even when no message is due:
// HTTP/2 keepalive pings every 2 s, answered within 2 s, also on idle connections; clients may
// ping as often as every 1 s without being disconnected for it.
void AddAgentKeepaliveArgs(grpc::ServerBuilder& builder);

// Lowercase hex SHA-256 of a join token string: what the store keeps instead of the token.
std::string JoinTokenHash(absl::string_view token);

class AgentServiceImpl final : public v1::AgentService::CallbackService {
 public:
  // Collaborators are borrowed and must outlive the service. `pki_dir` holds ca.pem/ca.key
  // (tls::EnsureControllerPki); `clock` decides token expiry; `answers` decides Authorize;
  // `audit` stores UploadAudit batches.
  // Metrics: shuttle_controller_enrollments_total{outcome},
  // shuttle_controller_authorize_total{outcome="allow"|"deny"|"error"} and
  // shuttle_controller_authorize_duration_seconds (from the call's arrival to its answer).
  AgentServiceImpl(Store& store, PushManager& push, const Authorizer& authorizer,
                   Executor& executor, Clock& clock, std::string pki_dir,
                   prometheus::Registry& metrics, const AnswerAuthority& answers, AuditLog& audit);

  // The full method name of Authorize, which records the server's per-RPC metrics itself
  // (shuttle_grpc_requests_total, ..._duration_seconds) instead of through the interceptor: it is
  // the one hot call (every `ask` miss of every agent), and gRPC's interception machinery
  // doubled its server CPU. Pass it to MakeGrpcMetrics() and the recorder to
  // set_authorize_recorder().
  static constexpr char kAuthorizeMethod[] = "/shuttle.v1.AgentService/Authorize";
  // Call before the server starts.
  void set_authorize_recorder(GrpcCallRecorder recorder) { authorize_rpc_ = std::move(recorder); }

  grpc::ServerUnaryReactor* Enroll(grpc::CallbackServerContext* ctx, const v1::EnrollRequest* req,
                                   v1::EnrollResponse* resp) override;
  grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* PolicyStream(
      grpc::CallbackServerContext* ctx) override;
  // Agents only, for their own host (the certificate's); see AnswerAuthority::Authorize.
  grpc::ServerUnaryReactor* Authorize(grpc::CallbackServerContext* ctx,
                                      const v1::AuthorizeRequest* req,
                                      v1::AuthorizeResponse* resp) override;
  // Agents only, for their own host's records; see AuditLog::Ingest.
  grpc::ServerUnaryReactor* UploadAudit(grpc::CallbackServerContext* ctx,
                                        const v1::UploadAuditRequest* req,
                                        v1::UploadAuditResponse* resp) override;

 private:
  absl::StatusOr<v1::EnrollResponse> DoEnroll(const v1::EnrollRequest& request);

  Store& store_;
  PushManager& push_;
  const Authorizer& authorizer_;
  Executor& executor_;
  Clock& clock_;
  const std::string pki_dir_;
  prometheus::Family<prometheus::Counter>& enrollments_;
  const AnswerAuthority& answers_;
  AuditLog& audit_;
  prometheus::Counter& authorize_allow_;
  prometheus::Counter& authorize_deny_;
  prometheus::Counter& authorize_error_;
  prometheus::Histogram& authorize_seconds_;
  GrpcCallRecorder authorize_rpc_;  // Records nothing unless set.
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_SERVICE_AGENT_SERVICE_H_
