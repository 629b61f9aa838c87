// The controller's state behind one interface (DESIGN.md section 2): policies with their full
// revision history and the fleet policy version; join tokens and enrolled hosts; the audit log
// and the standing answers to `ask` (issue 4). SQLite
// (embedded, default) implements it now; PostgreSQL (several replicas) later, under the same test
// suite (store_test_suite.h). Every mutating call is one transaction: it either happens whole or
// not at all, also across a kill -9 of the process.
#ifndef SHUTTLE_CONTROLLER_STORE_STORE_H_
#define SHUTTLE_CONTROLLER_STORE_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "shuttle/v1/agent.pb.h"
#include "shuttle/v1/answers.pb.h"
#include "shuttle/v1/audit.pb.h"
#include "shuttle/v1/policy.pb.h"

namespace shuttle::controller {

// A change to write. `policy` must already be validated by the caller.
struct PolicyWrite {
  std::string name;    // Non-empty (else INVALID_ARGUMENT).
  std::string source;  // YAML as applied.
  v1::Policy policy;   // policy.name(), when set, must equal `name` (else INVALID_ARGUMENT).
  std::string author;
  std::string change;  // "apply", "rollback to 3".
  // When set, the write fails with ABORTED unless the current revision equals this (0 = none).
  // A deleted policy's current revision is 0. Checked before the "unchanged" shortcut, so a
  // stale writer always learns that it is stale.
  std::optional<uint64_t> expected_revision;
};

// A single-use join token as stored. The secret itself is never stored: only its SHA-256.
struct JoinToken {
  std::string secret_sha256;  // Lowercase hex SHA-256 of the token string; the key.
  std::string host_id;        // When non-empty, the token only enrolls this host id.
  absl::Time created;
  absl::Time expires;
  std::optional<absl::Time> used_at;  // Set once, by ConsumeJoinToken.
  std::string used_by;                // The host id that consumed it.
};

// An enrolled host as stored. Whether it is connected is not stored (it is the push manager's
// in-memory knowledge); everything else survives a controller restart.
struct HostRecord {
  std::string host_id;
  absl::Time first_seen;        // Enrollment.
  absl::Time last_seen;         // Last message on its policy stream (or enrollment).
  uint64_t acked_version = 0;   // Last fleet version the agent ACKed; 0 = none.
  uint64_t nack_version = 0;    // Version the last NACK said is still enforced; 0 if no NACK.
  uint64_t nacked_version = 0;  // Version of the push that was NACKed; 0 if no NACK.
  std::string nack_error;       // Empty if no NACK.
  std::optional<absl::Time> nack_time;
  std::vector<v1::VmInfo> vms;  // As last reported (Hello/Heartbeat).
};

// What PutAuditRecords did with a batch.
struct AuditPutResult {
  uint64_t accepted = 0;    // Records newly stored.
  uint64_t duplicates = 0;  // Records whose id was already stored (or repeated in the batch).
  // sequences[i]: the sequence number records[i] was stored under; 0 if it was a duplicate.
  std::vector<uint64_t> sequences;
};

// One page of audit records, oldest (lowest sequence) first.
struct AuditPage {
  std::vector<v1::AuditRecord> records;
  std::vector<uint64_t> sequences;  // sequences[i] belongs to records[i].
  std::string next_page_token;      // Empty when there are no more records (for now).
};

// Limits of QueryAudit.
inline constexpr uint32_t kDefaultAuditPageSize = 100;
inline constexpr uint32_t kMaxAuditPageSize = 10000;

// Thread-safe: every method may be called concurrently from gRPC handler threads.
class Store {
 public:
  virtual ~Store() = default;

  // Stores a new revision of `write.name` (revision = previous + 1) and bumps the fleet version.
  // If the source equals the current live revision's source, writes nothing and returns the
  // current revision with *unchanged = true (unchanged may be null).
  virtual absl::StatusOr<v1::PolicyRevision> PutPolicy(const PolicyWrite& write,
                                                       bool* unchanged) = 0;

  // Writes a tombstone revision (deleted, change "delete", empty source and policy) and bumps the
  // fleet version. NOT_FOUND if not live. Applying the name again continues its revisions.
  virtual absl::StatusOr<v1::PolicyRevision> DeletePolicy(const std::string& name,
                                                          const std::string& author) = 0;

  // revision 0 = current live revision. NOT_FOUND if absent (or deleted, for revision 0).
  // A stored revision that can't be read back (damaged data) is DATA_LOSS naming it; this holds
  // for every read below.
  virtual absl::StatusOr<v1::PolicyRevision> GetPolicy(const std::string& name,
                                                       uint64_t revision) = 0;

  // Current revision of every live policy, ordered by name.
  virtual absl::StatusOr<std::vector<v1::PolicyRevision>> ListPolicies() = 0;

  // Every revision of `name`, oldest first, tombstones included. NOT_FOUND if never existed.
  virtual absl::StatusOr<std::vector<v1::PolicyRevision>> PolicyHistory(
      const std::string& name) = 0;

  // The fleet policy version: bumped by every policy change; 0 for an empty store.
  virtual absl::StatusOr<uint64_t> FleetVersion() = 0;

  // --- Join tokens.

  // Stores a new unused token. INVALID_ARGUMENT if secret_sha256 is empty or expires <= created;
  // ALREADY_EXISTS if a token with that hash exists.
  virtual absl::Status CreateJoinToken(const JoinToken& token) = 0;

  // Consumes the token whose hash is `secret_sha256` for `host_id`, atomically: of any number of
  // concurrent (or repeated) calls for one token, at most one succeeds. Fails, consuming nothing,
  // with UNAUTHENTICATED "unknown join token" when absent; PERMISSION_DENIED "already used" when
  // used, "expired" when `now` >= expires, and "issued for host X" when the token names another
  // host. Returns the token as consumed (used_at = now, used_by = host_id).
  virtual absl::StatusOr<JoinToken> ConsumeJoinToken(const std::string& secret_sha256,
                                                     const std::string& host_id,
                                                     absl::Time now) = 0;

  // --- Hosts.

  // Inserts or replaces the host `record.host_id` (non-empty, else INVALID_ARGUMENT). A host that
  // exists keeps its stored first_seen whatever `record` says.
  virtual absl::Status PutHost(const HostRecord& record) = 0;

  // NOT_FOUND if the host never enrolled.
  virtual absl::StatusOr<HostRecord> GetHost(const std::string& host_id) = 0;

  // Every host, ordered by host id.
  virtual absl::StatusOr<std::vector<HostRecord>> ListHosts() = 0;

  // --- Audit log. Each stored record gets a sequence number: increasing in storage order, never
  // reused, the order of every query and what page tokens point at.

  // Stores a batch in one transaction, idempotent by record id: a record whose id is stored
  // already (or appeared earlier in the batch) is counted as a duplicate and not stored again.
  // INVALID_ARGUMENT, storing nothing, if any record has an empty id. The caller checks who may
  // write which records.
  virtual absl::StatusOr<AuditPutResult> PutAuditRecords(
      const std::vector<v1::AuditRecord>& records) = 0;

  // Records matching `filter` (audit.proto: host_id is the record's; vm the interaction's
  // subject or object VM; since compares record time at microsecond precision; verdict and kind
  // exact), in sequence order, at most `limit` (0: kDefaultAuditPageSize; more than
  // kMaxAuditPageSize is INVALID_ARGUMENT), after the record the opaque `page_token` (from an
  // earlier page's next_page_token; INVALID_ARGUMENT if malformed) points at.
  virtual absl::StatusOr<AuditPage> QueryAudit(const v1::AuditFilter& filter, uint32_t limit,
                                               const std::string& page_token) = 0;

  // --- Standing answers to `ask` (answers.proto). The store keeps them as given; validation,
  // ids, authorship and matching belong to the caller (controller/authz/answers.h).

  // Inserts the answer, or replaces the one with the same id. INVALID_ARGUMENT if the id is
  // empty; ALREADY_EXISTS naming the other id if an answer with another id has the same
  // selector (subject_vm, kind, object_vm, object). *replaced (may be null) says whether an
  // answer with this id existed.
  virtual absl::Status PutStandingAnswer(const v1::StandingAnswer& answer, bool* replaced) = 0;

  // Every answer, ordered by id.
  virtual absl::StatusOr<std::vector<v1::StandingAnswer>> ListStandingAnswers() = 0;

  // Removes the answer and returns it as it was; NOT_FOUND if there is none with this id.
  virtual absl::StatusOr<v1::StandingAnswer> DeleteStandingAnswer(const std::string& id) = 0;
};

using StorePtr = std::unique_ptr<Store>;

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_STORE_STORE_H_
