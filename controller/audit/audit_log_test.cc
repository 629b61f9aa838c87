// AuditLog over a real SQLite store: what an agent may upload, idempotency and its counters,
// delivery of new records to subscribers (filtered, in storage order, never duplicates), and the
// in-memory filter agreeing with the store's query.
#include "controller/audit/audit_log.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/status_matchers.h"
#include "controller/store/sqlite_store.h"
#include "controller/store/store_testing.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace shuttle::controller {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::shuttle::controller::testing::TempDir;
using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

v1::AuditRecord Record(const std::string& id, const std::string& host, const std::string& vm,
                       const std::string& object_vm, v1::Verdict verdict,
                       int64_t seconds = 1'700'000'000) {
  v1::AuditRecord r;
  r.set_id(id);
  r.set_host_id(host);
  *r.mutable_time() = TimeUtil::SecondsToTimestamp(seconds);
  r.mutable_interaction()->set_host_id(host);
  r.mutable_interaction()->set_subject_vm(vm);
  r.mutable_interaction()->set_object_vm(object_vm);
  r.mutable_interaction()->set_kind(v1::UNIX_CONNECT);
  r.mutable_interaction()->set_object_name("/run/db.sock");
  r.mutable_decision()->set_verdict(verdict);
  return r;
}

v1::UploadAuditRequest Batch(std::vector<v1::AuditRecord> records) {
  v1::UploadAuditRequest request;
  for (v1::AuditRecord& r : records) *request.add_records() = std::move(r);
  return request;
}

// Records what it is given.
class RecordingSubscriber final : public AuditSubscriber {
 public:
  void OnAuditRecord(const v1::AuditRecord& record, uint64_t sequence) override {
    ids.push_back(record.id());
    sequences.push_back(sequence);
  }
  void OnAuditLogClosed() override { closed = true; }

  std::vector<std::string> ids;
  std::vector<uint64_t> sequences;
  bool closed = false;
};

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, OpenSqliteStore(dir_.File("controller.db"), clock_));
    AuditLogOptions options;
    options.max_batch = 10;
    log_ = std::make_unique<AuditLog>(*store_, metrics_, options);
  }

  std::string Scrape() { return prometheus::TextSerializer().Serialize(metrics_.Collect()); }

  std::vector<std::string> StoredIds() {
    absl::StatusOr<AuditPage> page = log_->Query({}, 0, "");
    EXPECT_THAT(page, IsOk());
    std::vector<std::string> ids;
    if (page.ok()) {
      for (const v1::AuditRecord& r : page->records) ids.push_back(r.id());
    }
    return ids;
  }

  TempDir dir_;
  FakeClock clock_;
  prometheus::Registry metrics_;
  StorePtr store_;
  std::unique_ptr<AuditLog> log_;
};

TEST_F(AuditLogTest, IngestIsIdempotentAndCounted) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      v1::UploadAuditResponse first,
      log_->Ingest("web-1", Batch({Record("web-1/b/1", "web-1", "web", "db", v1::VERDICT_ALLOW),
                                   Record("web-1/b/2", "web-1", "web", "db", v1::VERDICT_DENY)})));
  EXPECT_EQ(first.accepted(), 2u);
  EXPECT_EQ(first.duplicates(), 0u);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      v1::UploadAuditResponse retry,
      log_->Ingest("web-1", Batch({Record("web-1/b/2", "web-1", "web", "db", v1::VERDICT_DENY),
                                   Record("web-1/b/3", "web-1", "web", "db", v1::VERDICT_DENY)})));
  EXPECT_EQ(retry.accepted(), 1u);
  EXPECT_EQ(retry.duplicates(), 1u);
  EXPECT_THAT(StoredIds(), ElementsAre("web-1/b/1", "web-1/b/2", "web-1/b/3"));
  const std::string text = Scrape();
  EXPECT_THAT(text, HasSubstr("shuttle_controller_audit_records_ingested_total 3"));
  EXPECT_THAT(text, HasSubstr("shuttle_controller_audit_duplicates_total 1"));
}

TEST_F(AuditLogTest, AnotherHostsRecordsAreRefusedWhole) {
  // The second record claims another host: nothing of the batch is stored.
  EXPECT_THAT(
      log_->Ingest("web-1", Batch({Record("web-1/b/1", "web-1", "web", "db", v1::VERDICT_ALLOW),
                                   Record("db-1/b/1", "db-1", "db", "web", v1::VERDICT_ALLOW)})),
      StatusIs(absl::StatusCode::kPermissionDenied,
               AllOf(HasSubstr("record #1"), HasSubstr("from host 'db-1'"),
                     HasSubstr("certificate names host 'web-1'"))));
  // The record's own host_id is right but its interaction names another host.
  v1::AuditRecord mixed = Record("web-1/b/2", "web-1", "web", "db", v1::VERDICT_ALLOW);
  mixed.mutable_interaction()->set_host_id("db-1");
  EXPECT_THAT(log_->Ingest("web-1", Batch({mixed})),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("from host 'db-1'")));
  // An unset host is not the caller's either.
  EXPECT_THAT(log_->Ingest("web-1", Batch({Record("x", "", "web", "db", v1::VERDICT_ALLOW)})),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("from host ''")));
  EXPECT_THAT(StoredIds(), IsEmpty());
}

TEST_F(AuditLogTest, MalformedBatchesAreRefused) {
  std::vector<v1::AuditRecord> eleven;
  for (int i = 0; i < 11; ++i) {
    eleven.push_back(Record(absl::StrCat("web-1/b/", i), "web-1", "web", "db", v1::VERDICT_ALLOW));
  }
  EXPECT_THAT(log_->Ingest("web-1", Batch(eleven)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("11 audit records")));
  EXPECT_THAT(log_->Ingest("web-1", Batch({Record("", "web-1", "web", "db", v1::VERDICT_ALLOW)})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("#0 has no id")));
  EXPECT_THAT(
      log_->Ingest("web-1",
                   Batch({Record(std::string(300, 'x'), "web-1", "web", "db", v1::VERDICT_ALLOW)})),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("300 bytes")));
  EXPECT_THAT(StoredIds(), IsEmpty());
  // An empty batch is fine and stores nothing.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::UploadAuditResponse empty, log_->Ingest("web-1", {}));
  EXPECT_EQ(empty.accepted() + empty.duplicates(), 0u);
}

TEST_F(AuditLogTest, SubscribersGetNewMatchingRecordsInOrder) {
  RecordingSubscriber all;
  RecordingSubscriber denied_db;
  v1::AuditFilter deny_filter;
  deny_filter.set_verdict(v1::VERDICT_DENY);
  deny_filter.set_vm("db");
  log_->Subscribe({}, &all);
  log_->Subscribe(deny_filter, &denied_db);
  EXPECT_THAT(Scrape(), HasSubstr("shuttle_controller_audit_followers 2"));

  ASSERT_THAT(log_->Ingest("web-1", Batch({Record("a", "web-1", "web", "db", v1::VERDICT_ALLOW),
                                           Record("b", "web-1", "web", "db", v1::VERDICT_DENY),
                                           Record("c", "web-1", "web", "host", v1::VERDICT_DENY)})),
              IsOk());
  // A retry delivers nothing again; only the new record.
  ASSERT_THAT(log_->Ingest("web-1", Batch({Record("b", "web-1", "web", "db", v1::VERDICT_DENY),
                                           Record("d", "web-1", "cache", "db", v1::VERDICT_DENY)})),
              IsOk());
  EXPECT_THAT(all.ids, ElementsAre("a", "b", "c", "d"));
  EXPECT_THAT(denied_db.ids, ElementsAre("b", "d"));
  ASSERT_EQ(all.sequences.size(), 4u);
  for (size_t i = 1; i < all.sequences.size(); ++i) {
    EXPECT_LT(all.sequences[i - 1], all.sequences[i]);
  }

  log_->Unsubscribe(&denied_db);
  EXPECT_THAT(Scrape(), HasSubstr("shuttle_controller_audit_followers 1"));
  ASSERT_THAT(log_->Ingest("web-1", Batch({Record("e", "web-1", "web", "db", v1::VERDICT_DENY)})),
              IsOk());
  EXPECT_THAT(denied_db.ids, ElementsAre("b", "d"));
  EXPECT_THAT(all.ids, ElementsAre("a", "b", "c", "d", "e"));

  // Refused batches deliver nothing.
  EXPECT_FALSE(
      log_->Ingest("web-1", Batch({Record("f", "db-1", "db", "web", v1::VERDICT_DENY)})).ok());
  EXPECT_EQ(all.ids.size(), 5u);

  log_->Close();
  EXPECT_TRUE(all.closed);
  EXPECT_FALSE(denied_db.closed);
  RecordingSubscriber late;
  log_->Subscribe({}, &late);
  EXPECT_TRUE(late.closed);
  log_->Unsubscribe(&late);
  log_->Unsubscribe(&all);
}

TEST_F(AuditLogTest, InMemoryFilterAgreesWithTheStore) {
  std::vector<v1::AuditRecord> records;
  const char* vms[] = {"web", "db", "host"};
  int n = 0;
  for (const char* host : {"web-1", "db-1"}) {
    for (const char* subject : vms) {
      for (const char* object : vms) {
        for (v1::Verdict verdict : {v1::VERDICT_ALLOW, v1::VERDICT_DENY}) {
          v1::AuditRecord r =
              Record(absl::StrCat(host, "/", n), host, subject, object, verdict, 1'700'000'000 + n);
          r.mutable_interaction()->set_kind(n % 3 == 0 ? v1::SIGNAL : v1::UNIX_CONNECT);
          records.push_back(r);
          ++n;
        }
      }
    }
  }
  for (const v1::AuditRecord& r : records) {
    ASSERT_THAT(log_->Ingest(r.host_id(), Batch({r})), IsOk());
  }
  std::vector<v1::AuditFilter> filters(6);
  filters[1].set_host_id("db-1");
  filters[2].set_vm("host");
  *filters[3].mutable_since() = TimeUtil::SecondsToTimestamp(1'700'000'020);
  filters[4].set_verdict(v1::VERDICT_DENY);
  filters[4].set_kind(v1::SIGNAL);
  filters[5].set_vm("db");
  filters[5].set_host_id("web-1");
  filters[5].set_verdict(v1::VERDICT_ALLOW);
  for (const v1::AuditFilter& filter : filters) {
    std::vector<std::string> expected;
    for (const v1::AuditRecord& r : records) {
      if (AuditFilterMatches(filter, r)) expected.push_back(r.id());
    }
    SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPage page, log_->Query(filter, 1000, ""));
    std::vector<std::string> got;
    for (const v1::AuditRecord& r : page.records) got.push_back(r.id());
    EXPECT_EQ(got, expected) << filter.DebugString();
    EXPECT_FALSE(expected.empty()) << filter.DebugString();
  }
}

}  // namespace
}  // namespace shuttle::controller
