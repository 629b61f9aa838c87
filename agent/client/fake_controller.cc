#include "agent/client/fake_controller.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace shuttle::agent::testing {

FakeController::FakeController() {
  authorize_response_.mutable_decision()->set_verdict(v1::VERDICT_ALLOW);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  // Let the agent ping every 2 s without being told off (see policy_client.h).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.RegisterService(this);
  server_ = builder.BuildAndStart();
  address_ = absl::StrCat("127.0.0.1:", port);
}

FakeController::~FakeController() {
  {
    absl::MutexLock lock(&mu_);
    shutting_down_ = true;
  }
  server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  server_->Wait();
}

void FakeController::SetEnrollment(tls::CertAndKey ca, std::string token) {
  absl::MutexLock lock(&mu_);
  ca_ = std::move(ca);
  token_ = std::move(token);
}

void FakeController::Send(v1::StreamResponse response) {
  absl::MutexLock lock(&mu_);
  outbox_.push_back(std::move(response));
}

void FakeController::EndStream() {
  absl::MutexLock lock(&mu_);
  end_ = true;
}

std::optional<v1::StreamRequest> FakeController::Next(absl::Duration timeout, bool heartbeats,
                                                      int* session) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::MutexLock lock(&mu_);
  while (true) {
    while (!inbox_.empty()) {
      Received front = std::move(inbox_.front());
      inbox_.pop_front();
      if (front.request.has_heartbeat() && !heartbeats) continue;
      if (session != nullptr) *session = front.session;
      return std::move(front.request);
    }
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !inbox_.empty(); };
    if (!mu_.AwaitWithDeadline(absl::Condition(&ready), deadline)) return std::nullopt;
  }
}

int FakeController::sessions() const {
  absl::MutexLock lock(&mu_);
  return sessions_;
}

void FakeController::SetAuthorizeAnswer(v1::AuthorizeResponse response, grpc::Status status) {
  absl::MutexLock lock(&mu_);
  authorize_response_ = std::move(response);
  authorize_status_ = std::move(status);
}

void FakeController::HoldAuthorize() {
  absl::MutexLock lock(&mu_);
  authorize_held_ = true;
}

void FakeController::ReleaseAuthorize() {
  absl::MutexLock lock(&mu_);
  authorize_held_ = false;
}

std::vector<v1::AuthorizeRequest> FakeController::authorize_requests() const {
  absl::MutexLock lock(&mu_);
  return authorize_requests_;
}

bool FakeController::WaitForAuthorize(size_t n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto arrived = [this, n]()
                     ABSL_SHARED_LOCKS_REQUIRED(mu_) { return authorize_requests_.size() >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&arrived), timeout);
}

grpc::Status FakeController::Authorize(grpc::ServerContext* ctx,
                                       const v1::AuthorizeRequest* request,
                                       v1::AuthorizeResponse* response) {
  absl::MutexLock lock(&mu_);
  authorize_requests_.push_back(*request);
  auto released = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return !authorize_held_ || shutting_down_;
  };
  // A held call waits for the release or the caller's deadline (then the caller has given up).
  if (!mu_.AwaitWithDeadline(absl::Condition(&released), absl::FromChrono(ctx->deadline()))) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "held by the test");
  }
  *response = authorize_response_;
  return authorize_status_;
}

grpc::Status FakeController::Enroll(grpc::ServerContext* ctx, const v1::EnrollRequest* request,
                                    v1::EnrollResponse* response) {
  absl::MutexLock lock(&mu_);
  if (!ca_.has_value() || request->join_token() != token_) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "join token unknown or used");
  }
  absl::StatusOr<std::string> cert = tls::SignCsr(*ca_, request->csr_pem(), request->host_id());
  if (!cert.ok()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(cert.status().message()));
  }
  response->set_certificate_pem(*cert);
  response->set_ca_pem(ca_->cert_pem);
  return grpc::Status::OK;
}

grpc::Status FakeController::PolicyStream(
    grpc::ServerContext* ctx,
    grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream) {
  int session = 0;
  {
    absl::MutexLock lock(&mu_);
    session = ++sessions_;
    end_ = false;
  }
  bool reader_done = false;  // Guarded by mu_.
  std::thread reader([&] {
    v1::StreamRequest request;
    while (stream->Read(&request)) {
      absl::MutexLock lock(&mu_);
      inbox_.push_back({session, request});
    }
    absl::MutexLock lock(&mu_);
    reader_done = true;
  });
  while (true) {
    v1::StreamResponse out;
    {
      absl::MutexLock lock(&mu_);
      auto wake = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return !outbox_.empty() || end_ || reader_done || shutting_down_;
      };
      mu_.Await(absl::Condition(&wake));
      if (end_ || reader_done || shutting_down_) {
        end_ = false;
        break;
      }
      out = std::move(outbox_.front());
      outbox_.pop_front();
    }
    if (!stream->Write(out)) break;
  }
  ctx->TryCancel();  // Unblocks the reader if the agent is still connected.
  reader.join();
  return grpc::Status::OK;
}

}  // namespace shuttle::agent::testing
