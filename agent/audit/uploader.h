// Uploads the audit spool (spool.h) to the controller: one thread that waits for records,
// lets a batch fill for a short linger, reads up to 500 records (~1 MiB) from the acknowledged
// cursor, sends them with AgentService.UploadAudit under a deadline, and on success advances
// the cursor durably (which deletes fully acknowledged segments). Failures retry the same
// records after jittered exponential backoff. Records carry idempotent ids, so a crash between
// the upload and the cursor write only sends a batch twice, and the controller stores it once.
#ifndef SHUTTLE_AGENT_AUDIT_UPLOADER_H_
#define SHUTTLE_AGENT_AUDIT_UPLOADER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/client_context.h>
#include <grpcpp/security/credentials.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/audit/spool.h"
#include "agent/client/backoff.h"
#include "prometheus/counter.h"
#include "prometheus/registry.h"
#include "shuttle/v1/agent.grpc.pb.h"

namespace shuttle::agent {

struct AuditUploaderOptions {
  std::string controller_address;  // "HOST:PORT"
  // The agent's mTLS credentials (the PolicyClient's); tests may pass insecure ones.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  size_t max_batch_records = 500;
  uint64_t max_batch_bytes = 1 << 20;  // Payload bytes; a batch holds at least one record.
  // How long a batch that is not full waits for more records before it is sent.
  absl::Duration linger = absl::Milliseconds(200);
  absl::Duration rpc_timeout = absl::Seconds(10);  // Deadline of one UploadAudit.
  BackoffOptions backoff{absl::Milliseconds(200), absl::Seconds(30), 2.0};
  // Uniform [0, 1) for the backoff's jitter; empty: absl::BitGen.
  std::function<double()> random;
};

// What the uploader has done (for tests and logs; the metrics say the same).
struct AuditUploaderState {
  uint64_t batches = 0;   // Batches the controller stored.
  uint64_t uploaded = 0;  // Records in them.
  uint64_t errors = 0;    // Failed attempts (RPC or cursor write).
  std::string last_error;
};

// Thread-safe. `spool` and `registry` must outlive the uploader. Metrics:
//   shuttle_agent_audit_uploaded_total        records the controller acknowledged
//   shuttle_agent_audit_upload_batches_total  batches the controller acknowledged
//   shuttle_agent_audit_upload_errors_total   failed attempts (each retried after backoff)
class AuditUploader {
 public:
  AuditUploader(AuditUploaderOptions options, AuditSpool& spool, prometheus::Registry& registry);
  // Stops (see Stop()).
  ~AuditUploader();
  AuditUploader(const AuditUploader&) = delete;
  AuditUploader& operator=(const AuditUploader&) = delete;

  // Starts the upload thread. Call once.
  void Start();
  // Cancels the upload in flight and joins the thread; returns promptly (no wait for the
  // controller). Records not acknowledged stay in the spool for the next run. Idempotent.
  void Stop();

  AuditUploaderState state() const;
  // Waits until `pred(state())` holds or `timeout` passes; returns whether it holds.
  bool WaitFor(const std::function<bool(const AuditUploaderState&)>& pred,
               absl::Duration timeout) const;

 private:
  void Run();
  // A stub on a fresh channel (after a failure, so a reconnect is not held back by gRPC's own
  // reconnect backoff).
  std::unique_ptr<v1::AgentService::Stub> NewStub() const;
  // Sends one batch and acknowledges it in the spool.
  absl::Status UploadOnce(v1::AgentService::Stub& stub);

  const AuditUploaderOptions options_;
  AuditSpool& spool_;
  prometheus::Counter& uploaded_;
  prometheus::Counter& batches_;
  prometheus::Counter& errors_;

  std::atomic<bool> cancel_{false};  // Mirrors stopping_ for the spool's waits.
  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;  // Upload in flight.
  AuditUploaderState state_ ABSL_GUARDED_BY(mu_);
  std::once_flag join_once_;
  std::thread thread_;
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_AUDIT_UPLOADER_H_
