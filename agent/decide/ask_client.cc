// GrpcAsker (ask_client.h): AgentService.Authorize over the callback API, with cancellation
// on shutdown.
#include "agent/decide/ask_client.h"

#include <utility>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/support/channel_arguments.h>

#include "common/grpc_status.h"

namespace shuttle::agent {
namespace {

int Millis(absl::Duration d) { return static_cast<int>(absl::ToInt64Milliseconds(d)); }

}  // namespace

// One Authorize in the air. Owned by calls_; Shutdown() holds a reference while it cancels, so
// that cancelling never races the completion that destroys it.
struct GrpcAsker::Call {
  grpc::ClientContext context;
  v1::AuthorizeRequest request;
  v1::AuthorizeResponse response;
  Done done;
};

GrpcAsker::GrpcAsker(GrpcAskerOptions options) : options_(std::move(options)) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, Millis(options_.initial_reconnect_backoff));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, Millis(options_.initial_reconnect_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, Millis(options_.max_reconnect_backoff));
  channel_ = grpc::CreateCustomChannel(options_.controller_address, options_.credentials, args);
  stub_ = v1::AgentService::NewStub(channel_);
}

GrpcAsker::~GrpcAsker() { Shutdown(); }

void GrpcAsker::Authorize(v1::AuthorizeRequest request, absl::Duration timeout, Done done) {
  auto call = std::make_shared<Call>();
  call->request = std::move(request);
  if (call->request.interaction().host_id().empty()) {
    call->request.mutable_interaction()->set_host_id(options_.host_id);
  }
  call->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  bool refused = false;
  {
    absl::MutexLock lock(&mu_);
    refused = shutdown_;
    if (!refused) {
      calls_.emplace(call.get(), call);
      ++unfinished_;
    }
  }
  if (refused) {
    std::move(done)(absl::CancelledError("the agent is shutting down"));
    return;
  }
  call->done = std::move(done);
  Call* raw = call.get();
  call.reset();  // calls_ owns it now.
  // The callback may run on a gRPC thread or, when the call fails at once, inline.
  stub_->async()->Authorize(&raw->context, &raw->request, &raw->response,
                            [this, raw](grpc::Status status) { Finished(raw, status); });
}

void GrpcAsker::Finished(Call* call, const grpc::Status& status) {
  absl::StatusOr<v1::AuthorizeResponse> result =
      status.ok() ? absl::StatusOr<v1::AuthorizeResponse>(std::move(call->response))
                  : absl::StatusOr<v1::AuthorizeResponse>(FromGrpcStatus(status));
  std::move(call->done)(std::move(result));
  std::shared_ptr<Call> owned;
  {
    absl::MutexLock lock(&mu_);
    auto it = calls_.find(call);
    owned = std::move(it->second);
    calls_.erase(it);
  }
  // Usually the last reference: the call's context (which holds the channel) goes now, while
  // the asker still holds the channel. gRPC must never drop its last channel reference on one
  // of its callback threads (that thread would then try to join itself, grpc/grpc#32584), so
  // Shutdown() waits for this point, not just for the answer.
  owned.reset();
  absl::MutexLock lock(&mu_);
  --unfinished_;
}

void GrpcAsker::Shutdown() {
  std::vector<std::shared_ptr<Call>> in_flight;
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
    for (const auto& [raw, call] : calls_) in_flight.push_back(call);
  }
  // Outside the lock: cancelling may run a completion inline, which takes it. Our references
  // keep each context alive, and cancelling a finished call does nothing.
  for (const std::shared_ptr<Call>& call : in_flight) call->context.TryCancel();
  in_flight.clear();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](size_t* unfinished) { return *unfinished == 0; }, &unfinished_));
}

size_t GrpcAsker::inflight() const {
  absl::MutexLock lock(&mu_);
  return unfinished_;
}

}  // namespace shuttle::agent
