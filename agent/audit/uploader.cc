#include "agent/audit/uploader.h"

#include <utility>

#include <grpcpp/create_channel.h>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace shuttle::agent {
namespace {

int Millis(absl::Duration d) { return static_cast<int>(absl::ToInt64Milliseconds(d)); }

}  // namespace

AuditUploader::AuditUploader(AuditUploaderOptions options, AuditSpool& spool,
                             prometheus::Registry& registry)
    : options_(std::move(options)),
      spool_(spool),
      uploaded_(prometheus::BuildCounter()
                    .Name("shuttle_agent_audit_uploaded_total")
                    .Help("Audit records the controller acknowledged")
                    .Register(registry)
                    .Add({})),
      batches_(prometheus::BuildCounter()
                   .Name("shuttle_agent_audit_upload_batches_total")
                   .Help("Audit batches the controller acknowledged")
                   .Register(registry)
                   .Add({})),
      errors_(prometheus::BuildCounter()
                  .Name("shuttle_agent_audit_upload_errors_total")
                  .Help("Failed audit upload attempts (each retried after backoff)")
                  .Register(registry)
                  .Add({})) {}

AuditUploader::~AuditUploader() { Stop(); }

void AuditUploader::Start() {
  absl::MutexLock lock(&mu_);
  if (started_ || stopping_) return;
  started_ = true;
  thread_ = std::thread([this] { Run(); });
}

void AuditUploader::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    cancel_.store(true);
    if (context_ != nullptr) context_->TryCancel();
  }
  spool_.WakeWaiters();
  std::call_once(join_once_, [this] {
    if (thread_.joinable()) thread_.join();
  });
}

AuditUploaderState AuditUploader::state() const {
  absl::MutexLock lock(&mu_);
  return state_;
}

bool AuditUploader::WaitFor(const std::function<bool(const AuditUploaderState&)>& pred,
                            absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto holds = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return pred(state_); };
  return mu_.AwaitWithTimeout(absl::Condition(&holds), timeout);
}

std::unique_ptr<v1::AgentService::Stub> AuditUploader::NewStub() const {
  grpc::ChannelArguments args;
  // A channel of its own per connection attempt, so our backoff decides when to retry rather
  // than gRPC's reconnect backoff (up to 120 s) on a subchannel shared with the policy stream.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, Millis(options_.backoff.initial));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, Millis(options_.backoff.initial));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, Millis(options_.backoff.max));
  return v1::AgentService::NewStub(
      grpc::CreateCustomChannel(options_.controller_address, options_.credentials, args));
}

void AuditUploader::Run() {
  std::unique_ptr<v1::AgentService::Stub> stub = NewStub();
  Backoff backoff(options_.backoff, options_.random);
  uint64_t failures = 0;
  while (!cancel_.load()) {
    if (!spool_.WaitForRecords(1, 1, absl::InfiniteFuture(), cancel_)) continue;
    // Let a batch that is not full yet fill for a moment: one RPC instead of many small ones.
    if (options_.linger > absl::ZeroDuration()) {
      spool_.WaitForRecords(options_.max_batch_records, options_.max_batch_bytes,
                            absl::Now() + options_.linger, cancel_);
    }
    if (cancel_.load()) break;
    absl::Status status = UploadOnce(*stub);
    if (status.ok()) {
      if (failures > 0) {
        SHUTTLE_LOG(INFO) << "audit upload to " << options_.controller_address
                          << " works again after " << failures << " failed attempts";
      }
      failures = 0;
      backoff.Reset();
      continue;
    }
    if (cancel_.load()) break;  // Stop() cancelled the call: not a failure.
    ++failures;
    errors_.Increment();
    const absl::Duration delay = backoff.Next();
    // While the controller stays unreachable, say so at the first failure and every 10th.
    if (failures == 1 || failures % 10 == 0) {
      SHUTTLE_LOG(WARNING) << "audit upload to " << options_.controller_address << " failed ("
                           << status << "); " << spool_.stats().unacked_records
                           << " records wait in the spool; retrying in " << delay;
    }
    stub = NewStub();
    absl::MutexLock lock(&mu_);
    ++state_.errors;
    state_.last_error = status.ToString();
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), delay);
  }
}

absl::Status AuditUploader::UploadOnce(v1::AgentService::Stub& stub) {
  SHUTTLE_ASSIGN_OR_RETURN(AuditBatch batch,
                           spool_.ReadBatch(options_.max_batch_records, options_.max_batch_bytes));
  if (!batch.advances()) {
    return absl::InternalError(absl::StrCat("the audit spool reports ",
                                            spool_.stats().unacked_records,
                                            " records but none could be read"));
  }
  const size_t count = batch.records.size();
  if (count > 0) {
    v1::UploadAuditRequest request;
    request.mutable_records()->Reserve(static_cast<int>(count));
    for (v1::AuditRecord& record : batch.records) *request.add_records() = std::move(record);
    v1::UploadAuditResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return absl::CancelledError("stopping");
      context_ = &context;
    }
    grpc::Status sent = stub.UploadAudit(&context, request, &response);
    {
      absl::MutexLock lock(&mu_);
      context_ = nullptr;
    }
    if (!sent.ok()) {
      absl::Status status = FromGrpcStatus(sent);
      return absl::Status(status.code(),
                          absl::StrCat("UploadAudit of ", count, " records: ", status.message()));
    }
    if (response.accepted() + response.duplicates() != count) {
      SHUTTLE_LOG(WARNING) << "controller " << options_.controller_address << " answered "
                           << response.accepted() << " accepted + " << response.duplicates()
                           << " duplicates for a batch of " << count << " audit records";
    }
  }
  // Only now may the records go: a crash before this line sends them again, and the controller
  // stores each id once.
  SHUTTLE_RETURN_IF_ERROR(spool_.Acknowledge(batch));
  if (count > 0) {
    uploaded_.Increment(static_cast<double>(count));
    batches_.Increment();
  }
  absl::MutexLock lock(&mu_);
  if (count > 0) {
    ++state_.batches;
    state_.uploaded += count;
  }
  return absl::OkStatus();
}

}  // namespace shuttle::agent
