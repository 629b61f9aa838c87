// The controller's audit log (DESIGN.md section 2, issue 4): checks and stores the batches agents
// upload (idempotent by record id), answers queries, and hands every newly stored record to the
// followers whose filter it matches (AuditService.Follow). Without gRPC, so the rules are tested
// without a server; the thin handlers live in controller/service/.
#ifndef SHUTTLE_CONTROLLER_AUDIT_AUDIT_LOG_H_
#define SHUTTLE_CONTROLLER_AUDIT_AUDIT_LOG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "controller/store/store.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "shuttle/v1/agent.pb.h"
#include "shuttle/v1/audit.pb.h"

namespace shuttle::controller {

// True if `record` passes `filter` with the store's semantics (store.h, QueryAudit): host_id the
// record's, vm the subject's or the object's, since at microsecond precision, verdict and kind
// exact; unset fields match anything.
bool AuditFilterMatches(const v1::AuditFilter& filter, const v1::AuditRecord& record);

// Receives the records a follower asked for. Implemented by AuditService.Follow's reactor.
class AuditSubscriber {
 public:
  virtual ~AuditSubscriber() = default;
  // A newly stored record that matches the subscriber's filter, and its store sequence number.
  // Called on the ingesting thread with the log's subscriber lock held, in storage order: must
  // not block and must not call into the AuditLog.
  virtual void OnAuditRecord(const v1::AuditRecord& record, uint64_t sequence) = 0;
  // The log is closing (controller shutdown): nothing more will come. Same rules as above.
  virtual void OnAuditLogClosed() = 0;
};

struct AuditLogOptions {
  size_t max_batch = 5000;     // Records per upload; more is INVALID_ARGUMENT.
  size_t max_id_length = 256;  // Bytes of a record id.
};

// Thread-safe.
class AuditLog {
 public:
  // `store` is borrowed and must outlive the log. Metrics:
  //   shuttle_controller_audit_records_ingested_total   records newly stored
  //   shuttle_controller_audit_duplicates_total         uploaded again (by id), not stored again
  //   shuttle_controller_audit_followers                subscribers now
  AuditLog(Store& store, prometheus::Registry& metrics, AuditLogOptions options = {});

  // Stores the batch uploaded by the agent whose certificate names `host_id`. Nothing is stored
  // unless every record passes: INVALID_ARGUMENT for more than max_batch records or a record
  // without an id (or a longer one than max_id_length); PERMISSION_DENIED naming the record and
  // both hosts when a record's host_id, or its interaction's host_id when set, is not `host_id`
  // (an agent uploads only its own host's decisions). Then hands the new records to matching
  // subscribers. Blocking (store write): call from an executor, not a gRPC thread.
  absl::StatusOr<v1::UploadAuditResponse> Ingest(const std::string& host_id,
                                                 const v1::UploadAuditRequest& request);

  // Store::QueryAudit. Blocking.
  absl::StatusOr<AuditPage> Query(const v1::AuditFilter& filter, uint32_t limit,
                                  const std::string& page_token);

  // From now on, `subscriber` receives every newly stored record that matches `filter`, until
  // Unsubscribe. If the log is closed already, OnAuditLogClosed is called at once. Never blocks
  // for long (takes the subscriber lock).
  void Subscribe(const v1::AuditFilter& filter, AuditSubscriber* subscriber);
  // After this returns, `subscriber` is not called again and may be destroyed. Waits for a
  // delivery in progress. No-op for an unknown subscriber.
  void Unsubscribe(AuditSubscriber* subscriber);

  // Tells every subscriber (and later ones) that the log is closing. Idempotent.
  void Close();

 private:
  Store& store_;
  const AuditLogOptions options_;
  prometheus::Counter& ingested_;
  prometheus::Counter& duplicates_;
  prometheus::Gauge& followers_;

  // Held across storing a batch and delivering it, so followers see records in storage order.
  absl::Mutex ingest_mu_ ABSL_ACQUIRED_BEFORE(subscribers_mu_);
  absl::Mutex subscribers_mu_;
  absl::flat_hash_map<AuditSubscriber*, v1::AuditFilter> subscribers_
      ABSL_GUARDED_BY(subscribers_mu_);
  bool closed_ ABSL_GUARDED_BY(subscribers_mu_) = false;
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_AUDIT_AUDIT_LOG_H_
