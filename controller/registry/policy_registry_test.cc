#include "controller/registry/policy_registry.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status_matchers.h"
#include "controller/store/sqlite_store.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"

namespace shuttle::controller {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kWebDb[] = R"(name: webapp
mode: enforce
rules:
  - name: web-to-db
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/postgresql/.s.PGSQL.5432 }
    action: allow
)";

constexpr char kWebDbDenied[] = R"(name: webapp
mode: enforce
rules:
  - name: web-to-db
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/postgresql/.s.PGSQL.5432 }
    action: deny
)";

constexpr char kTwoErrors[] = R"(name: Bad Name
rules:
  - name: r1
    kind: unix-conect
    action: allow
)";

class PolicyRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/registry_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    Open();
  }
  void TearDown() override {
    registry_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Open() {
    registry_.reset();
    store_.reset();
    auto store = OpenSqliteStore(dir_ + "/controller.db", clock_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    metrics_ = std::make_unique<prometheus::Registry>();
    registry_ = std::make_unique<PolicyRegistry>(*store_, *metrics_);
    ASSERT_THAT(registry_->Load(), IsOk());
  }
  absl::StatusOr<v1::ApplyResponse> Apply(const std::string& source) {
    v1::ApplyRequest request;
    request.set_source(source);
    request.set_filename("test.yaml");
    return registry_->Apply(request, "alice");
  }
  v1::ExplainResponse ExplainWebToDb(const std::string& candidate = "") {
    v1::ExplainRequest request;
    v1::Interaction* i = request.mutable_interaction();
    i->set_subject_vm("web");
    i->set_program("/usr/bin/psql");
    i->set_kind(v1::UNIX_CONNECT);
    i->set_object_vm("db");
    i->set_object_name("/run/postgresql/.s.PGSQL.5432");
    request.set_candidate_source(candidate);
    auto response = registry_->Explain(request);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : v1::ExplainResponse();
  }

  FakeClock clock_;
  std::string dir_;
  StorePtr store_;
  std::unique_ptr<prometheus::Registry> metrics_;
  std::unique_ptr<PolicyRegistry> registry_;
};

TEST_F(PolicyRegistryTest, ApplyStoresRevisionAndRecompiles) {
  EXPECT_EQ(ExplainWebToDb().decision().verdict(), v1::VERDICT_DENY);  // Default: cross-vm.
  auto applied = Apply(kWebDb);
  ASSERT_TRUE(applied.ok()) << applied.status();
  EXPECT_EQ(applied->revision().revision(), 1u);
  EXPECT_EQ(applied->revision().fleet_version(), 1u);
  EXPECT_EQ(applied->revision().author(), "alice");
  EXPECT_FALSE(applied->unchanged());
  v1::ExplainResponse explained = ExplainWebToDb();
  EXPECT_EQ(explained.decision().verdict(), v1::VERDICT_ALLOW);
  EXPECT_EQ(explained.decision().rule(), "web-to-db");
  EXPECT_EQ(explained.decision().policy_version(), 1u);
}

TEST_F(PolicyRegistryTest, ReapplyingTheSameSourceWritesNothing) {
  ASSERT_TRUE(Apply(kWebDb).ok());
  auto again = Apply(kWebDb);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->unchanged());
  EXPECT_EQ(registry_->Snapshot()->bundle.version(), 1u);
}

TEST_F(PolicyRegistryTest, InvalidPolicyReportsEveryErrorAndWritesNothing) {
  auto applied = Apply(kTwoErrors);
  EXPECT_THAT(applied, StatusIs(absl::StatusCode::kInvalidArgument,
                                AllOf(HasSubstr("test.yaml:1:"), HasSubstr("test.yaml:4:"),
                                      HasSubstr("unix-conect"))));
  auto list = registry_->List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->policies_size(), 0);
  EXPECT_EQ(list->fleet_version(), 0u);
  v1::ValidateRequest request;
  request.set_source(kTwoErrors);
  request.set_filename("test.yaml");
  v1::ValidateResponse validated = registry_->Validate(request);
  EXPECT_FALSE(validated.valid());
  EXPECT_GE(validated.errors_size(), 2);
}

TEST_F(PolicyRegistryTest, HistoryDeleteAndRollback) {
  ASSERT_TRUE(Apply(kWebDb).ok());
  ASSERT_TRUE(Apply(kWebDbDenied).ok());
  EXPECT_EQ(ExplainWebToDb().decision().verdict(), v1::VERDICT_DENY);

  v1::RollbackRequest rollback;
  rollback.set_name("webapp");
  rollback.set_revision(1);
  auto rolled = registry_->Rollback(rollback, "bob");
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(rolled->revision().revision(), 3u);
  EXPECT_EQ(rolled->revision().change(), "rollback to 1");
  EXPECT_EQ(ExplainWebToDb().decision().verdict(), v1::VERDICT_ALLOW);

  v1::DeletePolicyRequest del;
  del.set_name("webapp");
  auto deleted = registry_->Delete(del, "bob");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_TRUE(deleted->revision().deleted());
  EXPECT_EQ(ExplainWebToDb().decision().verdict(), v1::VERDICT_DENY);
  EXPECT_THAT(registry_->Delete(del, "bob"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("webapp")));

  v1::PolicyHistoryRequest history_request;
  history_request.set_name("webapp");
  auto history = registry_->History(history_request);
  ASSERT_TRUE(history.ok());
  ASSERT_EQ(history->revisions_size(), 4);
  EXPECT_EQ(history->revisions(3).revision(), 4u);
  EXPECT_TRUE(history->revisions(3).deleted());

  rollback.set_revision(4);  // The tombstone has no content to restore.
  EXPECT_THAT(registry_->Rollback(rollback, "bob"),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("deletion")));
  rollback.set_revision(2);
  ASSERT_TRUE(registry_->Rollback(rollback, "bob").ok());
  EXPECT_EQ(ExplainWebToDb().decision().verdict(), v1::VERDICT_DENY);
  EXPECT_EQ(ExplainWebToDb().decision().rule(), "web-to-db");
}

TEST_F(PolicyRegistryTest, ExplainCandidateIsADryRun) {
  ASSERT_TRUE(Apply(kWebDbDenied).ok());
  v1::ExplainResponse explained = ExplainWebToDb(kWebDb);
  EXPECT_EQ(explained.decision().verdict(), v1::VERDICT_ALLOW);
  // Nothing was stored.
  EXPECT_EQ(ExplainWebToDb().decision().verdict(), v1::VERDICT_DENY);
  EXPECT_EQ(registry_->Snapshot()->bundle.version(), 1u);
}

TEST_F(PolicyRegistryTest, ExplainRejectsIncompleteInteractions) {
  v1::ExplainRequest request;
  request.mutable_interaction()->set_kind(v1::UNIX_CONNECT);
  EXPECT_THAT(registry_->Explain(request),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("subject_vm")));
  request.mutable_interaction()->set_subject_vm("web");
  request.mutable_interaction()->set_kind(v1::INTERACTION_KIND_UNSPECIFIED);
  EXPECT_THAT(registry_->Explain(request),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("kind")));
}

TEST_F(PolicyRegistryTest, SubscribersSeeEveryVersionInOrder) {
  std::vector<uint64_t> seen;
  registry_->Subscribe([&seen](std::shared_ptr<const FleetSnapshot> snapshot) {
    seen.push_back(snapshot->bundle.version());
  });
  ASSERT_TRUE(Apply(kWebDb).ok());
  ASSERT_TRUE(Apply(kWebDb).ok());  // Unchanged: no new snapshot.
  ASSERT_TRUE(Apply(kWebDbDenied).ok());
  EXPECT_EQ(seen, (std::vector<uint64_t>{1, 2}));
}

TEST_F(PolicyRegistryTest, StateSurvivesReopen) {
  ASSERT_TRUE(Apply(kWebDb).ok());
  Open();
  EXPECT_EQ(registry_->Snapshot()->bundle.version(), 1u);
  EXPECT_EQ(ExplainWebToDb().decision().verdict(), v1::VERDICT_ALLOW);
}

}  // namespace
}  // namespace shuttle::controller
