// Tests of the audit uploader against an in-process AgentService (a real gRPC server on
// 127.0.0.1:0, insecure) that stores records by id the way the controller does: batching,
// retries after failures, a lost answer (sent twice, stored once), and resuming after a crash.
#include "agent/audit/uploader.h"

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "agent/audit/audit_testing.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace shuttle::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(30);

// UploadAudit only; everything else answers UNIMPLEMENTED.
class FakeAuditService final : public v1::AgentService::Service {
 public:
  FakeAuditService() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    address_ = absl::StrCat("127.0.0.1:", port);
  }
  ~FakeAuditService() override {
    Release();
    server_->Shutdown(std::chrono::system_clock::now());
  }

  grpc::Status UploadAudit(grpc::ServerContext* ctx, const v1::UploadAuditRequest* request,
                           v1::UploadAuditResponse* response) override {
    absl::MutexLock lock(&mu_);
    ++calls_;
    if (hang_) {
      auto released = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !hang_; };
      mu_.Await(absl::Condition(&released));
    }
    if (fail_ > 0) {
      --fail_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake controller: failing on purpose");
    }
    batches_.push_back(request->records_size());
    for (const v1::AuditRecord& record : request->records()) {
      if (stored_.emplace(record.id(), record).second) {
        response->set_accepted(response->accepted() + 1);
      } else {
        response->set_duplicates(response->duplicates() + 1);
        ++duplicates_;
      }
    }
    if (lose_answers_ > 0) {  // Stored, but the agent never hears so.
      --lose_answers_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake controller: answer lost");
    }
    return grpc::Status::OK;
  }

  std::string address() const { return address_; }
  void FailNext(int n) {
    absl::MutexLock lock(&mu_);
    fail_ = n;
  }
  void LoseNextAnswers(int n) {
    absl::MutexLock lock(&mu_);
    lose_answers_ = n;
  }
  void Hang() {
    absl::MutexLock lock(&mu_);
    hang_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    hang_ = false;
  }
  // Waits until `n` distinct records are stored.
  bool WaitStored(size_t n, absl::Duration timeout = kWait) {
    absl::MutexLock lock(&mu_);
    auto done = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stored_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  bool WaitCalls(int n, absl::Duration timeout = kWait) {
    absl::MutexLock lock(&mu_);
    auto done = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return calls_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  size_t stored() const {
    absl::MutexLock lock(&mu_);
    return stored_.size();
  }
  std::vector<std::string> ids() const {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> out;
    for (const auto& [id, record] : stored_) out.push_back(id);
    return out;
  }
  std::vector<int> batches() const {
    absl::MutexLock lock(&mu_);
    return batches_;
  }
  int duplicates() const {
    absl::MutexLock lock(&mu_);
    return duplicates_;
  }
  int calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  mutable absl::Mutex mu_;
  std::map<std::string, v1::AuditRecord> stored_ ABSL_GUARDED_BY(mu_);
  std::vector<int> batches_ ABSL_GUARDED_BY(mu_);
  int duplicates_ ABSL_GUARDED_BY(mu_) = 0;
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  int fail_ ABSL_GUARDED_BY(mu_) = 0;
  int lose_answers_ ABSL_GUARDED_BY(mu_) = 0;
  bool hang_ ABSL_GUARDED_BY(mu_) = false;
};

v1::AuditRecord MakeRecord(int i) {
  v1::AuditRecord record;
  record.mutable_interaction()->set_subject_vm("web");
  record.mutable_interaction()->set_kind(v1::TCP_CONNECT);
  record.mutable_interaction()->set_object_vm("db");
  record.mutable_interaction()->set_object_name(absl::StrCat("127.0.0.1:", 5000 + i));
  record.mutable_decision()->set_verdict(v1::VERDICT_DENY);
  record.mutable_decision()->set_scope(v1::CROSS_VM);
  return record;
}

class UploaderTest : public ::testing::Test {
 protected:
  ~UploaderTest() override {
    uploader_.reset();
    spool_.reset();
  }

  void OpenSpool(const std::string& boot) {
    AuditSpoolOptions options;
    options.dir = tmp_.path() + "/audit";
    options.host_id = "h1";
    options.boot_id = boot;
    SHUTTLE_ASSERT_OK_AND_ASSIGN(spool_, AuditSpool::Open(std::move(options), metrics_));
  }

  AuditUploaderOptions Options() {
    AuditUploaderOptions options;
    options.controller_address = controller_.address();
    options.credentials = grpc::InsecureChannelCredentials();
    options.linger = absl::ZeroDuration();
    // Retries come quickly: the sequence of delays is what backoff_test checks.
    options.backoff = BackoffOptions{absl::Milliseconds(1), absl::Milliseconds(5), 2.0};
    options.random = [] { return 0.5; };
    return options;
  }

  void StartUploader(AuditUploaderOptions options) {
    uploader_ = std::make_unique<AuditUploader>(std::move(options), *spool_, metrics_);
    uploader_->Start();
  }

  void SubmitN(int from, int n) {
    for (int i = from; i < from + n; ++i) spool_->Submit(MakeRecord(i));
    ASSERT_TRUE(spool_->Flush(kWait));
  }

  std::string Scrape() { return prometheus::TextSerializer().Serialize(metrics_.Collect()); }

  FakeAuditService controller_;
  testing::TempDir tmp_;
  prometheus::Registry metrics_;
  std::unique_ptr<AuditSpool> spool_;
  std::unique_ptr<AuditUploader> uploader_;
};

TEST_F(UploaderTest, UploadsInBatchesAndDeletesWhatWasAcknowledged) {
  OpenSpool("b1");
  SubmitN(0, 1200);
  StartUploader(Options());
  ASSERT_TRUE(controller_.WaitStored(1200));
  ASSERT_TRUE(
      uploader_->WaitFor([](const AuditUploaderState& s) { return s.uploaded == 1200; }, kWait));
  EXPECT_THAT(controller_.batches(), ElementsAre(500, 500, 200));
  EXPECT_EQ(controller_.duplicates(), 0);
  EXPECT_EQ(spool_->stats().unacked_records, 0u);
  const std::string metrics = Scrape();
  EXPECT_THAT(metrics, HasSubstr("shuttle_agent_audit_uploaded_total 1200"));
  EXPECT_THAT(metrics, HasSubstr("shuttle_agent_audit_upload_batches_total 3"));
  EXPECT_THAT(metrics, HasSubstr("shuttle_agent_audit_upload_errors_total 0"));
  EXPECT_THAT(metrics, HasSubstr("shuttle_agent_audit_spool_records 0"));
}

TEST_F(UploaderTest, WakesForRecordsSubmittedWhileIdle) {
  OpenSpool("b1");
  StartUploader(Options());
  SubmitN(0, 3);
  ASSERT_TRUE(controller_.WaitStored(3));
  SubmitN(3, 2);
  ASSERT_TRUE(controller_.WaitStored(5));
  ASSERT_TRUE(
      uploader_->WaitFor([](const AuditUploaderState& s) { return s.uploaded == 5; }, kWait));
  EXPECT_EQ(controller_.duplicates(), 0);
}

TEST_F(UploaderTest, AFullBatchDoesNotWaitOutTheLinger) {
  OpenSpool("b1");
  AuditUploaderOptions options = Options();
  options.linger = absl::Hours(1);
  options.max_batch_records = 4;
  StartUploader(options);
  SubmitN(0, 4);
  ASSERT_TRUE(
      uploader_->WaitFor([](const AuditUploaderState& s) { return s.uploaded == 4; }, kWait));
  // The first record alone did not go: the uploader lingered until the batch was full.
  EXPECT_THAT(controller_.batches(), ElementsAre(4));
  // Stop() is prompt while lingering for a batch that never fills.
  SubmitN(4, 1);
  uploader_->Stop();
  EXPECT_EQ(controller_.stored(), 4u);
  EXPECT_EQ(spool_->stats().unacked_records, 1u);
}

TEST_F(UploaderTest, RetriesWithBackoffAfterFailures) {
  OpenSpool("b1");
  controller_.FailNext(3);
  SubmitN(0, 10);
  StartUploader(Options());
  ASSERT_TRUE(controller_.WaitStored(10));
  ASSERT_TRUE(
      uploader_->WaitFor([](const AuditUploaderState& s) { return s.uploaded == 10; }, kWait));
  EXPECT_EQ(controller_.calls(), 4);
  EXPECT_EQ(controller_.duplicates(), 0);
  AuditUploaderState state = uploader_->state();
  EXPECT_EQ(state.errors, 3u);
  EXPECT_THAT(state.last_error, HasSubstr("failing on purpose"));
  EXPECT_THAT(Scrape(), HasSubstr("shuttle_agent_audit_upload_errors_total 3"));
}

TEST_F(UploaderTest, LostAnswerSendsTheBatchAgainAndTheControllerStoresItOnce) {
  OpenSpool("b1");
  controller_.LoseNextAnswers(1);
  SubmitN(0, 10);
  StartUploader(Options());
  ASSERT_TRUE(
      uploader_->WaitFor([](const AuditUploaderState& s) { return s.uploaded == 10; }, kWait));
  EXPECT_EQ(controller_.stored(), 10u);
  EXPECT_EQ(controller_.duplicates(), 10);  // The second send, recognised by id.
  EXPECT_THAT(controller_.batches(), ElementsAre(10, 10));
}

TEST_F(UploaderTest, ResumesAfterACrashWithOnlyUnacknowledgedRecords) {
  OpenSpool("b1");
  SubmitN(0, 20);
  StartUploader(Options());
  ASSERT_TRUE(
      uploader_->WaitFor([](const AuditUploaderState& s) { return s.uploaded == 20; }, kWait));
  // Records spooled while the controller is unreachable, then the agent dies.
  const int calls = controller_.calls();
  controller_.FailNext(1000);
  SubmitN(20, 7);
  ASSERT_TRUE(controller_.WaitCalls(calls + 1));
  uploader_.reset();
  spool_.reset();

  controller_.FailNext(0);
  OpenSpool("b2");
  EXPECT_EQ(spool_->stats().unacked_records, 7u);
  SubmitN(27, 3);
  StartUploader(Options());
  ASSERT_TRUE(controller_.WaitStored(30));
  ASSERT_TRUE(
      uploader_->WaitFor([](const AuditUploaderState& s) { return s.uploaded == 10; }, kWait));
  EXPECT_EQ(controller_.duplicates(), 0);  // Only what was not acknowledged went again.
  std::vector<std::string> ids = controller_.ids();
  EXPECT_EQ(
      std::count_if(ids.begin(), ids.end(),
                    [](const std::string& id) { return id.find("/b2/") != std::string::npos; }),
      3);
}

TEST_F(UploaderTest, StopCancelsAnUploadInFlight) {
  OpenSpool("b1");
  controller_.Hang();
  AuditUploaderOptions options = Options();
  options.rpc_timeout = absl::Hours(1);
  SubmitN(0, 2);
  StartUploader(options);
  ASSERT_TRUE(controller_.WaitCalls(1));
  uploader_->Stop();                         // Would take an hour if the call were not cancelled.
  EXPECT_EQ(uploader_->state().errors, 0u);  // A cancelled call on Stop() is not a failure.
  EXPECT_EQ(spool_->stats().unacked_records, 2u);
  controller_.Release();
}

}  // namespace
}  // namespace shuttle::agent
