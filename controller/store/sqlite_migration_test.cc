// Schema migrations of the SQLite store: an old file is brought forward on open, one transaction
// per migration; a failed migration leaves the file as it was; a file newer than the build, or
// from a diverged build, is refused with a clear error.
#include <sqlite3.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/status_matchers.h"
#include "controller/store/sqlite_store.h"
#include "controller/store/store_testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::controller {
namespace {

using ::shuttle::controller::testing::MakeWrite;
using ::shuttle::controller::testing::TempDir;
using ::shuttle::testing::IsOk;
using ::shuttle::testing::IsOkAndHolds;
using ::shuttle::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::Eq;
using ::testing::HasSubstr;
using ::testing::Pair;

// What a later issue would append: a table and a backfill from existing data.
constexpr SqliteMigration kHostsMigration = {2, "hosts", R"sql(
CREATE TABLE hosts (
  id TEXT PRIMARY KEY,
  policy_version INTEGER NOT NULL
) STRICT;
INSERT INTO hosts (id, policy_version) SELECT 'seed', version FROM fleet;
)sql"};

class SqliteMigrationTest : public ::testing::Test {
 protected:
  std::string DbPath() const { return dir_.File("controller.db"); }

  absl::StatusOr<std::unique_ptr<SqliteStore>> Open(std::vector<SqliteMigration> migrations) {
    migrations_ = std::move(migrations);
    SqliteStoreOptions options;
    options.migrations = migrations_;
    return SqliteStore::Open(DbPath(), clock_, options);
  }

  std::vector<SqliteMigration> V1() const { return {SqliteMigrations()[0]}; }
  std::vector<SqliteMigration> V1V2() const { return {SqliteMigrations()[0], kHostsMigration}; }

  // Runs `sql` on a separate connection and returns each row's columns joined by '|'.
  std::vector<std::string> Query(const std::string& sql) {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(DbPath().c_str(), &db), SQLITE_OK);
    std::vector<std::string> rows;
    char* error = nullptr;
    int rc = sqlite3_exec(
        db, sql.c_str(),
        [](void* out, int n, char** values, char**) {
          std::string row;
          for (int i = 0; i < n; ++i) {
            absl::StrAppend(&row, i ? "|" : "", values[i] ? values[i] : "NULL");
          }
          static_cast<std::vector<std::string>*>(out)->push_back(row);
          return 0;
        },
        &rows, &error);
    EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << (error ? error : "");
    sqlite3_free(error);
    sqlite3_close(db);
    return rows;
  }

  TempDir dir_;
  FakeClock clock_;
  std::vector<SqliteMigration> migrations_;  // Kept alive for the options span.
};

TEST_F(SqliteMigrationTest, NewFileGetsEveryMigration) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store,
                               SqliteStore::Open(DbPath(), clock_));
  EXPECT_THAT(store->SchemaVersion(),
              IsOkAndHolds(Eq(static_cast<int>(SqliteMigrations().size()))));
  std::vector<std::string> expected;
  for (const SqliteMigration& m : SqliteMigrations()) {
    expected.push_back(absl::StrCat(m.version, "|", m.name, "|", absl::ToUnixMicros(clock_.Now())));
  }
  EXPECT_EQ(Query("SELECT version, name, applied_unix_micros FROM schema_migrations ORDER BY 1"),
            expected);
  EXPECT_THAT(Query("PRAGMA application_id"), ElementsAre(std::to_string(0x53485554)));
}

// A file as an older build left it: written by hand with version 1's schema and rows, so the
// test does not depend on today's code to produce the old format.
TEST_F(SqliteMigrationTest, OldFileIsMigratedAndKeepsItsData) {
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(DbPath().c_str(), &db), SQLITE_OK);
    v1::Policy policy = MakeWrite("web", "v1").policy;
    std::string blob = policy.SerializeAsString();
    std::string hex;
    for (unsigned char c : blob) absl::StrAppend(&hex, absl::Hex(c, absl::kZeroPad2));
    std::string sql = absl::StrCat(
        "PRAGMA application_id = ", 0x53485554, ";",
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_unix_micros INTEGER NOT NULL) STRICT;",
        "INSERT INTO schema_migrations VALUES (1, 'policies', 1);", SqliteMigrations()[0].sql,
        "INSERT INTO policy_revisions VALUES ('web', 1, 1, 'v1', x'", hex,
        "', 1600000000000000, 'alice', 'apply', 0);", "UPDATE fleet SET version = 1;");
    char* error = nullptr;
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK) << error;
    sqlite3_close(db);
  }

  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open(V1V2()));
  EXPECT_THAT(store->SchemaVersion(), IsOkAndHolds(Eq(2)));
  EXPECT_THAT(Query("SELECT version, name FROM schema_migrations ORDER BY 1"),
              ElementsAre("1|policies", "2|hosts"));
  // The migration ran against the old data (its backfill saw fleet version 1).
  EXPECT_THAT(Query("SELECT id, policy_version FROM hosts"), ElementsAre("seed|1"));
  // The old rows read as they were written.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision web, store->GetPolicy("web", 0));
  EXPECT_EQ(web.source(), "v1");
  EXPECT_EQ(web.created().seconds(), 1'600'000'000);
  EXPECT_EQ(web.policy().rules_size(), 1);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision next,
                               store->PutPolicy(MakeWrite("web", "v2"), nullptr));
  EXPECT_EQ(next.revision(), 2u);
  EXPECT_EQ(next.fleet_version(), 2u);
  EXPECT_THAT(store->CheckIntegrity(), IsOk());

  // Opening again applies nothing.
  store.reset();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(store, Open(V1V2()));
  EXPECT_THAT(Query("SELECT count(*) FROM schema_migrations"), ElementsAre("2"));
}

TEST_F(SqliteMigrationTest, StoreWrittenAtV1IsMigratedToV2) {
  {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open(V1()));
    ASSERT_THAT(store->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
    ASSERT_THAT(store->PutPolicy(MakeWrite("db", "v1"), nullptr), IsOk());
    EXPECT_THAT(store->SchemaVersion(), IsOkAndHolds(Eq(1)));
  }
  clock_.Advance(absl::Hours(24));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open(V1V2()));
  EXPECT_THAT(store->SchemaVersion(), IsOkAndHolds(Eq(2)));
  EXPECT_THAT(Query("SELECT id, policy_version FROM hosts"), ElementsAre("seed|2"));
  EXPECT_THAT(store->FleetVersion(), IsOkAndHolds(Eq(2u)));
  EXPECT_THAT(testing::CheckConsistent(*store, {"web", "db"}), IsOk());
}

TEST_F(SqliteMigrationTest, NewerFileIsRefused) {
  { SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open(V1V2())); }
  EXPECT_THAT(Open(V1()), StatusIs(absl::StatusCode::kFailedPrecondition,
                                   AllOf(HasSubstr(DbPath()), HasSubstr("schema version 2"),
                                         HasSubstr("newer than this build supports (1)"))));
  // The refused open changed nothing.
  EXPECT_THAT(Query("SELECT version FROM schema_migrations ORDER BY 1"), ElementsAre("1", "2"));
}

TEST_F(SqliteMigrationTest, FailedMigrationLeavesFileAtPreviousVersion) {
  {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open(V1()));
    ASSERT_THAT(store->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
  }
  SqliteMigration broken = {2, "broken",
                            "CREATE TABLE hosts (id TEXT) STRICT; INSERT INTO nowhere VALUES (1);"};
  EXPECT_THAT(Open({SqliteMigrations()[0], broken}),
              StatusIs(absl::StatusCode::kInternal,
                       AllOf(HasSubstr(DbPath()), HasSubstr("migration 2 (broken)"),
                             HasSubstr("no such table: nowhere"))));
  // Rolled back whole: no hosts table, still version 1, data intact.
  EXPECT_THAT(Query("SELECT count(*) FROM sqlite_schema WHERE name = 'hosts'"), ElementsAre("0"));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open(V1()));
  EXPECT_THAT(store->SchemaVersion(), IsOkAndHolds(Eq(1)));
  EXPECT_THAT(store->GetPolicy("web", 0), IsOk());
}

TEST_F(SqliteMigrationTest, DivergedMigrationIsRefused) {
  { SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open(V1V2())); }
  SqliteMigration other = {2, "tokens", "CREATE TABLE tokens (id TEXT) STRICT;"};
  EXPECT_THAT(Open({SqliteMigrations()[0], other}),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("\"hosts\""), HasSubstr("\"tokens\""))));
}

TEST_F(SqliteMigrationTest, MigrationListMustBeOrdered) {
  SqliteMigration gap = {3, "gap", "SELECT 1;"};
  EXPECT_THAT(Open({SqliteMigrations()[0], gap}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("version 2")));
  EXPECT_THAT(Open({}), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no migrations")));
}

// A file of the release before the audit log and standing answers (schema 2) gains both on
// open, keeps its policies and hosts, and the new tables work.
TEST_F(SqliteMigrationTest, SchemaTwoFileGainsAuditAndAnswers) {
  {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> old,
                                 Open({SqliteMigrations()[0], SqliteMigrations()[1]}));
    ASSERT_THAT(old->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
    HostRecord host;
    host.host_id = "web-1";
    ASSERT_THAT(old->PutHost(host), IsOk());
  }
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store,
                               SqliteStore::Open(DbPath(), clock_));
  EXPECT_THAT(store->SchemaVersion(), IsOkAndHolds(Eq(4)));
  EXPECT_THAT(Query("SELECT version, name FROM schema_migrations WHERE version > 2 ORDER BY 1"),
              ElementsAre("3|audit_log", "4|standing_answers"));
  EXPECT_THAT(store->GetPolicy("web", 0), IsOk());
  EXPECT_THAT(store->GetHost("web-1"), IsOk());
  v1::AuditRecord record;
  record.set_id("web-1/1/1");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPutResult put, store->PutAuditRecords({record}));
  EXPECT_EQ(put.accepted, 1u);
  v1::StandingAnswer answer;
  answer.set_id("a1");
  EXPECT_THAT(store->PutStandingAnswer(answer, nullptr), IsOk());
  EXPECT_THAT(store->CheckIntegrity(), IsOk());
}

TEST_F(SqliteMigrationTest, BuiltInMigrationsAreNumberedFromOne) {
  std::vector<std::pair<int, std::string>> seen;
  for (const SqliteMigration& m : SqliteMigrations()) seen.emplace_back(m.version, m.name);
  ASSERT_FALSE(seen.empty());
  EXPECT_THAT(seen[0], Pair(1, "policies"));
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].first, static_cast<int>(i + 1));
}

}  // namespace
}  // namespace shuttle::controller
