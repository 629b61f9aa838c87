// Test-only: an in-process AgentService that implements Enroll, PolicyStream and Authorize, so
// the agent's client can be driven message by message. Requests land in an inbox the test waits
// on (absl::Mutex::AwaitWithTimeout, no sleeps); responses go out from an outbox the handler
// writes. One stream at a time. Authorize answers with what the test set, optionally held back
// until released or until the caller's deadline (to test timeouts without sleeping).
#ifndef SHUTTLE_AGENT_CLIENT_FAKE_CONTROLLER_H_
#define SHUTTLE_AGENT_CLIENT_FAKE_CONTROLLER_H_

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "shuttle/v1/agent.grpc.pb.h"

namespace shuttle::agent::testing {

class FakeController final : public v1::AgentService::Service {
 public:
  // Starts serving on 127.0.0.1:0 with insecure credentials.
  FakeController();
  ~FakeController() override;

  std::string address() const { return address_; }

  // Enroll signs CSRs with `ca` when the token equals `token`; otherwise PERMISSION_DENIED.
  void SetEnrollment(tls::CertAndKey ca, std::string token);

  // Queues a message for the open (or next) stream.
  void Send(v1::StreamResponse response);
  // Ends the open stream (cancels it: the sync API can't end a stream with a status while a
  // Read is pending); the agent sees it end and reconnects.
  void EndStream();

  // The next request the agent sent, skipping heartbeats unless `heartbeats`; nullopt after
  // `timeout`. `session` (if not null) receives the number of the stream it came on (1-based).
  std::optional<v1::StreamRequest> Next(absl::Duration timeout, bool heartbeats = false,
                                        int* session = nullptr);

  // Streams opened so far.
  int sessions() const;

  // Authorize answers `response` with status `status` (default: OK, an allow without ttl).
  void SetAuthorizeAnswer(v1::AuthorizeResponse response, grpc::Status status = grpc::Status::OK);
  // While held, Authorize calls wait (until ReleaseAuthorize() or their deadline, when the
  // caller gets DEADLINE_EXCEEDED) before answering.
  void HoldAuthorize();
  void ReleaseAuthorize();
  // Authorize requests received so far, in order.
  std::vector<v1::AuthorizeRequest> authorize_requests() const;
  // Waits until `n` Authorize requests have arrived (held ones included); false on timeout.
  bool WaitForAuthorize(size_t n, absl::Duration timeout) const;

  grpc::Status Enroll(grpc::ServerContext* ctx, const v1::EnrollRequest* request,
                      v1::EnrollResponse* response) override;
  grpc::Status PolicyStream(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<v1::StreamResponse, v1::StreamRequest>* stream) override;
  grpc::Status Authorize(grpc::ServerContext* ctx, const v1::AuthorizeRequest* request,
                         v1::AuthorizeResponse* response) override;

 private:
  struct Received {
    int session;
    v1::StreamRequest request;
  };

  std::unique_ptr<grpc::Server> server_;
  std::string address_;

  mutable absl::Mutex mu_;
  std::optional<tls::CertAndKey> ca_ ABSL_GUARDED_BY(mu_);
  std::string token_ ABSL_GUARDED_BY(mu_);
  std::deque<Received> inbox_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::StreamResponse> outbox_ ABSL_GUARDED_BY(mu_);
  bool end_ ABSL_GUARDED_BY(mu_) = false;
  int sessions_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  v1::AuthorizeResponse authorize_response_ ABSL_GUARDED_BY(mu_);
  grpc::Status authorize_status_ ABSL_GUARDED_BY(mu_);
  bool authorize_held_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<v1::AuthorizeRequest> authorize_requests_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shuttle::agent::testing

#endif  // SHUTTLE_AGENT_CLIENT_FAKE_CONTROLLER_H_
