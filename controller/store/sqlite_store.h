// The controller's default Store: one embedded SQLite file in the data directory (DESIGN.md
// section 2), nothing to install or start. The schema is versioned: an ordered list of migrations
// is applied on open, each in its own transaction, so later features add tables by appending one.
//
// Durability: WAL journal with synchronous=FULL. A call that returned OK has its commit record
// fsync'ed in the WAL, so it survives a kill -9 of the controller and also a power loss or kernel
// crash (WAL+NORMAL would survive only the former). Policy changes are operator-paced, so one
// fsync per change costs nothing that matters.
//
// Needs SQLite >= 3.37 (STRICT tables), also for tools that open the file.
#ifndef SHUTTLE_CONTROLLER_STORE_SQLITE_STORE_H_
#define SHUTTLE_CONTROLLER_STORE_SQLITE_STORE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "controller/store/store.h"

struct sqlite3;

namespace shuttle::controller {

// One step of the schema. `version`s of a migration list are 1, 2, 3, ... in order; a migration,
// once released, is never edited: change the schema by appending a new one.
struct SqliteMigration {
  int version;
  absl::string_view name;
  // One or more SQL statements. Runs inside the migration's IMMEDIATE transaction with foreign
  // keys on, together with the insert of its schema_migrations row: applied whole or not at all.
  absl::string_view sql;
};

// The schema this build knows, oldest first. Static storage; never empty.
std::span<const SqliteMigration> SqliteMigrations();

struct SqliteStoreOptions {
  // How long a statement waits for another connection's lock before failing with UNAVAILABLE.
  absl::Duration busy_timeout = absl::Seconds(5);
  // WAL pages after which a commit checkpoints the WAL into the database (SQLite's default 1000).
  int wal_autocheckpoint_pages = 1000;
  // The schema to bring the database to. Tests substitute other lists; production keeps this.
  std::span<const SqliteMigration> migrations = SqliteMigrations();
};

// The per-connection settings that durability and integrity rely on, as SQLite reports them.
struct SqliteConnectionSettings {
  std::string journal_mode;  // "wal"
  int synchronous = 0;       // 2 = FULL
  bool foreign_keys = false;
  int busy_timeout_ms = 0;
};

// A Store on one SQLite connection. Thread-safe: one mutex serialises every call on the
// connection (SQLite runs one writer at a time anyway). Several SqliteStore objects, also in
// several processes, may open the same file: each mutating call is one IMMEDIATE transaction that
// reads and writes under the database's write lock, so revisions and fleet versions stay unique
// and contiguous.
class SqliteStore final : public Store {
 public:
  // Opens (creating with mode 0600 if absent) the database at `path`, sets WAL, synchronous=FULL,
  // foreign keys and the busy timeout, and applies the pending migrations of
  // `options.migrations`. Fails, naming the path and SQLite's message, when the file can't be
  // opened or written, is not a database or not a Shuttle one, is corrupt, or has a schema newer
  // than `options.migrations` (FAILED_PRECONDITION: this build is too old for the file).
  // `clock` stamps the creation time of revisions; it must outlive the store.
  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(const std::string& path, Clock& clock,
                                                           const SqliteStoreOptions& options = {});

  ~SqliteStore() override;
  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

  absl::StatusOr<v1::PolicyRevision> PutPolicy(const PolicyWrite& write, bool* unchanged) override;
  absl::StatusOr<v1::PolicyRevision> DeletePolicy(const std::string& name,
                                                  const std::string& author) override;
  absl::StatusOr<v1::PolicyRevision> GetPolicy(const std::string& name, uint64_t revision) override;
  absl::StatusOr<std::vector<v1::PolicyRevision>> ListPolicies() override;
  absl::StatusOr<std::vector<v1::PolicyRevision>> PolicyHistory(const std::string& name) override;
  absl::StatusOr<uint64_t> FleetVersion() override;
  absl::Status CreateJoinToken(const JoinToken& token) override;
  absl::StatusOr<JoinToken> ConsumeJoinToken(const std::string& secret_sha256,
                                             const std::string& host_id, absl::Time now) override;
  absl::Status PutHost(const HostRecord& record) override;
  absl::StatusOr<HostRecord> GetHost(const std::string& host_id) override;
  absl::StatusOr<std::vector<HostRecord>> ListHosts() override;
  absl::StatusOr<AuditPutResult> PutAuditRecords(
      const std::vector<v1::AuditRecord>& records) override;
  absl::StatusOr<AuditPage> QueryAudit(const v1::AuditFilter& filter, uint32_t limit,
                                       const std::string& page_token) override;
  absl::Status PutStandingAnswer(const v1::StandingAnswer& answer, bool* replaced) override;
  absl::StatusOr<std::vector<v1::StandingAnswer>> ListStandingAnswers() override;
  absl::StatusOr<v1::StandingAnswer> DeleteStandingAnswer(const std::string& id) override;

  // Runs PRAGMA integrity_check and foreign_key_check over the whole file; DATA_LOSS listing the
  // first problems if either finds any. Reads every page: for tests and operator tools, not for
  // request paths.
  absl::Status CheckIntegrity();

  // The schema version (highest applied migration).
  absl::StatusOr<int> SchemaVersion();

  // Reads back the connection's settings (for tests and diagnostics).
  absl::StatusOr<SqliteConnectionSettings> Settings();

  const std::string& path() const { return path_; }

 private:
  SqliteStore(std::string path, Clock& clock, sqlite3* db);

  // The helpers below expect mu_ held.
  absl::Status Error(absl::string_view what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Configure(const SqliteStoreOptions& options) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Migrate(std::span<const SqliteMigration> migrations)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::PolicyRevision> AppendRevision(v1::PolicyRevision revision)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  Clock& clock_;  // Not owned.
  mutable absl::Mutex mu_;
  sqlite3* const db_ ABSL_GUARDED_BY(mu_);  // Owned; closed by the destructor.
};

// The factory the controller uses: SqliteStore::Open with default options.
absl::StatusOr<StorePtr> OpenSqliteStore(const std::string& path, Clock& clock);

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_STORE_SQLITE_STORE_H_
