// How the agent asks the controller about an interaction an `ask` rule matched:
// AgentService.Authorize, asynchronously (the notification loop never waits for the network).
// Asker is the interface the decider uses (a fake in tests); GrpcAsker sends the RPC over the
// agent's mTLS credentials, with the asking rule's timeout as the deadline.
#ifndef SHUTTLE_AGENT_DECIDE_ASK_CLIENT_H_
#define SHUTTLE_AGENT_DECIDE_ASK_CLIENT_H_

#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/status.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "shuttle/v1/agent.grpc.pb.h"
#include "shuttle/v1/agent.pb.h"

namespace shuttle::agent {

class Asker {
 public:
  // The response, or the RPC's error (DEADLINE_EXCEEDED after `timeout`, UNAVAILABLE without a
  // connection, CANCELLED when the asker shuts down, or what the controller said).
  using Done = absl::AnyInvocable<void(absl::StatusOr<v1::AuthorizeResponse>) &&>;

  virtual ~Asker() = default;
  // Sends `request` with a deadline of `timeout` from now. Never blocks. `done` runs exactly
  // once, on a thread of the asker's choosing (possibly inline when the call can't be made);
  // it must not block either. Thread-safe.
  virtual void Authorize(v1::AuthorizeRequest request, absl::Duration timeout, Done done) = 0;
};

struct GrpcAskerOptions {
  std::string controller_address;  // "HOST:PORT"
  // Filled into requests whose interaction has no host_id.
  std::string host_id;
  // The agent's mTLS credentials (the PolicyClient's); tests may pass insecure ones.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // How soon a lost connection is tried again (gRPC's own default grows to 120 s, which would
  // keep asks failing long after the controller is back).
  absl::Duration initial_reconnect_backoff = absl::Milliseconds(200);
  absl::Duration max_reconnect_backoff = absl::Seconds(2);
};

// Thread-safe. One channel of its own (a local subchannel pool, so its reconnect backoff is its
// own), callback API: no thread of its own.
class GrpcAsker final : public Asker {
 public:
  explicit GrpcAsker(GrpcAskerOptions options);
  // Shutdown().
  ~GrpcAsker() override;
  GrpcAsker(const GrpcAsker&) = delete;
  GrpcAsker& operator=(const GrpcAsker&) = delete;

  void Authorize(v1::AuthorizeRequest request, absl::Duration timeout, Done done) override;

  // Cancels the calls in flight and waits until every `done` has returned; later Authorize()
  // calls get CANCELLED at once (inline). Call before destroying what the callbacks use (the
  // decider, the cache), and never from inside a `done`. Idempotent.
  void Shutdown();

  // Calls in flight (for tests and metrics).
  size_t inflight() const;

 private:
  struct Call;
  void Finished(Call* call, const grpc::Status& status);

  const GrpcAskerOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AgentService::Stub> stub_;

  mutable absl::Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<Call*, std::shared_ptr<Call>> calls_ ABSL_GUARDED_BY(mu_);
  size_t unfinished_ ABSL_GUARDED_BY(mu_) = 0;  // Calls whose completion has not returned.
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_DECIDE_ASK_CLIENT_H_
