#include "controller/service/agent_service.h"

#include <openssl/sha.h>

#include <chrono>
#include <deque>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "controller/service/unary.h"

namespace shuttle::controller {

absl::Status ValidateHostId(absl::string_view host_id) {
  if (host_id.empty() || host_id.size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("host id must be 1 to 64 characters, not ", host_id.size()));
  }
  if (host_id.front() == '.' || host_id.front() == '-') {
    return absl::InvalidArgumentError(
        absl::StrCat("host id '", host_id, "' must not start with '.' or '-'"));
  }
  for (char c : host_id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("host id '", absl::CHexEscape(host_id),
                       "' may hold only letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

void AddAgentKeepaliveArgs(grpc::ServerBuilder& builder) {
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);  // 0: never kick for pings.
}

std::string JoinTokenHash(absl::string_view token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

namespace {

prometheus::Family<prometheus::Counter>& AuthorizeOutcomes(prometheus::Registry& metrics) {
  return prometheus::BuildCounter()
      .Name("shuttle_controller_authorize_total")
      .Help("Authorize calls by outcome: allow, deny, or error (refused or invalid)")
      .Register(metrics);
}

// 10 us to ~5 s: an answer from memory takes microseconds; the tail shows a loaded controller.
prometheus::Histogram::BucketBoundaries AuthorizeBuckets() {
  prometheus::Histogram::BucketBoundaries out;
  for (double b = 10e-6; b < 6; b *= 2.5) out.push_back(b);
  return out;
}

}  // namespace

AgentServiceImpl::AgentServiceImpl(Store& store, PushManager& push, const Authorizer& authorizer,
                                   Executor& executor, Clock& clock, std::string pki_dir,
                                   prometheus::Registry& metrics, const AnswerAuthority& answers,
                                   AuditLog& audit)
    : store_(store),
      push_(push),
      authorizer_(authorizer),
      executor_(executor),
      clock_(clock),
      pki_dir_(std::move(pki_dir)),
      enrollments_(prometheus::BuildCounter()
                       .Name("shuttle_controller_enrollments_total")
                       .Help("Enroll calls by outcome (ok, denied, invalid, error)")
                       .Register(metrics)),
      answers_(answers),
      audit_(audit),
      authorize_allow_(AuthorizeOutcomes(metrics).Add({{"outcome", "allow"}})),
      authorize_deny_(AuthorizeOutcomes(metrics).Add({{"outcome", "deny"}})),
      authorize_error_(AuthorizeOutcomes(metrics).Add({{"outcome", "error"}})),
      authorize_seconds_(prometheus::BuildHistogram()
                             .Name("shuttle_controller_authorize_duration_seconds")
                             .Help("Time to answer one Authorize call")
                             .Register(metrics)
                             .Add({}, AuthorizeBuckets())) {}

absl::StatusOr<v1::EnrollResponse> AgentServiceImpl::DoEnroll(const v1::EnrollRequest& request) {
  SHUTTLE_RETURN_IF_ERROR(ValidateHostId(request.host_id()));
  if (request.join_token().empty()) {
    return absl::UnauthenticatedError("a join token is required (shuttlectl token create)");
  }
  SHUTTLE_ASSIGN_OR_RETURN(
      tls::CertAndKey ca,
      tls::LoadCertAndKey(pki_dir_ + "/" + tls::kCaCertFile, pki_dir_ + "/" + tls::kCaKeyFile));
  // Sign before consuming, so a malformed CSR does not burn the token.
  SHUTTLE_ASSIGN_OR_RETURN(std::string cert,
                           tls::SignCsr(ca, request.csr_pem(), request.host_id()));
  const absl::Time now = clock_.Now();
  SHUTTLE_RETURN_IF_ERROR(
      store_.ConsumeJoinToken(JoinTokenHash(request.join_token()), request.host_id(), now)
          .status());
  HostRecord record;
  absl::StatusOr<HostRecord> existing = store_.GetHost(request.host_id());
  if (existing.ok()) {
    record = *std::move(existing);
  } else if (absl::IsNotFound(existing.status())) {
    record.host_id = request.host_id();
    record.first_seen = now;
  } else {
    return existing.status();
  }
  record.last_seen = now;
  SHUTTLE_RETURN_IF_ERROR(store_.PutHost(record));
  push_.OnEnrolled(record);
  SHUTTLE_LOG(INFO) << "host " << request.host_id() << " enrolled";
  v1::EnrollResponse response;
  response.set_certificate_pem(cert);
  response.set_ca_pem(ca.cert_pem);
  return response;
}

grpc::ServerUnaryReactor* AgentServiceImpl::Enroll(grpc::CallbackServerContext* ctx,
                                                   const v1::EnrollRequest* req,
                                                   v1::EnrollResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kEnroll, "AgentService.Enroll", resp,
                  [this, req](const Caller&) {
                    absl::StatusOr<v1::EnrollResponse> result = DoEnroll(*req);
                    const char* outcome = "ok";
                    if (!result.ok()) {
                      switch (result.status().code()) {
                        case absl::StatusCode::kPermissionDenied:
                        case absl::StatusCode::kUnauthenticated:
                          outcome = "denied";
                          break;
                        case absl::StatusCode::kInvalidArgument:
                          outcome = "invalid";
                          break;
                        default:
                          outcome = "error";
                      }
                      SHUTTLE_LOG(WARNING) << "enrollment of host '" << req->host_id()
                                           << "' refused: " << result.status();
                    }
                    enrollments_.Add({{"outcome", outcome}}).Increment();
                    return result;
                  });
}

grpc::ServerUnaryReactor* AgentServiceImpl::Authorize(grpc::CallbackServerContext* ctx,
                                                      const v1::AuthorizeRequest* req,
                                                      v1::AuthorizeResponse* resp) {
  const auto start = std::chrono::steady_clock::now();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // Answered here, on the gRPC thread: the decision reads an in-memory snapshot and never
  // blocks, and skipping the executor hop keeps ask latency to microseconds.
  absl::StatusOr<v1::AuthorizeResponse> result = [&]() -> absl::StatusOr<v1::AuthorizeResponse> {
    SHUTTLE_ASSIGN_OR_RETURN(Caller caller,
                             authorizer_.Check(*ctx, Permission::kAgent, "AgentService.Authorize"));
    return answers_.Authorize(caller.name, *req);
  }();
  if (!result.ok()) {
    authorize_error_.Increment();
    SHUTTLE_LOG(WARNING) << "Authorize refused: " << result.status();
  } else if (result->decision().verdict() == v1::VERDICT_ALLOW) {
    authorize_allow_.Increment();
  } else {
    authorize_deny_.Increment();
  }
  if (result.ok()) *resp = *std::move(result);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  authorize_seconds_.Observe(seconds);
  grpc::Status status = ToGrpcStatus(result.status());
  authorize_rpc_.Record(status.error_code(), seconds);
  reactor->Finish(std::move(status));
  return reactor;
}

grpc::ServerUnaryReactor* AgentServiceImpl::UploadAudit(grpc::CallbackServerContext* ctx,
                                                        const v1::UploadAuditRequest* req,
                                                        v1::UploadAuditResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kAgent, "AgentService.UploadAudit", resp,
                  [this, req](const Caller& caller) {
                    absl::StatusOr<v1::UploadAuditResponse> result =
                        audit_.Ingest(caller.name, *req);
                    if (!result.ok()) {
                      SHUTTLE_LOG(WARNING)
                          << "audit upload of " << caller.name << " refused: " << result.status();
                    }
                    return result;
                  });
}

namespace {

// One agent's policy stream. Reads one message at a time and hands it to the PushManager
// (which does its work on its own thread); writes what the manager queues, in order. Deletes
// itself in OnDone, after telling the manager the stream is gone.
class PolicyStreamReactor final
    : public grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>,
      public PushSink {
 public:
  PolicyStreamReactor(PushManager& push, absl::StatusOr<Caller> caller) : push_(push) {
    if (!caller.ok()) {
      Close(caller.status());
      return;
    }
    host_id_ = caller->name;
    StartRead(&request_);
  }

  void Send(const v1::StreamResponse& message) override {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    queue_.push_back(message);
    if (!writing_) {
      writing_ = true;
      StartWrite(&queue_.front());
    }
  }

  // Finish is called with mu_ released: OnDone (which deletes this) may run as soon as it is.
  void Close(const absl::Status& status) override {
    grpc::Status finish;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
      final_status_ = ToGrpcStatus(status);
      if (writing_) return;  // OnWriteDone finishes once the queue drains.
      finish = final_status_;
    }
    Finish(finish);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // The agent half-closed or the call broke.
      Close(absl::OkStatus());
      return;
    }
    absl::Status status = Handle();
    if (!status.ok()) {
      Close(status);
      return;
    }
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    grpc::Status finish;
    {
      absl::MutexLock lock(&mu_);
      queue_.pop_front();
      if (ok && !queue_.empty()) {
        StartWrite(&queue_.front());
        return;
      }
      writing_ = false;
      if (!ok) {
        // The stream is broken; nothing more will be written.
        queue_.clear();
        if (!finished_) {
          finished_ = true;
          final_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed");
        }
      }
      if (!finished_) return;
      finish = final_status_;
    }
    Finish(finish);
  }

  void OnDone() override {
    if (session_ != 0) push_.Disconnect(session_);
    delete this;
  }

 private:
  absl::Status Handle() {
    switch (request_.msg_case()) {
      case v1::StreamRequest::kHello: {
        if (session_ != 0) return absl::InvalidArgumentError("a second Hello on one stream");
        const std::string& claimed = request_.hello().host_id();
        if (claimed != host_id_) {
          return absl::PermissionDeniedError(
              absl::StrCat("certificate names '", host_id_, "', hello claims '", claimed, "'"));
        }
        session_ = push_.Connect(request_.hello(), this);
        return absl::OkStatus();
      }
      case v1::StreamRequest::kAck:
        if (session_ == 0) break;
        push_.OnAck(session_, request_.ack());
        return absl::OkStatus();
      case v1::StreamRequest::kNack:
        if (session_ == 0) break;
        push_.OnNack(session_, request_.nack());
        return absl::OkStatus();
      case v1::StreamRequest::kHeartbeat:
        if (session_ == 0) break;
        push_.OnHeartbeat(session_, request_.heartbeat());
        return absl::OkStatus();
      default:
        return absl::InvalidArgumentError("empty StreamRequest");
    }
    return absl::FailedPreconditionError("the first message on a policy stream must be Hello");
  }

  PushManager& push_;
  std::string host_id_;  // Certificate CN.
  v1::StreamRequest request_;
  uint64_t session_ = 0;  // Only touched by read callbacks, which never overlap.

  absl::Mutex mu_;
  std::deque<v1::StreamResponse> queue_ ABSL_GUARDED_BY(mu_);  // Front is being written.
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerBidiReactor<v1::StreamRequest, v1::StreamResponse>* AgentServiceImpl::PolicyStream(
    grpc::CallbackServerContext* ctx) {
  return new PolicyStreamReactor(
      push_, authorizer_.Check(*ctx, Permission::kAgent, "AgentService.PolicyStream"));
}

}  // namespace shuttle::controller
