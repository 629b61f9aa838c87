// The Store conformance suite on SQLite, plus what only SQLite has: connection settings, file
// permissions, and clear errors (never crashes) for files that can't be opened or hold bad data.
#include "controller/store/sqlite_store.h"

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/status_matchers.h"
#include "controller/store/store_test_suite.h"
#include "controller/store/store_testing.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::controller {
namespace {

using ::shuttle::controller::testing::MakeWrite;
using ::shuttle::controller::testing::StoreBackend;
using ::shuttle::controller::testing::StoreTest;
using ::shuttle::controller::testing::StoreTestHarness;
using ::shuttle::controller::testing::TempDir;
using ::shuttle::testing::IsOk;
using ::shuttle::testing::IsOkAndHolds;
using ::shuttle::testing::StatusIs;
using ::testing::AllOf;
using ::testing::AnyOf;
using ::testing::Eq;
using ::testing::HasSubstr;
using ::testing::Not;

class SqliteHarness final : public StoreTestHarness {
 public:
  absl::StatusOr<StorePtr> Open(Clock& clock) override {
    return OpenSqliteStore(dir_.File("controller.db"), clock);
  }

 private:
  TempDir dir_;
};

INSTANTIATE_TEST_SUITE_P(Sqlite, StoreTest,
                         ::testing::Values(StoreBackend{
                             "sqlite", [] { return std::make_unique<SqliteHarness>(); }}),
                         ::shuttle::controller::testing::StoreBackendName);

// A second, raw connection to the file, for looking at or damaging what the store wrote.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
    sqlite3_busy_timeout(db_, 5000);
  }
  ~RawDb() { sqlite3_close(db_); }
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  void Exec(const std::string& sql) {
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK)
        << sql << ": " << (error != nullptr ? error : "");
    sqlite3_free(error);
  }
  sqlite3* get() { return db_; }

 private:
  sqlite3* db_ = nullptr;
};

class SqliteStoreTest : public ::testing::Test {
 protected:
  std::string DbPath() const { return dir_.File("controller.db"); }
  absl::StatusOr<std::unique_ptr<SqliteStore>> Open(const SqliteStoreOptions& options = {}) {
    return SqliteStore::Open(DbPath(), clock_, options);
  }

  TempDir dir_;
  FakeClock clock_;
};

TEST_F(SqliteStoreTest, ConnectionSettingsForDurability) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(SqliteConnectionSettings settings, store->Settings());
  EXPECT_EQ(settings.journal_mode, "wal");
  EXPECT_EQ(settings.synchronous, 2);  // FULL
  EXPECT_TRUE(settings.foreign_keys);
  EXPECT_EQ(settings.busy_timeout_ms, 5000);
  EXPECT_THAT(store->SchemaVersion(),
              IsOkAndHolds(Eq(static_cast<int>(SqliteMigrations().size()))));
  EXPECT_THAT(store->CheckIntegrity(), IsOk());
  EXPECT_EQ(store->path(), DbPath());
}

TEST_F(SqliteStoreTest, NewFileIsOwnerOnly) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open());
  ASSERT_THAT(store->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
  struct stat st {};
  ASSERT_EQ(stat(DbPath().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // SQLite gives the WAL the database file's permissions.
  ASSERT_EQ(stat((DbPath() + "-wal").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(SqliteStoreTest, MissingDirectoryNamesPath) {
  std::string path = dir_.File("no/such/dir/controller.db");
  EXPECT_THAT(
      SqliteStore::Open(path, clock_),
      StatusIs(absl::StatusCode::kNotFound, AllOf(HasSubstr(path), HasSubstr("No such file"))));
}

TEST_F(SqliteStoreTest, DirectoryIsNotADatabase) {
  EXPECT_THAT(SqliteStore::Open(dir_.path(), clock_),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr(dir_.path()), HasSubstr("unable to open database file"))));
}

TEST_F(SqliteStoreTest, NonFilePathsAreRefused) {
  EXPECT_THAT(SqliteStore::Open("", clock_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("file path")));
  EXPECT_THAT(SqliteStore::Open(":memory:", clock_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(":memory:")));
}

TEST_F(SqliteStoreTest, GarbageFileIsDataLossNamingPath) {
  {
    std::ofstream out(DbPath(), std::ios::binary);
    for (int i = 0; i < 512; ++i) out << "this is not an SQLite database\n";
  }
  EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kDataLoss,
                               AllOf(HasSubstr(DbPath()), HasSubstr("file is not a database"))));
}

TEST_F(SqliteStoreTest, ForeignDatabaseIsRefused) {
  {
    RawDb raw(DbPath());
    raw.Exec("CREATE TABLE accounts (id INTEGER PRIMARY KEY)");
  }
  EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kFailedPrecondition,
                               AllOf(HasSubstr(DbPath()), HasSubstr("not a Shuttle"))));
  // Another program's schema_migrations table is not ours either.
  {
    RawDb raw(dir_.File("rails.db"));
    raw.Exec("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY)");
  }
  EXPECT_THAT(SqliteStore::Open(dir_.File("rails.db"), clock_),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("application_id")));
}

TEST_F(SqliteStoreTest, ReadOnlyDirectoryNamesPath) {
  if (geteuid() == 0) GTEST_SKIP() << "root ignores file permissions";
  { SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open()); }
  ASSERT_EQ(chmod(DbPath().c_str(), 0400), 0);
  ASSERT_EQ(chmod(dir_.path().c_str(), 0500), 0);
  auto store = Open();
  ASSERT_EQ(chmod(dir_.path().c_str(), 0700), 0);
  EXPECT_THAT(store, StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr(DbPath())));
}

TEST_F(SqliteStoreTest, LockedDatabaseIsUnavailableAfterBusyTimeout) {
  SqliteStoreOptions options;
  options.busy_timeout = absl::Milliseconds(20);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open(options));
  RawDb raw(DbPath());
  raw.Exec("BEGIN IMMEDIATE");  // Holds the write lock until COMMIT.
  EXPECT_THAT(store->PutPolicy(MakeWrite("web", "v1"), nullptr),
              StatusIs(absl::StatusCode::kUnavailable,
                       AllOf(HasSubstr(DbPath()), HasSubstr("database is locked"))));
  // Readers are not blocked by a writer in WAL mode.
  EXPECT_THAT(store->FleetVersion(), IsOkAndHolds(Eq(0u)));
  raw.Exec("COMMIT");
  EXPECT_THAT(store->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
}

TEST_F(SqliteStoreTest, UnparsablePolicyBlobIsDataLossNamingRevision) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open());
  ASSERT_THAT(store->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
  ASSERT_THAT(store->PutPolicy(MakeWrite("web", "v2"), nullptr), IsOk());
  {
    RawDb raw(DbPath());
    // Field 1, length 5, but no bytes follow: a truncated message.
    raw.Exec("UPDATE policy_revisions SET policy = x'0a05' WHERE name = 'web' AND revision = 2");
  }
  auto data_loss = StatusIs(absl::StatusCode::kDataLoss,
                            AllOf(HasSubstr(DbPath()), HasSubstr("policy \"web\" revision 2"),
                                  HasSubstr("does not parse")));
  EXPECT_THAT(store->GetPolicy("web", 0), data_loss);
  EXPECT_THAT(store->GetPolicy("web", 2), data_loss);
  EXPECT_THAT(store->ListPolicies(), data_loss);
  EXPECT_THAT(store->PolicyHistory("web"), data_loss);
  // The intact revision is still readable, and a new apply repairs the live policy.
  EXPECT_THAT(store->GetPolicy("web", 1), IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision repaired,
                               store->PutPolicy(MakeWrite("web", "v3"), nullptr));
  EXPECT_EQ(repaired.revision(), 3u);
  EXPECT_THAT(store->GetPolicy("web", 0), IsOk());
  EXPECT_THAT(store->ListPolicies(), IsOk());
}

TEST_F(SqliteStoreTest, BadColumnValuesAreDataLoss) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open());
  ASSERT_THAT(store->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
  {
    RawDb raw(DbPath());
    raw.Exec("PRAGMA ignore_check_constraints = ON");
    raw.Exec("UPDATE policy_revisions SET deleted = 7 WHERE name = 'web'");
  }
  EXPECT_THAT(store->GetPolicy("web", 1),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr("policy \"web\" revision 1"), HasSubstr("deleted"))));
  {
    RawDb raw(DbPath());
    raw.Exec("DELETE FROM fleet");
  }
  EXPECT_THAT(store->FleetVersion(),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("fleet version row")));
  EXPECT_THAT(store->PutPolicy(MakeWrite("db", "v1"), nullptr),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("fleet version row")));
  // The failed write left nothing behind.
  EXPECT_THAT(store->PolicyHistory("db"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("db")));
}

enum class Damage { kAfterFirstPage, kSecondHalf };

// Writes 40 policies of 3 KB each, closes the store (checkpointing the WAL into the file), and
// overwrites half of the file with a pattern: right after page 1 (the header and schema), or the
// second half.
void WriteThenDamage(const std::string& path, Clock& clock, Damage damage) {
  {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store,
                                 SqliteStore::Open(path, clock));
    for (int i = 0; i < 40; ++i) {
      ASSERT_THAT(store->PutPolicy(MakeWrite(absl::StrCat("p", i), std::string(3000, 'a' + i % 26)),
                                   nullptr),
                  IsOk());
    }
  }
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  ASSERT_GT(st.st_size, 16 * 4096);
  ASSERT_NE(stat((path + "-wal").c_str(), &st), 0) << "WAL not checkpointed on close";
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
  file.seekp(damage == Damage::kAfterFirstPage ? 4096 : st.st_size / 2);
  std::string junk(static_cast<size_t>(st.st_size / 2), '\x5a');
  file.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  ASSERT_TRUE(file.good());
}

TEST_F(SqliteStoreTest, DamagedSchemaPagesFailOpenWithDataLoss) {
  ASSERT_NO_FATAL_FAILURE(WriteThenDamage(DbPath(), clock_, Damage::kAfterFirstPage));
  EXPECT_THAT(Open(), StatusIs(absl::StatusCode::kDataLoss,
                               AllOf(HasSubstr(DbPath()), HasSubstr("malformed"))));
}

TEST_F(SqliteStoreTest, DamagedDataPagesGiveDataLossNotCrashes) {
  ASSERT_NO_FATAL_FAILURE(WriteThenDamage(DbPath(), clock_, Damage::kSecondHalf));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteStore> store, Open());
  EXPECT_THAT(store->CheckIntegrity(),
              StatusIs(absl::StatusCode::kDataLoss,
                       AllOf(HasSubstr(DbPath()), HasSubstr("integrity check failed"),
                             Not(HasSubstr("\n")))));
  EXPECT_THAT(store->ListPolicies(), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(DbPath())));
  int damaged = 0;
  for (int i = 0; i < 40; ++i) {
    auto got = store->GetPolicy(absl::StrCat("p", i), 0);
    if (!got.ok()) ++damaged;
    EXPECT_THAT(got, AnyOf(IsOk(), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(DbPath()))));
  }
  EXPECT_GT(damaged, 0);
  EXPECT_LT(damaged, 40);  // Rows on intact pages still read.
}

TEST_F(SqliteStoreTest, OpenSqliteStoreGivesAStore) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(StorePtr store, OpenSqliteStore(DbPath(), clock_));
  EXPECT_THAT(store->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
  EXPECT_THAT(store->FleetVersion(), IsOkAndHolds(Eq(1u)));
}

}  // namespace
}  // namespace shuttle::controller
