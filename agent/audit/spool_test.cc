// Tests of the audit spool: write, reopen, acknowledge, segment deletion, bounds and drops,
// torn and corrupt tails, and ids across restarts. Real files in a temporary directory.
#include "agent/audit/spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/audit/audit_testing.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace shuttle::agent {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(20);

v1::AuditRecord MakeRecord(int i) {
  v1::AuditRecord record;
  record.mutable_time()->set_seconds(1'700'000'000 + i);
  v1::Interaction* interaction = record.mutable_interaction();
  interaction->set_subject_vm("web");
  interaction->set_pid(1000 + i);
  interaction->set_program("/usr/bin/psql");
  interaction->set_kind(v1::UNIX_CONNECT);
  interaction->set_object_vm("db");
  interaction->set_object_name(absl::StrCat("/run/db.sock.", i));
  v1::Decision* decision = record.mutable_decision();
  decision->set_verdict(v1::VERDICT_ALLOW);
  decision->set_scope(v1::CROSS_VM);
  decision->set_policy("p");
  decision->set_rule("web-to-db");
  decision->set_policy_version(3);
  decision->set_enforced(true);
  return record;
}

// The sequence number of an id "<host>/<boot>/<seq>".
uint64_t Seq(const std::string& id) {
  std::vector<std::string> parts = absl::StrSplit(id, '/');
  uint64_t seq = 0;
  EXPECT_EQ(parts.size(), 3u) << id;
  EXPECT_TRUE(absl::SimpleAtoi(parts.back(), &seq)) << id;
  return seq;
}

std::string Boot(const std::string& id) {
  std::vector<std::string> parts = absl::StrSplit(id, '/');
  return parts.size() == 3 ? parts[1] : "";
}

class SpoolTest : public ::testing::Test {
 protected:
  SpoolTest() : dir_(tmp_.path() + "/audit") {}
  ~SpoolTest() override { spool_.reset(); }

  AuditSpoolOptions Options(std::string boot = "b1") {
    AuditSpoolOptions options;
    options.dir = dir_;
    options.host_id = "h1";
    options.boot_id = std::move(boot);
    return options;
  }

  void Open(AuditSpoolOptions options) {
    spool_.reset();
    SHUTTLE_ASSERT_OK_AND_ASSIGN(spool_, AuditSpool::Open(std::move(options), metrics_));
  }

  void SubmitN(int from, int n) {
    for (int i = from; i < from + n; ++i) spool_->Submit(MakeRecord(i));
    ASSERT_TRUE(spool_->Flush(kWait));
  }

  // Reads and acknowledges everything; returns the ids in order.
  std::vector<std::string> Drain(size_t max_records = 1000) {
    std::vector<std::string> ids;
    while (true) {
      absl::StatusOr<AuditBatch> batch = spool_->ReadBatch(max_records, 1 << 20);
      EXPECT_THAT(batch, IsOk());
      if (!batch.ok() || !batch->advances()) break;
      for (const v1::AuditRecord& r : batch->records) ids.push_back(r.id());
      EXPECT_THAT(spool_->Acknowledge(*batch), IsOk());
    }
    return ids;
  }

  std::vector<std::string> SegmentFiles() const {
    std::vector<std::string> out;
    for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
      std::string name = entry.path().filename();
      if (name.rfind("segment-", 0) == 0) out.push_back(entry.path());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  std::string Scrape() { return prometheus::TextSerializer().Serialize(metrics_.Collect()); }

  testing::TempDir tmp_;
  const std::string dir_;
  prometheus::Registry metrics_;
  std::unique_ptr<AuditSpool> spool_;
};

TEST_F(SpoolTest, StampsIdsAndHostAndReadsBackInOrder) {
  Open(Options());
  SubmitN(0, 10);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch batch, spool_->ReadBatch(100, 1 << 20));
  ASSERT_EQ(batch.records.size(), 10u);
  for (int i = 0; i < 10; ++i) {
    const v1::AuditRecord& r = batch.records[i];
    EXPECT_EQ(r.id(), absl::StrCat("h1/b1/", i + 1));
    EXPECT_EQ(r.host_id(), "h1");
    EXPECT_EQ(r.interaction().host_id(), "h1");
    EXPECT_EQ(r.interaction().object_name(), absl::StrCat("/run/db.sock.", i));
    EXPECT_EQ(r.decision().rule(), "web-to-db");
  }
  EXPECT_EQ(spool_->stats().unacked_records, 10u);
  EXPECT_THAT(Scrape(), HasSubstr("shuttle_agent_audit_spool_records 10"));
}

TEST_F(SpoolTest, UnacknowledgedRecordsAreReadAgainAfterReopen) {
  Open(Options());
  SubmitN(0, 10);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch first, spool_->ReadBatch(4, 1 << 20));
  ASSERT_EQ(first.records.size(), 4u);
  ASSERT_THAT(spool_->Acknowledge(first), IsOk());
  // Read, "sent", but the agent dies before acknowledging: the batch must come back.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch second, spool_->ReadBatch(3, 1 << 20));
  ASSERT_EQ(second.records.size(), 3u);

  Open(Options("b2"));
  EXPECT_EQ(spool_->stats().unacked_records, 6u);
  std::vector<std::string> ids = Drain();
  ASSERT_EQ(ids.size(), 6u);
  EXPECT_EQ(ids.front(), second.records[0].id());
  EXPECT_EQ(ids.back(), "h1/b1/10");
  EXPECT_EQ(spool_->stats().unacked_records, 0u);

  Open(Options("b3"));
  EXPECT_EQ(spool_->stats().unacked_records, 0u);
  EXPECT_TRUE(Drain().empty());
}

TEST_F(SpoolTest, AcknowledgeFromAStaleCursorIsRefused) {
  Open(Options());
  SubmitN(0, 4);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch a, spool_->ReadBatch(2, 1 << 20));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch b, spool_->ReadBatch(2, 1 << 20));
  ASSERT_THAT(spool_->Acknowledge(a), IsOk());
  EXPECT_THAT(spool_->Acknowledge(b),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("cursor")));
}

TEST_F(SpoolTest, RotatesSegmentsAndDeletesAcknowledgedOnes) {
  AuditSpoolOptions options = Options();
  options.max_bytes = 1 << 20;
  options.segment_bytes = 1024;  // A handful of records each.
  Open(options);
  SubmitN(0, 100);
  const size_t segments = SegmentFiles().size();
  EXPECT_GT(segments, 5u);
  EXPECT_EQ(spool_->stats().segments, segments);

  // Acknowledge the first half: the segments wholly before the cursor go.
  size_t acked = 0;
  while (acked < 50) {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch batch, spool_->ReadBatch(10, 1 << 20));
    ASSERT_EQ(batch.records.size(), 10u);
    ASSERT_THAT(spool_->Acknowledge(batch), IsOk());
    acked += batch.records.size();
  }
  EXPECT_LT(SegmentFiles().size(), segments);
  EXPECT_GT(SegmentFiles().size(), 1u);
  EXPECT_EQ(spool_->stats().unacked_records, 50u);

  std::vector<std::string> rest = Drain(7);
  ASSERT_EQ(rest.size(), 50u);
  EXPECT_EQ(rest.front(), "h1/b1/51");
  EXPECT_LE(SegmentFiles().size(), 1u);
  EXPECT_EQ(spool_->stats().disk_bytes,
            SegmentFiles().empty() ? 0 : std::filesystem::file_size(SegmentFiles()[0]));
}

TEST_F(SpoolTest, BatchesRespectRecordAndByteLimits) {
  Open(Options());
  SubmitN(0, 20);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch by_count, spool_->ReadBatch(5, 1 << 20));
  EXPECT_EQ(by_count.records.size(), 5u);
  const uint64_t one = by_count.payload_bytes / 5;
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch by_bytes, spool_->ReadBatch(100, 3 * one + one / 2));
  EXPECT_EQ(by_bytes.records.size(), 3u);
  // A byte limit below one record still yields one record, or nothing could ever be sent.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch tiny, spool_->ReadBatch(100, 1));
  EXPECT_EQ(tiny.records.size(), 1u);
}

TEST_F(SpoolTest, FullSpoolDropsAndCountsThenAcceptsAgainAfterAcknowledge) {
  AuditSpoolOptions options = Options();
  options.max_bytes = 4096;
  Open(options);
  SubmitN(0, 200);  // ~100 bytes each: far more than 4 KiB.
  AuditSpoolStats stats = spool_->stats();
  EXPECT_LE(stats.disk_bytes, 4096u);
  EXPECT_GT(stats.dropped_spool_full, 0u);
  EXPECT_EQ(stats.written + stats.dropped_spool_full, 200u);
  EXPECT_THAT(Scrape(), HasSubstr(absl::StrCat("shuttle_agent_audit_dropped_total{reason=\"spool_"
                                               "full\"} ",
                                               stats.dropped_spool_full)));

  std::vector<std::string> ids = Drain();
  EXPECT_EQ(ids.size(), stats.written);
  SubmitN(200, 5);
  EXPECT_EQ(spool_->stats().written, stats.written + 5);
  EXPECT_EQ(spool_->stats().dropped_spool_full, stats.dropped_spool_full);
}

TEST_F(SpoolTest, FullQueueDropsAndCounts) {
  AuditSpoolOptions options = Options();
  options.queue_records = 3;
  options.start_writer = false;
  Open(options);
  for (int i = 0; i < 10; ++i) spool_->Submit(MakeRecord(i));
  EXPECT_EQ(spool_->stats().dropped_queue_full, 7u);
  spool_->StartWriter();
  ASSERT_TRUE(spool_->Flush(kWait));
  std::vector<std::string> ids = Drain();
  // Dropped records used up their sequence numbers: the gap shows where records went missing.
  EXPECT_THAT(ids, ::testing::ElementsAre("h1/b1/1", "h1/b1/2", "h1/b1/3"));
  spool_->Submit(MakeRecord(10));
  ASSERT_TRUE(spool_->Flush(kWait));
  EXPECT_THAT(Drain(), ::testing::ElementsAre("h1/b1/11"));
}

TEST_F(SpoolTest, SubmitAfterStopIsCountedNotLost) {
  Open(Options());
  SubmitN(0, 2);
  spool_->Stop();
  spool_->Submit(MakeRecord(2));
  EXPECT_EQ(spool_->stats().dropped_stopped, 1u);
  EXPECT_EQ(Drain().size(), 2u);  // Reading still works after Stop().
}

TEST_F(SpoolTest, TornTailIsTruncatedOnReopenAndCounted) {
  Open(Options());
  SubmitN(0, 5);
  spool_.reset();
  ASSERT_EQ(SegmentFiles().size(), 1u);
  const std::string segment = SegmentFiles()[0];
  const uintmax_t good = std::filesystem::file_size(segment);
  {
    // Half a record: a header that promises more than follows.
    int fd = ::open(segment.c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(fd, 0);
    const char torn[] = {100, 0, 0, 0, 1, 2, 3, 4, 'x', 'y'};
    ASSERT_EQ(::write(fd, torn, sizeof(torn)), static_cast<ssize_t>(sizeof(torn)));
    ::close(fd);
  }
  Open(Options("b2"));
  EXPECT_EQ(std::filesystem::file_size(segment), good);
  EXPECT_EQ(spool_->stats().dropped_corrupt, 1u);
  EXPECT_THAT(Scrape(), HasSubstr("shuttle_agent_audit_dropped_total{reason=\"corrupt\"} 1"));
  SubmitN(5, 2);  // Appends after the truncation are read normally.
  std::vector<std::string> ids = Drain();
  ASSERT_EQ(ids.size(), 7u);
  EXPECT_EQ(ids[4], "h1/b1/5");
  EXPECT_EQ(ids[5], "h1/b2/6");
}

TEST_F(SpoolTest, RecordWithBadCrcEndsItsSegmentOnReopen) {
  Open(Options());
  SubmitN(0, 5);
  spool_.reset();
  const std::string segment = SegmentFiles()[0];
  const uintmax_t size = std::filesystem::file_size(segment);
  {
    // Flip a byte in the last record's payload.
    int fd = ::open(segment.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c = 0;
    ASSERT_EQ(::pread(fd, &c, 1, static_cast<off_t>(size - 3)), 1);
    c = static_cast<char>(c ^ 0x5a);
    ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(size - 3)), 1);
    ::close(fd);
  }
  Open(Options("b2"));
  EXPECT_LT(std::filesystem::file_size(segment), size);
  EXPECT_EQ(spool_->stats().dropped_corrupt, 1u);
  std::vector<std::string> ids = Drain();
  EXPECT_THAT(ids, ::testing::ElementsAre("h1/b1/1", "h1/b1/2", "h1/b1/3", "h1/b1/4"));
}

TEST_F(SpoolTest, CorruptionFoundWhileReadingSkipsTheRestOfTheSegment) {
  AuditSpoolOptions options = Options();
  options.segment_bytes = 1024;
  Open(options);
  SubmitN(0, 30);
  std::vector<std::string> files = SegmentFiles();
  ASSERT_GT(files.size(), 2u);
  const uintmax_t first_size = std::filesystem::file_size(files[0]);
  {
    // Bit rot in the first (sealed) segment, after the spool checked it: its second half.
    int fd = ::open(files[0].c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    const char junk[] = "\xff\xff\xff\xff";
    ASSERT_EQ(::pwrite(fd, junk, 4, static_cast<off_t>(first_size / 2)), 4);
    ::close(fd);
  }
  std::vector<std::string> ids = Drain();
  const AuditSpoolStats stats = spool_->stats();
  EXPECT_GT(stats.dropped_corrupt, 0u);
  EXPECT_EQ(ids.size() + stats.dropped_corrupt, 30u);
  EXPECT_EQ(ids.back(), "h1/b1/30");
  EXPECT_EQ(stats.unacked_records, 0u);
}

TEST_F(SpoolTest, IdsStayUniqueAndIncreasingAcrossReopens) {
  Open(Options("aaaa"));
  SubmitN(0, 5);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditBatch batch, spool_->ReadBatch(3, 1 << 20));
  ASSERT_THAT(spool_->Acknowledge(batch), IsOk());
  std::vector<std::string> ids;
  for (const v1::AuditRecord& r : batch.records) ids.push_back(r.id());

  Open(Options("bbbb"));
  SubmitN(5, 5);
  for (const std::string& id : Drain()) ids.push_back(id);

  // Everything acknowledged: sequence numbers still go on.
  Open(Options(""));  // A random boot id.
  EXPECT_EQ(spool_->boot_id().size(), 16u);
  SubmitN(10, 2);
  for (const std::string& id : Drain()) ids.push_back(id);

  ASSERT_EQ(ids.size(), 12u);
  std::set<std::string> unique(ids.begin(), ids.end());
  EXPECT_EQ(unique.size(), ids.size());
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_GT(Seq(ids[i]), Seq(ids[i - 1])) << ids[i];
  EXPECT_EQ(Boot(ids[0]), "aaaa");
  EXPECT_EQ(Boot(ids[4]), "aaaa");  // Unacknowledged, re-read after the reopen.
  EXPECT_EQ(Boot(ids[5]), "bbbb");
  EXPECT_EQ(Boot(ids[11]), spool_->boot_id());
}

TEST_F(SpoolTest, SecondSpoolOnTheSameDirectoryIsRefused) {
  Open(Options());
  EXPECT_THAT(AuditSpool::Open(Options("other"), metrics_),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("in use")));
}

TEST_F(SpoolTest, BadOptionsAreRefusedWithTheReason) {
  AuditSpoolOptions options = Options();
  options.max_bytes = 100;
  EXPECT_THAT(AuditSpool::Open(options, metrics_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("too small")));
  options = Options();
  options.host_id = "";
  EXPECT_THAT(AuditSpool::Open(options, metrics_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("host id")));
}

TEST_F(SpoolTest, UnparsableCursorMeansEverythingIsSentAgain) {
  Open(Options());
  SubmitN(0, 3);
  Drain();
  spool_.reset();
  {
    int fd = ::open((dir_ + "/cursor").c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, "garbage", 7), 7);
    ::close(fd);
  }
  Open(Options("b2"));
  // Nothing is lost; the controller drops what it already stored.
  EXPECT_EQ(Drain().size(), 3u);
}

TEST_F(SpoolTest, WaitForRecordsWakesOnWritesAndOnCancel) {
  Open(Options());
  std::atomic<bool> cancel{false};
  EXPECT_FALSE(spool_->WaitForRecords(1, 1, absl::Now(), cancel));
  std::thread waiter(
      [&] { EXPECT_TRUE(spool_->WaitForRecords(1, 1, absl::Now() + kWait, cancel)); });
  spool_->Submit(MakeRecord(0));
  waiter.join();

  std::thread canceled(
      [&] { EXPECT_FALSE(spool_->WaitForRecords(1000, 1 << 30, absl::InfiniteFuture(), cancel)); });
  cancel.store(true);
  spool_->WakeWaiters();
  canceled.join();
}

}  // namespace
}  // namespace shuttle::agent
