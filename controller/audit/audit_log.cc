#include "controller/audit/audit_log.h"

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"

namespace shuttle::controller {

using ::google::protobuf::util::TimeUtil;

bool AuditFilterMatches(const v1::AuditFilter& filter, const v1::AuditRecord& record) {
  const v1::Interaction& interaction = record.interaction();
  if (!filter.host_id().empty() && filter.host_id() != record.host_id()) return false;
  if (!filter.vm().empty() && filter.vm() != interaction.subject_vm() &&
      filter.vm() != interaction.object_vm()) {
    return false;
  }
  if (filter.has_since() && TimeUtil::TimestampToMicroseconds(record.time()) <
                                TimeUtil::TimestampToMicroseconds(filter.since())) {
    return false;
  }
  if (filter.verdict() != v1::VERDICT_UNSPECIFIED &&
      filter.verdict() != record.decision().verdict()) {
    return false;
  }
  return filter.kind() == v1::INTERACTION_KIND_UNSPECIFIED || filter.kind() == interaction.kind();
}

AuditLog::AuditLog(Store& store, prometheus::Registry& metrics, AuditLogOptions options)
    : store_(store),
      options_(options),
      ingested_(prometheus::BuildCounter()
                    .Name("shuttle_controller_audit_records_ingested_total")
                    .Help("Audit records uploaded by agents and newly stored")
                    .Register(metrics)
                    .Add({})),
      duplicates_(prometheus::BuildCounter()
                      .Name("shuttle_controller_audit_duplicates_total")
                      .Help("Audit records uploaded again (same id) and not stored again")
                      .Register(metrics)
                      .Add({})),
      followers_(prometheus::BuildGauge()
                     .Name("shuttle_controller_audit_followers")
                     .Help("AuditService.Follow streams open now")
                     .Register(metrics)
                     .Add({})) {}

absl::StatusOr<v1::UploadAuditResponse> AuditLog::Ingest(const std::string& host_id,
                                                         const v1::UploadAuditRequest& request) {
  const size_t n = static_cast<size_t>(request.records_size());
  if (n > options_.max_batch) {
    return absl::InvalidArgumentError(absl::StrCat("a batch of ", n, " audit records is more than ",
                                                   options_.max_batch, "; upload smaller batches"));
  }
  for (size_t i = 0; i < n; ++i) {
    const v1::AuditRecord& r = request.records(static_cast<int>(i));
    if (r.id().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("audit record #", i, " has no id"));
    }
    if (r.id().size() > options_.max_id_length) {
      return absl::InvalidArgumentError(absl::StrCat("audit record #", i, " has an id of ",
                                                     r.id().size(), " bytes, more than ",
                                                     options_.max_id_length));
    }
    const std::string& interaction_host = r.interaction().host_id();
    if (r.host_id() != host_id || (!interaction_host.empty() && interaction_host != host_id)) {
      return absl::PermissionDeniedError(
          absl::StrCat("audit record #", i, " (id '", absl::CHexEscape(r.id()), "') is from host '",
                       absl::CHexEscape(r.host_id() != host_id ? r.host_id() : interaction_host),
                       "' but the certificate names host '", host_id,
                       "': an agent uploads only its own host's records; nothing was stored"));
    }
  }
  std::vector<v1::AuditRecord> records(request.records().begin(), request.records().end());

  absl::MutexLock ingest(&ingest_mu_);
  SHUTTLE_ASSIGN_OR_RETURN(AuditPutResult result, store_.PutAuditRecords(records));
  ingested_.Increment(static_cast<double>(result.accepted));
  duplicates_.Increment(static_cast<double>(result.duplicates));
  {
    absl::MutexLock lock(&subscribers_mu_);
    if (!subscribers_.empty()) {
      for (size_t i = 0; i < records.size(); ++i) {
        if (result.sequences[i] == 0) continue;  // A duplicate: followers saw it already.
        for (const auto& [subscriber, filter] : subscribers_) {
          if (AuditFilterMatches(filter, records[i])) {
            subscriber->OnAuditRecord(records[i], result.sequences[i]);
          }
        }
      }
    }
  }
  v1::UploadAuditResponse response;
  response.set_accepted(result.accepted);
  response.set_duplicates(result.duplicates);
  return response;
}

absl::StatusOr<AuditPage> AuditLog::Query(const v1::AuditFilter& filter, uint32_t limit,
                                          const std::string& page_token) {
  return store_.QueryAudit(filter, limit, page_token);
}

void AuditLog::Subscribe(const v1::AuditFilter& filter, AuditSubscriber* subscriber) {
  absl::MutexLock lock(&subscribers_mu_);
  subscribers_[subscriber] = filter;
  followers_.Set(static_cast<double>(subscribers_.size()));
  if (closed_) subscriber->OnAuditLogClosed();
}

void AuditLog::Unsubscribe(AuditSubscriber* subscriber) {
  absl::MutexLock lock(&subscribers_mu_);
  subscribers_.erase(subscriber);
  followers_.Set(static_cast<double>(subscribers_.size()));
}

void AuditLog::Close() {
  absl::MutexLock lock(&subscribers_mu_);
  if (closed_) return;
  closed_ = true;
  for (const auto& [subscriber, filter] : subscribers_) subscriber->OnAuditLogClosed();
}

}  // namespace shuttle::controller
