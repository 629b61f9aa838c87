#include "controller/store/sqlite_store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "shuttle/v1/fleet.pb.h"

namespace shuttle::controller {
namespace {

using ::google::protobuf::util::TimeUtil;

// PRAGMA application_id of a Shuttle controller database ("SHUT"), so a file of another program
// (which may well have its own schema_migrations table) is refused instead of migrated.
constexpr int32_t kApplicationId = 0x53485554;

// Tables use STRICT (SQLite >= 3.37) so a value of the wrong type is refused when written.
constexpr int kMinSqliteVersion = 3'037'000;
// Times are Unix microseconds (what PostgreSQL's timestamptz keeps too).
constexpr SqliteMigration kMigrations[] = {
    {1, "policies",
     R"sql(
CREATE TABLE fleet (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  version INTEGER NOT NULL CHECK (version >= 0)
) STRICT;
INSERT INTO fleet (id, version) VALUES (1, 0);

-- Every revision of every policy, tombstones included. The live revision of a policy is its
-- highest one, unless that is a tombstone.
CREATE TABLE policy_revisions (
  name TEXT NOT NULL CHECK (name <> ''),
  revision INTEGER NOT NULL CHECK (revision >= 1),
  fleet_version INTEGER NOT NULL UNIQUE CHECK (fleet_version >= 1),
  source TEXT NOT NULL,
  policy BLOB NOT NULL,  -- shuttle.v1.Policy, serialized; empty for a tombstone.
  created_unix_micros INTEGER NOT NULL,
  author TEXT NOT NULL,
  change TEXT NOT NULL,
  deleted INTEGER NOT NULL CHECK (deleted IN (0, 1)),
  PRIMARY KEY (name, revision)
) STRICT;
)sql"},
    {2, "join_tokens_and_hosts",
     R"sql(
-- Single-use enrollment tokens. Only the SHA-256 of the secret is kept, so a copy of the file
-- does not enroll anything.
CREATE TABLE join_tokens (
  secret_sha256 TEXT PRIMARY KEY CHECK (length(secret_sha256) = 64),
  host_id TEXT NOT NULL,  -- '' = any host.
  created_unix_micros INTEGER NOT NULL,
  expires_unix_micros INTEGER NOT NULL,
  used_unix_micros INTEGER,  -- NULL until consumed.
  used_by TEXT NOT NULL DEFAULT ''
) STRICT;

-- Enrolled hosts and what they last reported on their policy stream.
CREATE TABLE hosts (
  host_id TEXT PRIMARY KEY CHECK (host_id <> ''),
  first_seen_unix_micros INTEGER NOT NULL,
  last_seen_unix_micros INTEGER NOT NULL,
  acked_version INTEGER NOT NULL CHECK (acked_version >= 0),
  nack_version INTEGER NOT NULL CHECK (nack_version >= 0),
  nacked_version INTEGER NOT NULL CHECK (nacked_version >= 0),
  nack_error TEXT NOT NULL,
  nack_unix_micros INTEGER,  -- NULL if never NACKed.
  vms BLOB NOT NULL  -- shuttle.v1.ListHostsResponse holding one HostStatus with only vms set.
) STRICT;
)sql"},
    {3, "audit_log",
     R"sql(
-- The audit log: one row per decision an agent uploaded. seq is the order of storage (never
-- reused: AUTOINCREMENT), what queries sort by and page tokens point at. The record is kept
-- whole; the columns beside it exist to filter on, each with an index that ends in seq so a
-- filtered page is read in order.
CREATE TABLE audit_records (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE CHECK (id <> ''),  -- The agent's idempotency key.
  time_unix_micros INTEGER NOT NULL,         -- When the decision was made (agent clock).
  host_id TEXT NOT NULL,
  subject_vm TEXT NOT NULL,
  object_vm TEXT NOT NULL,
  verdict INTEGER NOT NULL,  -- shuttle.v1.Verdict
  kind INTEGER NOT NULL,     -- shuttle.v1.InteractionKind
  ingested_unix_micros INTEGER NOT NULL,
  record BLOB NOT NULL       -- shuttle.v1.AuditRecord, serialized.
) STRICT;
CREATE INDEX audit_records_host ON audit_records (host_id, seq);
CREATE INDEX audit_records_subject_vm ON audit_records (subject_vm, seq);
CREATE INDEX audit_records_object_vm ON audit_records (object_vm, seq);
CREATE INDEX audit_records_time ON audit_records (time_unix_micros, seq);
CREATE INDEX audit_records_verdict ON audit_records (verdict, seq);
CREATE INDEX audit_records_kind ON audit_records (kind, seq);
)sql"},
    {4, "standing_answers",
     R"sql(
-- Standing answers to `ask` rules. The selector columns are unique together: one answer per
-- (subject VM, kind, object VM, object pattern).
CREATE TABLE standing_answers (
  id TEXT PRIMARY KEY CHECK (id <> ''),
  subject_vm TEXT NOT NULL,
  kind INTEGER NOT NULL,
  object_vm TEXT NOT NULL,
  object TEXT NOT NULL,
  answer BLOB NOT NULL,  -- shuttle.v1.StandingAnswer, serialized.
  UNIQUE (subject_vm, kind, object_vm, object)
) STRICT;
)sql"},
};

constexpr char kRevisionColumns[] =
    "name, revision, fleet_version, source, policy, created_unix_micros, author, change, deleted";

absl::StatusCode CodeForSqlite(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return absl::StatusCode::kFailedPrecondition;
    default:
      return absl::StatusCode::kInternal;
  }
}

std::string Quote(absl::string_view s) { return absl::StrCat("\"", s, "\""); }

// The connection and the file it is on, for error messages. Not owning.
struct Db {
  sqlite3* handle;
  absl::string_view path;

  // A status for the last failed call on `handle`: the path, what we were doing, and SQLite's own
  // message (sqlite3_errmsg) with its extended code.
  absl::Status Error(absl::string_view what) const {
    int rc = sqlite3_extended_errcode(handle);
    return absl::Status(CodeForSqlite(rc),
                        absl::StrCat("SQLite store ", path, ": ", what, ": ",
                                     sqlite3_errmsg(handle), " (code ", rc, ")"));
  }

  absl::Status Status(absl::StatusCode code, absl::string_view message) const {
    return absl::Status(code, absl::StrCat("SQLite store ", path, ": ", message));
  }

  absl::Status Exec(const char* sql, absl::string_view what) const {
    if (sqlite3_exec(handle, sql, nullptr, nullptr, nullptr) != SQLITE_OK) return Error(what);
    return absl::OkStatus();
  }
};

// One prepared statement. Bind errors are remembered and reported by the first Step().
class Statement {
 public:
  Statement(Db db, std::string sql) : db_(db), sql_(std::move(sql)) {
    if (sqlite3_prepare_v2(db.handle, sql_.c_str(), static_cast<int>(sql_.size() + 1), &stmt_,
                           nullptr) != SQLITE_OK) {
      status_ = db_.Error(What("prepare"));
    }
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  // Binds parameter `i` (1-based).
  Statement& BindInt(int i, int64_t value) {
    return Check(stmt_ == nullptr ? SQLITE_OK : sqlite3_bind_int64(stmt_, i, value));
  }
  Statement& BindText(int i, absl::string_view value) {
    return Check(stmt_ == nullptr ? SQLITE_OK
                                  : sqlite3_bind_text64(stmt_, i, value.data(), value.size(),
                                                        SQLITE_TRANSIENT, SQLITE_UTF8));
  }
  Statement& BindBlob(int i, absl::string_view value) {
    // A non-null pointer even for an empty value: SQLite binds a null pointer as NULL.
    const char* data = value.empty() ? "" : value.data();
    return Check(stmt_ == nullptr
                     ? SQLITE_OK
                     : sqlite3_bind_blob64(stmt_, i, data, value.size(), SQLITE_TRANSIENT));
  }

  // True when a row is ready, false when the statement is done.
  absl::StatusOr<bool> Step() {
    SHUTTLE_RETURN_IF_ERROR(status_);
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    status_ = db_.Error(What("step"));
    return status_;
  }
  // Makes the statement ready to run again with new bindings (the old ones are cleared).
  void Reset() {
    if (stmt_ == nullptr) return;
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  // Runs a statement that returns no rows (or whose rows don't matter).
  absl::Status Run() {
    for (;;) {
      SHUTTLE_ASSIGN_OR_RETURN(bool row, Step());
      if (!row) return absl::OkStatus();
    }
  }

  int Type(int col) const { return sqlite3_column_type(stmt_, col); }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) const {
    const unsigned char* text = sqlite3_column_text(stmt_, col);
    if (text == nullptr) return "";
    return std::string(reinterpret_cast<const char*>(text),
                       static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  absl::string_view Blob(int col) const {
    const void* blob = sqlite3_column_blob(stmt_, col);
    if (blob == nullptr) return {};
    return absl::string_view(static_cast<const char*>(blob),
                             static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }

 private:
  std::string What(absl::string_view action) const {
    constexpr size_t kMaxSql = 60;
    absl::string_view sql = sql_;
    sql.remove_prefix(std::min(sql.size(), sql.find_first_not_of(" \n")));
    if (sql.size() > kMaxSql) return absl::StrCat(action, " \"", sql.substr(0, kMaxSql), "...\"");
    return absl::StrCat(action, " \"", sql, "\"");
  }
  Statement& Check(int rc) {
    if (rc != SQLITE_OK && status_.ok()) status_ = db_.Error(What("bind"));
    return *this;
  }

  Db db_;
  std::string sql_;
  sqlite3_stmt* stmt_ = nullptr;
  absl::Status status_;
};

// Runs a query that returns exactly one integer.
absl::StatusOr<int64_t> QueryInt(Db db, absl::string_view sql) {
  Statement s(db, std::string{sql});
  SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row || s.Type(0) != SQLITE_INTEGER) {
    return db.Status(absl::StatusCode::kInternal, absl::StrCat("\"", sql, "\" gave no integer"));
  }
  return s.Int(0);
}

// An IMMEDIATE transaction: takes the database's write lock at BEGIN, so everything read inside
// it is still current at COMMIT. Rolled back on destruction unless committed.
class Transaction {
 public:
  explicit Transaction(Db db) : db_(db) {}
  ~Transaction() {
    if (!begun_ || committed_ || sqlite3_get_autocommit(db_.handle)) return;
    if (sqlite3_exec(db_.handle, "ROLLBACK", nullptr, nullptr, nullptr) != SQLITE_OK) {
      SHUTTLE_LOG(ERROR) << db_.Error("rollback");
    }
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  absl::Status Begin() {
    SHUTTLE_RETURN_IF_ERROR(db_.Exec("BEGIN IMMEDIATE", "begin transaction"));
    begun_ = true;
    return absl::OkStatus();
  }
  // Once this returns OK the change is durable (synchronous=FULL).
  absl::Status Commit() {
    SHUTTLE_RETURN_IF_ERROR(db_.Exec("COMMIT", "commit"));
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  Db db_;
  bool begun_ = false;
  bool committed_ = false;
};

google::protobuf::Timestamp TimestampFromMicros(int64_t micros) {
  constexpr int64_t kMicrosPerSecond = 1'000'000;
  int64_t seconds = micros / kMicrosPerSecond;
  int64_t rest = micros % kMicrosPerSecond;
  if (rest < 0) {
    rest += kMicrosPerSecond;
    --seconds;
  }
  google::protobuf::Timestamp ts;
  ts.set_seconds(seconds);
  ts.set_nanos(static_cast<int32_t>(rest * 1000));
  return ts;
}

// Reads one row selected as kRevisionColumns. A row that a sound database can't hold is DATA_LOSS
// naming the policy and revision; never a crash.
absl::StatusOr<v1::PolicyRevision> ReadRevision(Db db, const Statement& s) {
  v1::PolicyRevision out;
  out.set_name(s.Text(0));
  // Ask each column's type before reading it: reading may convert the value.
  const bool revision_is_int = s.Type(1) == SQLITE_INTEGER;
  const int64_t revision = s.Int(1);
  auto bad = [&](absl::string_view what) {
    return db.Status(absl::StatusCode::kDataLoss,
                     absl::StrCat("policy ", Quote(out.name()), " revision ",
                                  revision_is_int ? absl::StrCat(revision) : "?", ": ", what));
  };
  if (!revision_is_int || revision < 1) return bad("bad revision");
  out.set_revision(static_cast<uint64_t>(revision));
  if (s.Type(2) != SQLITE_INTEGER || s.Int(2) < 1) return bad("bad fleet_version");
  out.set_fleet_version(static_cast<uint64_t>(s.Int(2)));
  if (s.Type(3) != SQLITE_TEXT) return bad("source is not text");
  out.set_source(s.Text(3));
  if (s.Type(4) != SQLITE_BLOB) return bad("policy is not a blob");
  absl::string_view blob = s.Blob(4);
  if (blob.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !out.mutable_policy()->ParseFromArray(blob.data(), static_cast<int>(blob.size()))) {
    return bad(absl::StrCat("stored policy (", blob.size(), " bytes) does not parse"));
  }
  if (s.Type(5) != SQLITE_INTEGER) return bad("bad created_unix_micros");
  *out.mutable_created() = TimestampFromMicros(s.Int(5));
  if (s.Type(6) != SQLITE_TEXT || s.Type(7) != SQLITE_TEXT) return bad("author/change not text");
  out.set_author(s.Text(6));
  out.set_change(s.Text(7));
  if (s.Type(8) != SQLITE_INTEGER || (s.Int(8) != 0 && s.Int(8) != 1)) return bad("bad deleted");
  out.set_deleted(s.Int(8) == 1);
  return out;
}

// The state of a policy that a write depends on: its highest revision, whether that is a
// tombstone, and its source. Reads no blob, so a damaged live revision can still be replaced.
struct Head {
  uint64_t revision = 0;  // 0: never existed.
  bool deleted = false;
  std::string source;

  bool live() const { return revision != 0 && !deleted; }
  uint64_t live_revision() const { return live() ? revision : 0; }
};

absl::StatusOr<Head> ReadHead(Db db, const std::string& name) {
  Statement s(db,
              "SELECT revision, deleted, source FROM policy_revisions WHERE name = ?1 "
              "ORDER BY revision DESC LIMIT 1");
  s.BindText(1, name);
  SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
  Head head;
  if (!row) return head;
  if (s.Type(0) != SQLITE_INTEGER || s.Int(0) < 1 || s.Type(1) != SQLITE_INTEGER) {
    return db.Status(absl::StatusCode::kDataLoss,
                     absl::StrCat("policy ", Quote(name), ": bad latest revision row"));
  }
  head.revision = static_cast<uint64_t>(s.Int(0));
  head.deleted = s.Int(1) != 0;
  head.source = s.Text(2);
  return head;
}

absl::StatusOr<v1::PolicyRevision> ReadRevisionAt(Db db, const std::string& name,
                                                  uint64_t revision) {
  std::string sql = absl::StrCat("SELECT ", kRevisionColumns,
                                 " FROM policy_revisions WHERE name = ?1 AND revision = ?2");
  Statement s(db, sql);
  s.BindText(1, name).BindInt(2, static_cast<int64_t>(revision));
  SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("policy ", Quote(name), " has no revision ", revision));
  }
  return ReadRevision(db, s);
}

absl::Status ValidateMigrations(std::span<const SqliteMigration> migrations) {
  if (migrations.empty()) return absl::InvalidArgumentError("SQLite store: no migrations");
  for (size_t i = 0; i < migrations.size(); ++i) {
    if (migrations[i].version != static_cast<int>(i + 1) || migrations[i].name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("SQLite store: migration #", i, " must have version ", i + 1,
                       " and a name, has version ", migrations[i].version));
    }
  }
  return absl::OkStatus();
}

// Creates the file with owner-only permissions (SQLite gives its WAL the same): the database
// will hold join tokens and audit records. An existing file is left alone. The directory is
// synced so that the new file's name survives a power loss too.
absl::Status CreateFileIfAbsent(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    int err = errno;
    if (err == EEXIST) return absl::OkStatus();
    return absl::ErrnoToStatus(err, absl::StrCat("SQLite store ", path, ": create"));
  }
  ::close(fd);
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0 || ::fsync(dir_fd) != 0) {
    int err = errno;
    if (dir_fd >= 0) ::close(dir_fd);
    return absl::ErrnoToStatus(err, absl::StrCat("SQLite store ", path, ": sync directory ", dir));
  }
  ::close(dir_fd);
  return absl::OkStatus();
}

}  // namespace

std::span<const SqliteMigration> SqliteMigrations() { return kMigrations; }

SqliteStore::SqliteStore(std::string path, Clock& clock, sqlite3* db)
    : path_(std::move(path)), clock_(clock), db_(db) {}

SqliteStore::~SqliteStore() {
  absl::MutexLock lock(&mu_);
  // The last connection to close checkpoints the WAL and removes it.
  if (sqlite3_close_v2(db_) != SQLITE_OK) {
    SHUTTLE_LOG(ERROR) << Error("close");
  }
}

absl::StatusOr<std::unique_ptr<SqliteStore>> SqliteStore::Open(const std::string& path,
                                                               Clock& clock,
                                                               const SqliteStoreOptions& options) {
  if (path.empty() || path == ":memory:" || path.starts_with("file:")) {
    return absl::InvalidArgumentError(
        absl::StrCat("SQLite store needs a file path, got ", Quote(path)));
  }
  if (sqlite3_libversion_number() < kMinSqliteVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "SQLite store ", path, ": SQLite ", sqlite3_libversion(), " is too old (need 3.37)"));
  }
  SHUTTLE_RETURN_IF_ERROR(ValidateMigrations(options.migrations));
  SHUTTLE_RETURN_IF_ERROR(CreateFileIfAbsent(path));

  sqlite3* handle = nullptr;
  // NOMUTEX: the store's own mutex serialises use of the connection.
  int rc =
      sqlite3_open_v2(path.c_str(), &handle,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = handle == nullptr
                              ? absl::ResourceExhaustedError(absl::StrCat(
                                    "SQLite store ", path, ": open: ", sqlite3_errstr(rc)))
                              : Db{handle, path}.Error("open");
    sqlite3_close_v2(handle);
    return status;
  }
  // From here the store owns the handle and closes it, also on failure.
  std::unique_ptr<SqliteStore> store(new SqliteStore(path, clock, handle));
  absl::MutexLock lock(&store->mu_);
  SHUTTLE_RETURN_IF_ERROR(store->Configure(options));
  SHUTTLE_RETURN_IF_ERROR(store->Migrate(options.migrations));
  return store;
}

absl::Status SqliteStore::Error(absl::string_view what) const { return Db{db_, path_}.Error(what); }

absl::Status SqliteStore::Exec(const char* sql) { return Db{db_, path_}.Exec(sql, sql); }

absl::Status SqliteStore::Configure(const SqliteStoreOptions& options) {
  Db db{db_, path_};
  sqlite3_extended_result_codes(db_, 1);
  if (sqlite3_busy_timeout(
          db_, static_cast<int>(absl::ToInt64Milliseconds(options.busy_timeout))) != SQLITE_OK) {
    return Error("set busy_timeout");
  }
  // The first statement that reads the file: a file that is not a database fails here.
  {
    Statement s(db, "PRAGMA journal_mode = WAL");
    SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
    std::string mode = row ? s.Text(0) : "";
    if (mode != "wal") {
      return db.Status(absl::StatusCode::kFailedPrecondition,
                       absl::StrCat("cannot use write-ahead logging (journal_mode is ", Quote(mode),
                                    "); is the file system local?"));
    }
  }
  if (sqlite3_db_readonly(db_, "main") == 1) {
    return db.Status(absl::StatusCode::kFailedPrecondition,
                     "opened read-only: the file or its directory is not writable");
  }
  SHUTTLE_RETURN_IF_ERROR(Exec("PRAGMA synchronous = FULL"));
  SHUTTLE_RETURN_IF_ERROR(Exec("PRAGMA foreign_keys = ON"));
  // Schema may not run SQL functions with side effects; extra page checks turn some corruption
  // into SQLITE_CORRUPT instead of undefined reads.
  SHUTTLE_RETURN_IF_ERROR(Exec("PRAGMA trusted_schema = OFF"));
  SHUTTLE_RETURN_IF_ERROR(Exec("PRAGMA cell_size_check = ON"));
  SHUTTLE_RETURN_IF_ERROR(
      Exec(absl::StrCat("PRAGMA wal_autocheckpoint = ", options.wal_autocheckpoint_pages).c_str()));

  // Pragmas fail silently (an unknown name, or inside a transaction): check what took effect.
  SHUTTLE_ASSIGN_OR_RETURN(int64_t synchronous, QueryInt(db, "PRAGMA synchronous"));
  SHUTTLE_ASSIGN_OR_RETURN(int64_t foreign_keys, QueryInt(db, "PRAGMA foreign_keys"));
  if (synchronous != 2 || foreign_keys != 1) {
    return db.Status(absl::StatusCode::kInternal,
                     absl::StrCat("connection settings did not take effect: synchronous=",
                                  synchronous, " foreign_keys=", foreign_keys));
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::Migrate(std::span<const SqliteMigration> migrations) {
  Db db{db_, path_};
  const int known = static_cast<int>(migrations.size());
  // One transaction per migration; each re-reads the version under the write lock, so two
  // processes opening one file at once apply each migration once.
  for (;;) {
    Transaction tx(db);
    SHUTTLE_RETURN_IF_ERROR(tx.Begin());
    SHUTTLE_ASSIGN_OR_RETURN(int64_t app_id, QueryInt(db, "PRAGMA application_id"));
    SHUTTLE_ASSIGN_OR_RETURN(int64_t has_table,
                             QueryInt(db,
                                      "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
                                      "name = 'schema_migrations'"));
    if (has_table == 0) {
      SHUTTLE_ASSIGN_OR_RETURN(int64_t objects, QueryInt(db, "SELECT count(*) FROM sqlite_schema"));
      if (objects != 0 || app_id != 0) {
        return db.Status(absl::StatusCode::kFailedPrecondition,
                         "not a Shuttle controller database: it has other contents and no "
                         "schema_migrations table");
      }
      SHUTTLE_RETURN_IF_ERROR(
          Exec("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
               "applied_unix_micros INTEGER NOT NULL) STRICT"));
      SHUTTLE_RETURN_IF_ERROR(
          Exec(absl::StrCat("PRAGMA application_id = ", kApplicationId).c_str()));
    } else if (app_id != kApplicationId) {
      return db.Status(absl::StatusCode::kFailedPrecondition,
                       absl::StrFormat("not a Shuttle controller database (application_id "
                                       "0x%08x, expected 0x%08x)",
                                       app_id, kApplicationId));
    }

    // The applied migrations must be a prefix of the known list (same versions and names), or
    // of a longer list from a newer build.
    int current = 0;
    {
      Statement s(db, "SELECT version, name FROM schema_migrations ORDER BY version");
      for (;;) {
        SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
        if (!row) break;
        const bool version_is_int = s.Type(0) == SQLITE_INTEGER;
        const int64_t version = s.Int(0);
        std::string name = s.Text(1);
        if (!version_is_int || version != current + 1) {
          return db.Status(absl::StatusCode::kDataLoss,
                           absl::StrCat("schema_migrations is damaged: expected version ",
                                        current + 1, ", found ", s.Text(0)));
        }
        if (version <= known && name != migrations[version - 1].name) {
          return db.Status(
              absl::StatusCode::kFailedPrecondition,
              absl::StrCat("schema migration ", version, " in the file is ", Quote(name),
                           " but this build's is ", Quote(migrations[version - 1].name),
                           ": the file was written by an incompatible build"));
        }
        current = static_cast<int>(version);
      }
    }
    if (current > known) {
      return db.Status(
          absl::StatusCode::kFailedPrecondition,
          absl::StrCat("schema version ", current, " is newer than this build supports (", known,
                       "): run a newer shuttle-controller; downgrades are not "
                       "supported"));
    }
    if (current == known) return tx.Commit();

    const SqliteMigration& m = migrations[current];
    const std::string what = absl::StrCat("migration ", m.version, " (", m.name, ")");
    SHUTTLE_RETURN_IF_ERROR(db.Exec(std::string(m.sql).c_str(), what));
    Statement insert(db,
                     "INSERT INTO schema_migrations (version, name, applied_unix_micros) "
                     "VALUES (?1, ?2, ?3)");
    insert.BindInt(1, m.version).BindText(2, m.name).BindInt(3, absl::ToUnixMicros(clock_.Now()));
    SHUTTLE_RETURN_IF_ERROR(insert.Run());
    SHUTTLE_RETURN_IF_ERROR(tx.Commit());
    SHUTTLE_LOG(INFO) << "SQLite store " << path_ << ": applied schema " << what;
  }
}

absl::StatusOr<v1::PolicyRevision> SqliteStore::AppendRevision(v1::PolicyRevision revision) {
  Db db{db_, path_};
  int64_t fleet_version = 0;
  {
    Statement bump(db, "UPDATE fleet SET version = version + 1 WHERE id = 1 RETURNING version");
    SHUTTLE_ASSIGN_OR_RETURN(bool row, bump.Step());
    if (!row || bump.Type(0) != SQLITE_INTEGER) {
      return db.Status(absl::StatusCode::kDataLoss, "the fleet version row is missing");
    }
    fleet_version = bump.Int(0);
    SHUTTLE_RETURN_IF_ERROR(bump.Run());
  }
  std::string blob;
  revision.mutable_policy();  // Present even when empty (tombstones), as it reads back.
  if (!revision.policy().SerializeToString(&blob)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", Quote(revision.name()), " does not serialize"));
  }
  const int64_t created_micros = absl::ToUnixMicros(clock_.Now());
  Statement insert(db, absl::StrCat("INSERT INTO policy_revisions (", kRevisionColumns,
                                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"));
  insert.BindText(1, revision.name())
      .BindInt(2, static_cast<int64_t>(revision.revision()))
      .BindInt(3, fleet_version)
      .BindText(4, revision.source())
      .BindBlob(5, blob)
      .BindInt(6, created_micros)
      .BindText(7, revision.author())
      .BindText(8, revision.change())
      .BindInt(9, revision.deleted() ? 1 : 0);
  SHUTTLE_RETURN_IF_ERROR(insert.Run());
  revision.set_fleet_version(static_cast<uint64_t>(fleet_version));
  *revision.mutable_created() = TimestampFromMicros(created_micros);
  return revision;
}

absl::StatusOr<v1::PolicyRevision> SqliteStore::PutPolicy(const PolicyWrite& write,
                                                          bool* unchanged) {
  if (unchanged != nullptr) *unchanged = false;
  if (write.name.empty()) return absl::InvalidArgumentError("policy name is empty");
  if (!write.policy.name().empty() && write.policy.name() != write.name) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy ", Quote(write.name), " carries name ", Quote(write.policy.name())));
  }
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Transaction tx(db);
  SHUTTLE_RETURN_IF_ERROR(tx.Begin());
  SHUTTLE_ASSIGN_OR_RETURN(Head head, ReadHead(db, write.name));
  if (write.expected_revision.has_value() && *write.expected_revision != head.live_revision()) {
    std::string current = head.revision == 0 ? "it does not exist"
                          : head.deleted
                              ? absl::StrCat("it is deleted (revision ", head.revision, ")")
                              : absl::StrCat("its current revision is ", head.revision);
    return absl::AbortedError(absl::StrCat("policy ", Quote(write.name), ": expected revision ",
                                           *write.expected_revision, " but ", current));
  }
  if (head.live() && head.source == write.source) {
    if (unchanged != nullptr) *unchanged = true;
    return ReadRevisionAt(db, write.name, head.revision);  // tx rolls back: nothing written.
  }
  v1::PolicyRevision revision;
  revision.set_name(write.name);
  revision.set_revision(head.revision + 1);
  revision.set_source(write.source);
  *revision.mutable_policy() = write.policy;
  revision.set_author(write.author);
  revision.set_change(write.change);
  SHUTTLE_ASSIGN_OR_RETURN(revision, AppendRevision(std::move(revision)));
  SHUTTLE_RETURN_IF_ERROR(tx.Commit());
  return revision;
}

absl::StatusOr<v1::PolicyRevision> SqliteStore::DeletePolicy(const std::string& name,
                                                             const std::string& author) {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Transaction tx(db);
  SHUTTLE_RETURN_IF_ERROR(tx.Begin());
  SHUTTLE_ASSIGN_OR_RETURN(Head head, ReadHead(db, name));
  if (!head.live()) {
    return absl::NotFoundError(
        absl::StrCat("policy ", Quote(name), head.deleted ? " is already deleted" : " not found"));
  }
  v1::PolicyRevision tombstone;
  tombstone.set_name(name);
  tombstone.set_revision(head.revision + 1);
  tombstone.set_author(author);
  tombstone.set_change("delete");
  tombstone.set_deleted(true);
  SHUTTLE_ASSIGN_OR_RETURN(tombstone, AppendRevision(std::move(tombstone)));
  SHUTTLE_RETURN_IF_ERROR(tx.Commit());
  return tombstone;
}

absl::StatusOr<v1::PolicyRevision> SqliteStore::GetPolicy(const std::string& name,
                                                          uint64_t revision) {
  if (revision > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::NotFoundError(absl::StrCat("policy ", Quote(name), " has no revision ", revision));
  }
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  if (revision != 0) return ReadRevisionAt(db, name, revision);
  // One statement, so it reads one consistent snapshot even with writers on other connections.
  Statement s(db, absl::StrCat("SELECT ", kRevisionColumns,
                               " FROM policy_revisions WHERE name = ?1 ORDER BY revision DESC "
                               "LIMIT 1"));
  s.BindText(1, name);
  SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("policy ", Quote(name), " not found"));
  SHUTTLE_ASSIGN_OR_RETURN(v1::PolicyRevision latest, ReadRevision(db, s));
  if (latest.deleted()) {
    return absl::NotFoundError(
        absl::StrCat("policy ", Quote(name), " is deleted (revision ", latest.revision(), ")"));
  }
  return latest;
}

absl::StatusOr<std::vector<v1::PolicyRevision>> SqliteStore::ListPolicies() {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db, absl::StrCat("SELECT ", kRevisionColumns,
                               " FROM policy_revisions JOIN (SELECT name, max(revision) AS "
                               "revision FROM policy_revisions GROUP BY name) USING (name, "
                               "revision) WHERE deleted = 0 ORDER BY name"));
  std::vector<v1::PolicyRevision> out;
  for (;;) {
    SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    SHUTTLE_ASSIGN_OR_RETURN(v1::PolicyRevision revision, ReadRevision(db, s));
    out.push_back(std::move(revision));
  }
}

absl::StatusOr<std::vector<v1::PolicyRevision>> SqliteStore::PolicyHistory(
    const std::string& name) {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db, absl::StrCat("SELECT ", kRevisionColumns,
                               " FROM policy_revisions WHERE name = ?1 ORDER BY revision"));
  s.BindText(1, name);
  std::vector<v1::PolicyRevision> out;
  for (;;) {
    SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    SHUTTLE_ASSIGN_OR_RETURN(v1::PolicyRevision revision, ReadRevision(db, s));
    out.push_back(std::move(revision));
  }
  if (out.empty()) return absl::NotFoundError(absl::StrCat("policy ", Quote(name), " not found"));
  return out;
}

absl::StatusOr<uint64_t> SqliteStore::FleetVersion() {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db, "SELECT version FROM fleet WHERE id = 1");
  SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row || s.Type(0) != SQLITE_INTEGER || s.Int(0) < 0) {
    return db.Status(absl::StatusCode::kDataLoss, "the fleet version row is missing or damaged");
  }
  return static_cast<uint64_t>(s.Int(0));
}

namespace {

constexpr char kTokenColumns[] =
    "secret_sha256, host_id, created_unix_micros, expires_unix_micros, used_unix_micros, used_by";
constexpr char kHostColumns[] =
    "host_id, first_seen_unix_micros, last_seen_unix_micros, acked_version, nack_version, "
    "nacked_version, nack_error, nack_unix_micros, vms";

JoinToken ReadToken(const Statement& s) {
  JoinToken t;
  t.secret_sha256 = s.Text(0);
  t.host_id = s.Text(1);
  t.created = absl::FromUnixMicros(s.Int(2));
  t.expires = absl::FromUnixMicros(s.Int(3));
  if (s.Type(4) != SQLITE_NULL) t.used_at = absl::FromUnixMicros(s.Int(4));
  t.used_by = s.Text(5);
  return t;
}

absl::StatusOr<HostRecord> ReadHost(Db db, const Statement& s) {
  HostRecord h;
  h.host_id = s.Text(0);
  h.first_seen = absl::FromUnixMicros(s.Int(1));
  h.last_seen = absl::FromUnixMicros(s.Int(2));
  h.acked_version = static_cast<uint64_t>(s.Int(3));
  h.nack_version = static_cast<uint64_t>(s.Int(4));
  h.nacked_version = static_cast<uint64_t>(s.Int(5));
  h.nack_error = s.Text(6);
  if (s.Type(7) != SQLITE_NULL) h.nack_time = absl::FromUnixMicros(s.Int(7));
  v1::HostStatus vms;
  absl::string_view blob = s.Blob(8);
  if (!vms.ParseFromArray(blob.data(), static_cast<int>(blob.size()))) {
    return db.Status(absl::StatusCode::kDataLoss,
                     absl::StrCat("host ", Quote(h.host_id), ": stored VM list does not parse"));
  }
  h.vms.assign(vms.vms().begin(), vms.vms().end());
  return h;
}

}  // namespace

absl::Status SqliteStore::CreateJoinToken(const JoinToken& token) {
  if (token.secret_sha256.size() != 64) {
    return absl::InvalidArgumentError("join token hash must be 64 hex digits");
  }
  if (token.expires <= token.created) {
    return absl::InvalidArgumentError("join token expires before it is created");
  }
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db, absl::StrCat("INSERT INTO join_tokens (", kTokenColumns,
                               ") VALUES (?1, ?2, ?3, ?4, NULL, '') ON CONFLICT DO NOTHING "
                               "RETURNING 1"));
  s.BindText(1, token.secret_sha256)
      .BindText(2, token.host_id)
      .BindInt(3, absl::ToUnixMicros(token.created))
      .BindInt(4, absl::ToUnixMicros(token.expires));
  SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
  SHUTTLE_RETURN_IF_ERROR(s.Run());
  if (!row) return absl::AlreadyExistsError("a join token with this secret already exists");
  return absl::OkStatus();
}

absl::StatusOr<JoinToken> SqliteStore::ConsumeJoinToken(const std::string& secret_sha256,
                                                        const std::string& host_id,
                                                        absl::Time now) {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  // IMMEDIATE: the check and the update happen under the write lock, also across processes.
  Transaction tx(db);
  SHUTTLE_RETURN_IF_ERROR(tx.Begin());
  JoinToken token;
  {
    Statement s(
        db, absl::StrCat("SELECT ", kTokenColumns, " FROM join_tokens WHERE secret_sha256 = ?1"));
    s.BindText(1, secret_sha256);
    SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return absl::UnauthenticatedError("unknown join token");
    token = ReadToken(s);
  }
  if (token.used_at.has_value()) {
    return absl::PermissionDeniedError(absl::StrCat("join token already used (at ",
                                                    absl::FormatTime(*token.used_at), " by host ",
                                                    Quote(token.used_by), "); create a new one"));
  }
  if (now >= token.expires) {
    return absl::PermissionDeniedError(absl::StrCat(
        "join token expired at ", absl::FormatTime(token.expires), "; create a new one"));
  }
  if (!token.host_id.empty() && token.host_id != host_id) {
    return absl::PermissionDeniedError(absl::StrCat(
        "join token was issued for host ", Quote(token.host_id), ", not ", Quote(host_id)));
  }
  Statement update(db,
                   "UPDATE join_tokens SET used_unix_micros = ?2, used_by = ?3 WHERE "
                   "secret_sha256 = ?1 AND used_unix_micros IS NULL");
  update.BindText(1, secret_sha256).BindInt(2, absl::ToUnixMicros(now)).BindText(3, host_id);
  SHUTTLE_RETURN_IF_ERROR(update.Run());
  if (sqlite3_changes(db_) != 1) return absl::PermissionDeniedError("join token already used");
  SHUTTLE_RETURN_IF_ERROR(tx.Commit());
  token.used_at = absl::FromUnixMicros(absl::ToUnixMicros(now));
  token.used_by = host_id;
  return token;
}

absl::Status SqliteStore::PutHost(const HostRecord& record) {
  if (record.host_id.empty()) return absl::InvalidArgumentError("host id is empty");
  v1::HostStatus vms;
  for (const v1::VmInfo& vm : record.vms) *vms.add_vms() = vm;
  std::string blob;
  if (!vms.SerializeToString(&blob)) return absl::InternalError("VM list does not serialize");
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db,
              absl::StrCat("INSERT INTO hosts (", kHostColumns,
                           ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (host_id) "
                           "DO UPDATE SET last_seen_unix_micros = excluded.last_seen_unix_micros,"
                           " acked_version = excluded.acked_version, nack_version = "
                           "excluded.nack_version, nacked_version = excluded.nacked_version, "
                           "nack_error = excluded.nack_error, nack_unix_micros = "
                           "excluded.nack_unix_micros, vms = excluded.vms"));
  s.BindText(1, record.host_id)
      .BindInt(2, absl::ToUnixMicros(record.first_seen))
      .BindInt(3, absl::ToUnixMicros(record.last_seen))
      .BindInt(4, static_cast<int64_t>(record.acked_version))
      .BindInt(5, static_cast<int64_t>(record.nack_version))
      .BindInt(6, static_cast<int64_t>(record.nacked_version))
      .BindText(7, record.nack_error)
      .BindBlob(9, blob);
  if (record.nack_time.has_value()) s.BindInt(8, absl::ToUnixMicros(*record.nack_time));
  return s.Run();
}

absl::StatusOr<HostRecord> SqliteStore::GetHost(const std::string& host_id) {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db, absl::StrCat("SELECT ", kHostColumns, " FROM hosts WHERE host_id = ?1"));
  s.BindText(1, host_id);
  SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("host ", Quote(host_id), " not found"));
  return ReadHost(db, s);
}

absl::StatusOr<std::vector<HostRecord>> SqliteStore::ListHosts() {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db, absl::StrCat("SELECT ", kHostColumns, " FROM hosts ORDER BY host_id"));
  std::vector<HostRecord> out;
  for (;;) {
    SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    SHUTTLE_ASSIGN_OR_RETURN(HostRecord host, ReadHost(db, s));
    out.push_back(std::move(host));
  }
}

namespace {

constexpr absl::string_view kAuditTokenPrefix = "seq:";

// Page tokens are opaque to clients: web-safe base64 of "seq:N", N the last sequence returned.
std::string EncodeAuditPageToken(uint64_t sequence) {
  return absl::WebSafeBase64Escape(absl::StrCat(kAuditTokenPrefix, sequence));
}

absl::StatusOr<uint64_t> DecodeAuditPageToken(const std::string& token) {
  std::string raw;
  uint64_t sequence = 0;
  if (!absl::WebSafeBase64Unescape(token, &raw) || !absl::StartsWith(raw, kAuditTokenPrefix) ||
      !absl::SimpleAtoi(absl::string_view(raw).substr(kAuditTokenPrefix.size()), &sequence) ||
      sequence > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(
        absl::StrCat("page token \"", absl::CHexEscape(token.substr(0, 40)),
                     "\" is not one this controller issued (pass next_page_token unchanged)"));
  }
  return sequence;
}

int64_t Micros(const google::protobuf::Timestamp& ts) {
  return TimeUtil::TimestampToMicroseconds(ts);
}

template <typename Message>
absl::StatusOr<std::string> Serialize(const Message& message, absl::string_view what) {
  std::string blob;
  if (!message.SerializeToString(&blob)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " does not serialize"));
  }
  return blob;
}

template <typename Message>
absl::StatusOr<Message> ParseBlob(Db db, absl::string_view blob, absl::string_view what) {
  Message message;
  if (blob.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !message.ParseFromArray(blob.data(), static_cast<int>(blob.size()))) {
    return db.Status(absl::StatusCode::kDataLoss,
                     absl::StrCat(what, ": stored data (", blob.size(), " bytes) does not parse"));
  }
  return message;
}

}  // namespace

absl::StatusOr<AuditPutResult> SqliteStore::PutAuditRecords(
    const std::vector<v1::AuditRecord>& records) {
  std::vector<std::string> blobs;
  blobs.reserve(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].id().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("audit record #", i, " has no id"));
    }
    SHUTTLE_ASSIGN_OR_RETURN(std::string blob,
                             Serialize(records[i], absl::StrCat("audit record ", records[i].id())));
    blobs.push_back(std::move(blob));
  }
  AuditPutResult result;
  result.sequences.assign(records.size(), 0);
  if (records.empty()) return result;
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Transaction tx(db);
  SHUTTLE_RETURN_IF_ERROR(tx.Begin());
  const int64_t ingested = absl::ToUnixMicros(clock_.Now());
  Statement insert(db,
                   "INSERT INTO audit_records (id, time_unix_micros, host_id, subject_vm, "
                   "object_vm, verdict, kind, ingested_unix_micros, record) VALUES (?1, ?2, ?3, "
                   "?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (id) DO NOTHING RETURNING seq");
  for (size_t i = 0; i < records.size(); ++i) {
    const v1::AuditRecord& r = records[i];
    insert.Reset();
    insert.BindText(1, r.id())
        .BindInt(2, Micros(r.time()))
        .BindText(3, r.host_id())
        .BindText(4, r.interaction().subject_vm())
        .BindText(5, r.interaction().object_vm())
        .BindInt(6, r.decision().verdict())
        .BindInt(7, r.interaction().kind())
        .BindInt(8, ingested)
        .BindBlob(9, blobs[i]);
    SHUTTLE_ASSIGN_OR_RETURN(bool row, insert.Step());
    if (!row) {
      ++result.duplicates;
      continue;
    }
    result.sequences[i] = static_cast<uint64_t>(insert.Int(0));
    ++result.accepted;
    SHUTTLE_RETURN_IF_ERROR(insert.Run());
  }
  SHUTTLE_RETURN_IF_ERROR(tx.Commit());
  return result;
}

absl::StatusOr<AuditPage> SqliteStore::QueryAudit(const v1::AuditFilter& filter, uint32_t limit,
                                                  const std::string& page_token) {
  if (limit == 0) limit = kDefaultAuditPageSize;
  if (limit > kMaxAuditPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("limit ", limit, " is more than the maximum ", kMaxAuditPageSize));
  }
  uint64_t after = 0;
  if (!page_token.empty()) {
    SHUTTLE_ASSIGN_OR_RETURN(after, DecodeAuditPageToken(page_token));
  }
  // Parameters are numbered by what they hold, so the SQL names only the filters that are set.
  std::string sql = "SELECT seq, record FROM audit_records WHERE seq > ?1";
  if (!filter.host_id().empty()) absl::StrAppend(&sql, " AND host_id = ?2");
  if (!filter.vm().empty()) absl::StrAppend(&sql, " AND (subject_vm = ?3 OR object_vm = ?3)");
  if (filter.has_since()) absl::StrAppend(&sql, " AND time_unix_micros >= ?4");
  if (filter.verdict() != v1::VERDICT_UNSPECIFIED) absl::StrAppend(&sql, " AND verdict = ?5");
  if (filter.kind() != v1::INTERACTION_KIND_UNSPECIFIED) absl::StrAppend(&sql, " AND kind = ?6");
  absl::StrAppend(&sql, " ORDER BY seq LIMIT ?7");

  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db, sql);
  s.BindInt(1, static_cast<int64_t>(after));
  if (!filter.host_id().empty()) s.BindText(2, filter.host_id());
  if (!filter.vm().empty()) s.BindText(3, filter.vm());
  if (filter.has_since()) s.BindInt(4, Micros(filter.since()));
  if (filter.verdict() != v1::VERDICT_UNSPECIFIED) s.BindInt(5, filter.verdict());
  if (filter.kind() != v1::INTERACTION_KIND_UNSPECIFIED) s.BindInt(6, filter.kind());
  s.BindInt(7, static_cast<int64_t>(limit) + 1);  // One more than asked: are there more?
  AuditPage page;
  for (;;) {
    SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    if (page.records.size() == limit) {
      page.next_page_token = EncodeAuditPageToken(page.sequences.back());
      break;
    }
    const int64_t sequence = s.Int(0);
    SHUTTLE_ASSIGN_OR_RETURN(
        v1::AuditRecord record,
        ParseBlob<v1::AuditRecord>(db, s.Blob(1), absl::StrCat("audit record seq ", sequence)));
    page.records.push_back(std::move(record));
    page.sequences.push_back(static_cast<uint64_t>(sequence));
  }
  return page;
}

absl::Status SqliteStore::PutStandingAnswer(const v1::StandingAnswer& answer, bool* replaced) {
  if (replaced != nullptr) *replaced = false;
  if (answer.id().empty()) return absl::InvalidArgumentError("standing answer id is empty");
  SHUTTLE_ASSIGN_OR_RETURN(std::string blob,
                           Serialize(answer, absl::StrCat("standing answer ", answer.id())));
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Transaction tx(db);
  SHUTTLE_RETURN_IF_ERROR(tx.Begin());
  {
    Statement same(db,
                   "SELECT id FROM standing_answers WHERE subject_vm = ?1 AND kind = ?2 AND "
                   "object_vm = ?3 AND object = ?4 AND id <> ?5");
    same.BindText(1, answer.subject_vm())
        .BindInt(2, answer.kind())
        .BindText(3, answer.object_vm())
        .BindText(4, answer.object())
        .BindText(5, answer.id());
    SHUTTLE_ASSIGN_OR_RETURN(bool row, same.Step());
    if (row) {
      return absl::AlreadyExistsError(absl::StrCat("standing answer ", Quote(same.Text(0)),
                                                   " already answers this subject, kind and "
                                                   "object; replace or remove it"));
    }
  }
  bool existed = false;
  {
    Statement exists(db, "SELECT 1 FROM standing_answers WHERE id = ?1");
    exists.BindText(1, answer.id());
    SHUTTLE_ASSIGN_OR_RETURN(existed, exists.Step());
  }
  Statement upsert(db,
                   "INSERT INTO standing_answers (id, subject_vm, kind, object_vm, object, answer) "
                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO UPDATE SET subject_vm = "
                   "excluded.subject_vm, kind = excluded.kind, object_vm = excluded.object_vm, "
                   "object = excluded.object, answer = excluded.answer");
  upsert.BindText(1, answer.id())
      .BindText(2, answer.subject_vm())
      .BindInt(3, answer.kind())
      .BindText(4, answer.object_vm())
      .BindText(5, answer.object())
      .BindBlob(6, blob);
  SHUTTLE_RETURN_IF_ERROR(upsert.Run());
  SHUTTLE_RETURN_IF_ERROR(tx.Commit());
  if (replaced != nullptr) *replaced = existed;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::StandingAnswer>> SqliteStore::ListStandingAnswers() {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db, "SELECT id, answer FROM standing_answers ORDER BY id");
  std::vector<v1::StandingAnswer> out;
  for (;;) {
    SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return out;
    SHUTTLE_ASSIGN_OR_RETURN(
        v1::StandingAnswer answer,
        ParseBlob<v1::StandingAnswer>(db, s.Blob(1),
                                      absl::StrCat("standing answer ", Quote(s.Text(0)))));
    out.push_back(std::move(answer));
  }
}

absl::StatusOr<v1::StandingAnswer> SqliteStore::DeleteStandingAnswer(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  Statement s(db, "DELETE FROM standing_answers WHERE id = ?1 RETURNING answer");
  s.BindText(1, id);
  SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("standing answer ", Quote(id), " not found"));
  // Read before finishing the statement: the blob is valid only until the next step.
  absl::StatusOr<v1::StandingAnswer> answer =
      ParseBlob<v1::StandingAnswer>(db, s.Blob(0), absl::StrCat("standing answer ", Quote(id)));
  SHUTTLE_RETURN_IF_ERROR(s.Run());
  return answer;
}

absl::Status SqliteStore::CheckIntegrity() {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  std::vector<std::string> problems;
  {
    Statement s(db, "PRAGMA integrity_check(20)");
    for (;;) {
      SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) break;
      std::string line = s.Text(0);
      if (line != "ok") problems.push_back(absl::StrReplaceAll(line, {{"\n", "; "}}));
    }
  }
  {
    Statement s(db, "PRAGMA foreign_key_check");
    for (;;) {
      SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) break;
      problems.push_back(absl::StrCat("foreign key violation in table ", s.Text(0), " row ",
                                      s.Int(1), " -> ", s.Text(2)));
    }
  }
  if (problems.empty()) return absl::OkStatus();
  return db.Status(absl::StatusCode::kDataLoss,
                   absl::StrCat("integrity check failed: ", absl::StrJoin(problems, "; ")));
}

absl::StatusOr<int> SqliteStore::SchemaVersion() {
  absl::MutexLock lock(&mu_);
  SHUTTLE_ASSIGN_OR_RETURN(
      int64_t version,
      QueryInt(Db{db_, path_}, "SELECT coalesce(max(version), 0) FROM schema_migrations"));
  return static_cast<int>(version);
}

absl::StatusOr<SqliteConnectionSettings> SqliteStore::Settings() {
  absl::MutexLock lock(&mu_);
  Db db{db_, path_};
  SqliteConnectionSettings out;
  {
    Statement s(db, "PRAGMA journal_mode");
    SHUTTLE_ASSIGN_OR_RETURN(bool row, s.Step());
    if (row) out.journal_mode = s.Text(0);
  }
  SHUTTLE_ASSIGN_OR_RETURN(int64_t synchronous, QueryInt(db, "PRAGMA synchronous"));
  SHUTTLE_ASSIGN_OR_RETURN(int64_t foreign_keys, QueryInt(db, "PRAGMA foreign_keys"));
  SHUTTLE_ASSIGN_OR_RETURN(int64_t busy_timeout, QueryInt(db, "PRAGMA busy_timeout"));
  out.synchronous = static_cast<int>(synchronous);
  out.foreign_keys = foreign_keys != 0;
  out.busy_timeout_ms = static_cast<int>(busy_timeout);
  return out;
}

absl::StatusOr<StorePtr> OpenSqliteStore(const std::string& path, Clock& clock) {
  SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<SqliteStore> store, SqliteStore::Open(path, clock));
  return StorePtr(std::move(store));
}

}  // namespace shuttle::controller
