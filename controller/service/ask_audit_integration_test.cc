// Issue 4's `ask` and audit on the controller, over real gRPC with mTLS (service_testing.h):
// Authorize answered from standing answers kept through AnswerService, impersonation refused;
// UploadAudit idempotent and limited to the agent's own host; AuditService Query paging and
// Follow (replay, live records, falling behind, shutdown); roles; and the metrics.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "common/tls.h"
#include "controller/service/service_testing.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "shuttle/v1/agent.grpc.pb.h"
#include "shuttle/v1/answers.grpc.pb.h"
#include "shuttle/v1/audit.grpc.pb.h"

namespace shuttle::controller {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::shuttle::controller::testing::ControllerServerTest;
using ::shuttle::controller::testing::ScrapeValue;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

v1::AuthorizeRequest Ask(const std::string& host, const std::string& subject_vm,
                         const std::string& object) {
  v1::AuthorizeRequest req;
  v1::Interaction* i = req.mutable_interaction();
  i->set_host_id(host);
  i->set_subject_vm(subject_vm);
  i->set_pid(77);
  i->set_program("/usr/bin/app");
  i->set_kind(v1::UNIX_CONNECT);
  i->set_object_vm("db");
  i->set_object_name(object);
  req.set_policy("webapp");
  req.set_rule("ask-db");
  req.set_policy_version(3);
  return req;
}

v1::AuditRecord Record(const std::string& host, int n, const std::string& subject_vm = "web",
                       v1::Verdict verdict = v1::VERDICT_ALLOW) {
  v1::AuditRecord r;
  r.set_id(absl::StrCat(host, "/boot1/", n));
  r.set_host_id(host);
  *r.mutable_time() = TimeUtil::SecondsToTimestamp(1'700'000'000 + n);
  v1::Interaction* i = r.mutable_interaction();
  i->set_host_id(host);
  i->set_subject_vm(subject_vm);
  i->set_kind(v1::UNIX_CONNECT);
  i->set_object_vm("db");
  i->set_object_name("/run/db.sock");
  r.mutable_decision()->set_verdict(verdict);
  return r;
}

// The code and message of a call, as one string: "PERMISSION_DENIED: ...".
std::string Describe(const grpc::Status& s) {
  return absl::StrCat(s.error_code(), ": ", s.error_message());
}

class AskAuditTest : public ControllerServerTest {
 protected:
  grpc::Status Authorize(const std::shared_ptr<grpc::Channel>& channel,
                         const v1::AuthorizeRequest& req, v1::AuthorizeResponse* resp) {
    grpc::ClientContext ctx;
    return v1::AgentService::NewStub(channel)->Authorize(&ctx, req, resp);
  }

  grpc::Status Upload(const std::shared_ptr<grpc::Channel>& channel,
                      const std::vector<v1::AuditRecord>& records, v1::UploadAuditResponse* resp) {
    v1::UploadAuditRequest req;
    for (const v1::AuditRecord& r : records) *req.add_records() = r;
    grpc::ClientContext ctx;
    return v1::AgentService::NewStub(channel)->UploadAudit(&ctx, req, resp);
  }

  grpc::Status Query(const std::shared_ptr<grpc::Channel>& channel, const v1::AuditFilter& filter,
                     uint32_t limit, const std::string& token, v1::QueryAuditResponse* resp) {
    v1::QueryAuditRequest req;
    *req.mutable_filter() = filter;
    req.set_limit(limit);
    req.set_page_token(token);
    grpc::ClientContext ctx;
    return v1::AuditService::NewStub(channel)->Query(&ctx, req, resp);
  }

  grpc::Status PutAnswer(const std::shared_ptr<grpc::Channel>& channel,
                         const v1::StandingAnswer& answer, v1::PutAnswerResponse* resp) {
    v1::PutAnswerRequest req;
    *req.mutable_answer() = answer;
    grpc::ClientContext ctx;
    return v1::AnswerService::NewStub(channel)->Put(&ctx, req, resp);
  }

  // A channel with a viewer certificate issued by the controller CA.
  std::shared_ptr<grpc::Channel> ViewerChannel() {
    EXPECT_THAT(tls::IssueClientCert(pki_, "viewer", "alice", dir_.path()),
                shuttle::testing::IsOk());
    return Channel(dir_.File("alice.pem"), dir_.File("alice.key"));
  }
};

v1::StandingAnswer AllowWebToRun() {
  v1::StandingAnswer a;
  a.set_subject_vm("web");
  a.set_kind(v1::UNIX_CONNECT);
  a.set_object("/run/*");
  a.set_verdict(v1::VERDICT_ALLOW);
  a.mutable_ttl()->set_seconds(120);
  a.set_note("INC-1");
  return a;
}

TEST_F(AskAuditTest, AuthorizeAnswersFromStandingAnswers) {
  std::shared_ptr<grpc::Channel> agent = EnrolledChannel("web-1");
  v1::AuthorizeResponse resp;
  grpc::Status s = Authorize(agent, Ask("web-1", "web", "/run/db.sock"), &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(resp.decision().verdict(), v1::VERDICT_DENY);
  EXPECT_EQ(resp.decision().reason(),
            "no standing answer for web unix-connect db:/run/db.sock: denied");

  v1::PutAnswerResponse put;
  s = PutAnswer(admin_, AllowWebToRun(), &put);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_THAT(put.answer().id(), StartsWith("ans-"));
  EXPECT_EQ(put.answer().author(), "admin");
  EXPECT_EQ(put.answer().object_vm(), "*");

  s = Authorize(agent, Ask("web-1", "web", "/run/db.sock"), &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  const v1::Decision& d = resp.decision();
  EXPECT_EQ(d.verdict(), v1::VERDICT_ALLOW);
  EXPECT_EQ(d.scope(), v1::CROSS_VM);
  EXPECT_EQ(d.policy(), "webapp");
  EXPECT_EQ(d.rule(), "ask-db");
  EXPECT_EQ(d.policy_version(), 3u);
  EXPECT_THAT(d.reason(), HasSubstr(put.answer().id()));
  EXPECT_EQ(resp.ttl().seconds(), 120);
  // Another VM has no answer.
  s = Authorize(agent, Ask("web-1", "cache", "/run/db.sock"), &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(resp.decision().verdict(), v1::VERDICT_DENY);

  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_authorize_total{outcome=\"allow\"}"), 1);
  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_authorize_total{outcome=\"deny\"}"), 2);
  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_authorize_duration_seconds_count"), 3);
}

TEST_F(AskAuditTest, AuthorizeRefusesImpersonationAndNonAgents) {
  std::shared_ptr<grpc::Channel> agent = EnrolledChannel("web-1");
  ASSERT_TRUE(EnrolledChannel("db-1") != nullptr);
  v1::AuthorizeResponse resp;
  grpc::Status s = Authorize(agent, Ask("db-1", "web", "/run/db.sock"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(s);
  EXPECT_THAT(s.error_message(), AllOf(HasSubstr("certificate names host 'web-1'"),
                                       HasSubstr("interaction is from host 'db-1'")));
  s = Authorize(admin_, Ask("web-1", "web", "/run/db.sock"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("role admin"));
  s = Authorize(anonymous_, Ask("web-1", "web", "/run/db.sock"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(s);
  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_authorize_total{outcome=\"error\"}"), 3);
  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_authorize_total{outcome=\"allow\"}"), 0);
}

TEST_F(AskAuditTest, AnswerServiceRolesAndErrors) {
  std::shared_ptr<grpc::Channel> viewer = ViewerChannel();
  std::shared_ptr<grpc::Channel> agent = EnrolledChannel("web-1");
  v1::PutAnswerResponse put;
  grpc::Status s = PutAnswer(viewer, AllowWebToRun(), &put);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(s);
  s = PutAnswer(agent, AllowWebToRun(), &put);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(s);
  v1::StandingAnswer redirect = AllowWebToRun();
  redirect.set_verdict(v1::VERDICT_REDIRECT);
  s = PutAnswer(admin_, redirect, &put);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("verdict must be allow or deny"));
  v1::StandingAnswer named = AllowWebToRun();
  named.set_id("web-run");
  s = PutAnswer(admin_, named, &put);
  ASSERT_TRUE(s.ok()) << Describe(s);

  {
    grpc::ClientContext ctx;
    v1::ListAnswersResponse list;
    s = v1::AnswerService::NewStub(viewer)->List(&ctx, {}, &list);
    ASSERT_TRUE(s.ok()) << Describe(s);
    ASSERT_EQ(list.answers_size(), 1);
    EXPECT_EQ(list.answers(0).id(), "web-run");
    EXPECT_EQ(list.answers(0).note(), "INC-1");
  }
  v1::DeleteAnswerRequest del;
  del.set_id("web-run");
  {
    grpc::ClientContext ctx;
    v1::DeleteAnswerResponse removed;
    s = v1::AnswerService::NewStub(viewer)->Delete(&ctx, del, &removed);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(s);
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteAnswerResponse removed;
    s = v1::AnswerService::NewStub(admin_)->Delete(&ctx, del, &removed);
    ASSERT_TRUE(s.ok()) << Describe(s);
    EXPECT_EQ(removed.answer().id(), "web-run");
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteAnswerResponse removed;
    s = v1::AnswerService::NewStub(admin_)->Delete(&ctx, del, &removed);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Describe(s);
  }
}

TEST_F(AskAuditTest, UploadAuditIsIdempotentAndOwnHostOnly) {
  std::shared_ptr<grpc::Channel> web = EnrolledChannel("web-1");
  v1::UploadAuditResponse resp;
  grpc::Status s = Upload(web, {Record("web-1", 1), Record("web-1", 2), Record("web-1", 3)}, &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(resp.accepted(), 3u);
  EXPECT_EQ(resp.duplicates(), 0u);
  // A retry after a lost answer: nothing is stored twice.
  s = Upload(web, {Record("web-1", 2), Record("web-1", 3), Record("web-1", 4)}, &resp);
  ASSERT_TRUE(s.ok()) << Describe(s);
  EXPECT_EQ(resp.accepted(), 1u);
  EXPECT_EQ(resp.duplicates(), 2u);

  // Another host's record in the batch: refused whole.
  s = Upload(web, {Record("web-1", 5), Record("db-1", 1)}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(s);
  EXPECT_THAT(s.error_message(),
              AllOf(HasSubstr("from host 'db-1'"), HasSubstr("certificate names host 'web-1'")));
  // Operators can't upload.
  s = Upload(admin_, {Record("admin", 1)}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(s);
  // Too big a batch.
  std::vector<v1::AuditRecord> big;
  for (int i = 0; i < 5001; ++i) big.push_back(Record("web-1", 100 + i));
  s = Upload(web, big, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("5001"));

  v1::QueryAuditResponse page;
  s = Query(admin_, {}, 0, "", &page);
  ASSERT_TRUE(s.ok()) << Describe(s);
  std::vector<std::string> ids;
  for (const v1::AuditRecord& r : page.records()) ids.push_back(r.id());
  EXPECT_THAT(ids, ElementsAre("web-1/boot1/1", "web-1/boot1/2", "web-1/boot1/3", "web-1/boot1/4"));
  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_audit_records_ingested_total"), 4);
  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_audit_duplicates_total"), 2);
}

TEST_F(AskAuditTest, QueryPagesAndFilters) {
  std::shared_ptr<grpc::Channel> web = EnrolledChannel("web-1");
  std::shared_ptr<grpc::Channel> db = EnrolledChannel("db-1");
  std::vector<v1::AuditRecord> batch;
  for (int i = 0; i < 25; ++i) batch.push_back(Record("web-1", i));
  v1::UploadAuditResponse resp;
  ASSERT_TRUE(Upload(web, batch, &resp).ok());
  ASSERT_TRUE(Upload(db, {Record("db-1", 1, "db", v1::VERDICT_DENY)}, &resp).ok());

  std::shared_ptr<grpc::Channel> viewer = ViewerChannel();
  std::vector<std::string> ids;
  std::string token;
  int pages = 0;
  do {
    v1::QueryAuditResponse page;
    grpc::Status s = Query(viewer, {}, 10, token, &page);
    ASSERT_TRUE(s.ok()) << Describe(s);
    for (const v1::AuditRecord& r : page.records()) ids.push_back(r.id());
    token = page.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(ids.size(), 26u);
  EXPECT_EQ(ids.front(), "web-1/boot1/0");
  EXPECT_EQ(ids.back(), "db-1/boot1/1");

  v1::AuditFilter filter;
  filter.set_host_id("db-1");
  v1::QueryAuditResponse page;
  ASSERT_TRUE(Query(viewer, filter, 0, "", &page).ok());
  ASSERT_EQ(page.records_size(), 1);
  EXPECT_EQ(page.records(0).decision().verdict(), v1::VERDICT_DENY);

  grpc::Status s = Query(viewer, {}, 10001, "", &page);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  s = Query(viewer, {}, 10, "garbage", &page);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("page token"));
  s = Query(web, {}, 10, "", &page);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Describe(s);
  s = Query(anonymous_, {}, 10, "", &page);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(s);
}

TEST_F(AskAuditTest, FollowReceivesRecordsIngestedAfterItStarted) {
  std::shared_ptr<grpc::Channel> web = EnrolledChannel("web-1");
  v1::UploadAuditResponse resp;
  ASSERT_TRUE(Upload(web, {Record("web-1", 1)}, &resp).ok());  // Before: not followed.

  v1::FollowAuditRequest req;
  req.mutable_filter()->set_verdict(v1::VERDICT_DENY);
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::AuditRecord>> reader =
      v1::AuditService::NewStub(ViewerChannel())->Follow(&ctx, req);
  reader->WaitForInitialMetadata();  // From here on nothing ingested is missed.
  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_audit_followers"), 1);

  ASSERT_TRUE(Upload(web,
                     {Record("web-1", 2, "web", v1::VERDICT_DENY), Record("web-1", 3),
                      Record("web-1", 4, "web", v1::VERDICT_DENY)},
                     &resp)
                  .ok());
  // A retried record is not sent again; the next new one is.
  ASSERT_TRUE(Upload(web,
                     {Record("web-1", 2, "web", v1::VERDICT_DENY),
                      Record("web-1", 5, "web", v1::VERDICT_DENY)},
                     &resp)
                  .ok());
  v1::AuditRecord record;
  std::vector<std::string> ids;
  for (int i = 0; i < 3 && reader->Read(&record); ++i) ids.push_back(record.id());
  EXPECT_THAT(ids, ElementsAre("web-1/boot1/2", "web-1/boot1/4", "web-1/boot1/5"));

  ctx.TryCancel();
  while (reader->Read(&record)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

// Small replay pages and follower queues, to reach page boundaries and the queue limit.
class SmallQueuesTest : public AskAuditTest {
 protected:
  void SetUp() override {
    audit_options_.replay_page = 3;
    audit_options_.follower_queue_limit = 50;
    AskAuditTest::SetUp();
  }
};

TEST_F(SmallQueuesTest, FollowWithSinceReplaysThenGoesLive) {
  std::shared_ptr<grpc::Channel> web = EnrolledChannel("web-1");
  std::vector<v1::AuditRecord> before;
  for (int i = 0; i < 7; ++i) before.push_back(Record("web-1", i));
  v1::UploadAuditResponse resp;
  ASSERT_TRUE(Upload(web, before, &resp).ok());

  v1::FollowAuditRequest req;
  *req.mutable_filter()->mutable_since() = TimeUtil::SecondsToTimestamp(1'700'000'002);
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::AuditRecord>> reader =
      v1::AuditService::NewStub(admin_)->Follow(&ctx, req);
  v1::AuditRecord record;
  std::vector<std::string> ids;
  // The first replayed record shows the stream is up; then new records follow the replay.
  ASSERT_TRUE(reader->Read(&record));
  ids.push_back(record.id());
  ASSERT_TRUE(
      Upload(web, {Record("web-1", 6), Record("web-1", 7), Record("web-1", 8)}, &resp).ok());
  EXPECT_EQ(resp.accepted(), 2u);  // 6 was stored before.
  while (ids.size() < 7 && reader->Read(&record)) ids.push_back(record.id());
  EXPECT_THAT(ids, ElementsAre("web-1/boot1/2", "web-1/boot1/3", "web-1/boot1/4", "web-1/boot1/5",
                               "web-1/boot1/6", "web-1/boot1/7", "web-1/boot1/8"));

  // Shutdown ends the stream with UNAVAILABLE.
  audit_->Close();
  while (reader->Read(&record)) {
  }
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(s);
  EXPECT_THAT(s.error_message(), HasSubstr("shutting down"));
}

TEST_F(AskAuditTest, FollowRolesAreChecked) {
  std::shared_ptr<grpc::Channel> web = EnrolledChannel("web-1");
  for (const auto& [channel, code] :
       std::vector<std::pair<std::shared_ptr<grpc::Channel>, grpc::StatusCode>>{
           {web, grpc::StatusCode::PERMISSION_DENIED},
           {anonymous_, grpc::StatusCode::UNAUTHENTICATED}}) {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<v1::AuditRecord>> reader =
        v1::AuditService::NewStub(channel)->Follow(&ctx, {});
    v1::AuditRecord record;
    EXPECT_FALSE(reader->Read(&record));
    grpc::Status s = reader->Finish();
    EXPECT_EQ(s.error_code(), code) << Describe(s);
  }
  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_audit_followers"), 0);
}

// A follower that stops reading is ended; ingestion goes on at full speed meanwhile.
TEST_F(SmallQueuesTest, FallingBehindEndsTheStreamNotIngestion) {
  std::shared_ptr<grpc::Channel> web = EnrolledChannel("web-1");
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<v1::AuditRecord>> reader =
      v1::AuditService::NewStub(admin_)->Follow(&ctx, v1::FollowAuditRequest());
  reader->WaitForInitialMetadata();

  // Never read: once HTTP/2 flow control stops the writes, the queue fills up. Big records fill
  // the windows sooner; the loop is bounded by what must certainly overflow them (64 MB).
  int n = 0;
  int batches = 0;
  for (; batches < 160 &&
         ScrapeValue(metrics_, "shuttle_controller_audit_follow_overflows_total") < 1;
       ++batches) {
    std::vector<v1::AuditRecord> batch;
    for (int i = 0; i < 100; ++i) {
      v1::AuditRecord r = Record("web-1", n++);
      r.mutable_interaction()->set_object_name(std::string(4096, 'x'));
      batch.push_back(std::move(r));
    }
    v1::UploadAuditResponse resp;
    grpc::Status s = Upload(web, batch, &resp);
    ASSERT_TRUE(s.ok()) << Describe(s);
    ASSERT_EQ(resp.accepted(), 100u);
  }
  EXPECT_EQ(ScrapeValue(metrics_, "shuttle_controller_audit_follow_overflows_total"), 1)
      << "no overflow after " << batches << " batches";

  v1::AuditRecord record;
  int received = 0;
  while (reader->Read(&record)) ++received;
  EXPECT_LT(received, n);
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(s);
  EXPECT_THAT(s.error_message(), AllOf(HasSubstr("fell behind"), HasSubstr("since")));
}

}  // namespace
}  // namespace shuttle::controller
