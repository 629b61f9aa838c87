// Standing answers: glob matching, validation, which answer wins (precedence), expiry, and
// AnswerAuthority's Put/List/Delete and Authorize (ttl, reasons, impersonation) over a real
// SQLite store and a FakeClock.
#include "controller/authz/answers.h"

#include <memory>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/status_matchers.h"
#include "controller/store/sqlite_store.h"
#include "controller/store/store_testing.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"

namespace shuttle::controller {
namespace {

using ::google::protobuf::util::TimeUtil;
using ::shuttle::controller::testing::TempDir;
using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(GlobMatchTest, Cases) {
  struct Case {
    const char* pattern;
    const char* name;
    bool match;
  } cases[] = {
      {"/run/db.sock", "/run/db.sock", true},
      {"/run/db.sock", "/run/db.sock2", false},
      {"/run/db.sock", "/run/db.soc", false},
      {"*", "", true},
      {"*", "/anything/at/all", true},
      {"/run/*", "/run/", true},
      {"/run/*", "/run/a/b/c", true},  // '*' crosses '/'.
      {"/run/*", "/ru", false},
      {"*.sock", "/run/db.sock", true},
      {"*.sock", "/run/db.sock.bak", false},
      {"/run/*/db.sock", "/run/x/y/db.sock", true},
      {"/run/*/db.sock", "/run/db.sock", false},
      {"a*b*c", "aXbYc", true},
      {"a*b*c", "abc", true},
      {"a*b*c", "acb", false},
      {"a**b", "ab", true},
      {"127.0.0.1:*", "127.0.0.1:5432", true},
      {"127.0.0.1:*", "127.0.0.2:5432", false},
      {"*aaa*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(GlobMatch(c.pattern, c.name), c.match) << c.pattern << " vs " << c.name;
  }
}

const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

v1::StandingAnswer Answer(const std::string& id, const std::string& subject_vm,
                          const std::string& object, v1::Verdict verdict,
                          const std::string& object_vm = "*",
                          v1::InteractionKind kind = v1::UNIX_CONNECT) {
  v1::StandingAnswer a;
  a.set_id(id);
  a.set_subject_vm(subject_vm);
  a.set_kind(kind);
  a.set_object_vm(object_vm);
  a.set_object(object);
  a.set_verdict(verdict);
  return a;
}

v1::Interaction Ask(const std::string& subject_vm, const std::string& object,
                    const std::string& object_vm = "db",
                    v1::InteractionKind kind = v1::UNIX_CONNECT) {
  v1::Interaction i;
  i.set_host_id("web-1");
  i.set_subject_vm(subject_vm);
  i.set_kind(kind);
  i.set_object_vm(object_vm);
  i.set_object_name(object);
  return i;
}

// The id of the winning answer, or "none".
std::string Winner(const AnswerSet& set, const v1::Interaction& interaction,
                   absl::Time now = kNow) {
  const v1::StandingAnswer* a = set.Match(interaction, now);
  return a == nullptr ? "none" : a->id();
}

TEST(AnswerSetTest, MostSpecificWins) {
  AnswerSet set({
      Answer("any-any", "*", "*", v1::VERDICT_DENY),
      Answer("any-run", "*", "/run/*", v1::VERDICT_ALLOW),
      Answer("web-run", "web", "/run/*", v1::VERDICT_ALLOW),
      Answer("web-pg", "web", "/run/postgresql/*", v1::VERDICT_DENY),
      Answer("web-exact", "web", "/run/postgresql/.s.PGSQL.5432", v1::VERDICT_ALLOW),
      Answer("any-exact", "*", "/run/cache.sock", v1::VERDICT_ALLOW),
  });
  // Exact subject and exact object.
  EXPECT_EQ(Winner(set, Ask("web", "/run/postgresql/.s.PGSQL.5432")), "web-exact");
  // Exact subject beats "*", even when the "*" answer names the object exactly.
  EXPECT_EQ(Winner(set, Ask("web", "/run/cache.sock")), "web-run");
  // Among globs of one subject, the longer literal part wins.
  EXPECT_EQ(Winner(set, Ask("web", "/run/postgresql/other")), "web-pg");
  // Another subject falls to the "*" answers: exact object first, then the longer glob.
  EXPECT_EQ(Winner(set, Ask("cache", "/run/cache.sock")), "any-exact");
  EXPECT_EQ(Winner(set, Ask("cache", "/run/x")), "any-run");
  EXPECT_EQ(Winner(set, Ask("cache", "/tmp/x")), "any-any");
  // Another kind: nothing.
  EXPECT_EQ(Winner(set, Ask("web", "/run/x", "db", v1::SIGNAL)), "none");
}

TEST(AnswerSetTest, ObjectVmAndTies) {
  AnswerSet set({
      Answer("db-allow", "web", "/run/*", v1::VERDICT_ALLOW, "db"),
      Answer("any-deny", "web", "/run/*", v1::VERDICT_DENY, "*"),
      Answer("prefix", "web", "/srv/*", v1::VERDICT_ALLOW),
      Answer("suffix", "web", "*.sock", v1::VERDICT_DENY),  // As many literal characters.
      Answer("exact-any", "web", "/x", v1::VERDICT_ALLOW, "*"),
      Answer("exact-db", "web", "/x", v1::VERDICT_DENY, "db"),
  });
  // Same pattern: an exact object VM beats "*".
  EXPECT_EQ(Winner(set, Ask("web", "/run/a", "db")), "db-allow");
  EXPECT_EQ(Winner(set, Ask("web", "/run/a", "cache")), "any-deny");
  // An object VM the agent does not know matches only "*".
  EXPECT_EQ(Winner(set, Ask("web", "/run/a", "")), "any-deny");
  // Equal specificity: deny wins.
  EXPECT_EQ(Winner(set, Ask("web", "/srv/a.sock")), "suffix");
  EXPECT_EQ(Winner(set, Ask("web", "/x", "db")), "exact-db");
  EXPECT_EQ(Winner(set, Ask("web", "/x", "cache")), "exact-any");
}

TEST(AnswerSetTest, ExpiredAnswersDoNotMatch) {
  v1::StandingAnswer temporary = Answer("temp", "web", "/run/db.sock", v1::VERDICT_ALLOW);
  *temporary.mutable_expires() = TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(kNow) + 60);
  AnswerSet set({temporary, Answer("fallback", "*", "*", v1::VERDICT_DENY)});
  EXPECT_EQ(Winner(set, Ask("web", "/run/db.sock"), kNow), "temp");
  EXPECT_EQ(Winner(set, Ask("web", "/run/db.sock"), kNow + absl::Seconds(59)), "temp");
  EXPECT_EQ(Winner(set, Ask("web", "/run/db.sock"), kNow + absl::Seconds(60)), "fallback");
  EXPECT_THAT(set.answers().size(), 2u);
  EXPECT_EQ(set.answers()[0].id(), "fallback");  // By id.
}

TEST(ValidateStandingAnswerTest, NormalizesAndRefuses) {
  AnswerOptions options;
  v1::StandingAnswer a = Answer("", "", "/run/*", v1::VERDICT_ALLOW, "");
  ASSERT_THAT(ValidateStandingAnswer(a, kNow, options), IsOk());
  EXPECT_EQ(a.subject_vm(), "*");
  EXPECT_EQ(a.object_vm(), "*");

  auto refused = [&](v1::StandingAnswer answer, const char* what) {
    EXPECT_THAT(ValidateStandingAnswer(answer, kNow, options),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(what)))
        << answer.DebugString();
  };
  refused(Answer("-x", "web", "/a", v1::VERDICT_ALLOW), "answer id");
  refused(Answer(std::string(65, 'a'), "web", "/a", v1::VERDICT_ALLOW), "answer id");
  refused(Answer("a", "we b", "/a", v1::VERDICT_ALLOW), "subject_vm");
  refused(Answer("a", "web", "/a", v1::VERDICT_ALLOW, "d/b"), "object_vm");
  refused(Answer("a", "web", "", v1::VERDICT_ALLOW), "object is required");
  refused(Answer("a", "web", "/a", v1::VERDICT_REDIRECT), "verdict must be allow or deny");
  refused(Answer("a", "web", "/a", v1::VERDICT_UNSPECIFIED), "verdict");
  refused(Answer("a", "web", "/a", v1::VERDICT_ALLOW, "*", v1::INTERACTION_KIND_UNSPECIFIED),
          "kind is required");
  v1::StandingAnswer long_ttl = Answer("a", "web", "/a", v1::VERDICT_ALLOW);
  *long_ttl.mutable_ttl() = TimeUtil::SecondsToDuration(25 * 3600);
  refused(long_ttl, "ttl must be in");
  v1::StandingAnswer zero_ttl = long_ttl;
  zero_ttl.mutable_ttl()->set_seconds(0);
  refused(zero_ttl, "ttl must be in");
  v1::StandingAnswer past = Answer("a", "web", "/a", v1::VERDICT_ALLOW);
  *past.mutable_expires() = TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(kNow));
  refused(past, "not in the future");
  v1::StandingAnswer noted = Answer("a", "web", "/a", v1::VERDICT_ALLOW);
  noted.set_note(std::string(2000, 'n'));
  refused(noted, "note");
  // "host" is a VM here.
  v1::StandingAnswer host = Answer("a", "host", "/a", v1::VERDICT_ALLOW, "host");
  EXPECT_THAT(ValidateStandingAnswer(host, kNow, options), IsOk());
}

class AnswerAuthorityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    clock_.Set(kNow);
    SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, OpenSqliteStore(dir_.File("controller.db"), clock_));
    authority_ = std::make_unique<AnswerAuthority>(*store_, clock_);
    ASSERT_THAT(authority_->Load(), IsOk());
  }

  v1::AuthorizeRequest Request(const std::string& subject_vm, const std::string& object) {
    v1::AuthorizeRequest request;
    *request.mutable_interaction() = Ask(subject_vm, object);
    request.set_policy("webapp");
    request.set_rule("ask-db");
    request.set_policy_version(12);
    return request;
  }

  TempDir dir_;
  FakeClock clock_;
  StorePtr store_;
  std::unique_ptr<AnswerAuthority> authority_;
};

TEST_F(AnswerAuthorityTest, NoAnswerDenies) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::AuthorizeResponse r,
                               authority_->Authorize("web-1", Request("web", "/run/db.sock")));
  EXPECT_EQ(r.decision().verdict(), v1::VERDICT_DENY);
  EXPECT_EQ(r.decision().reason(),
            "no standing answer for web unix-connect db:/run/db.sock: denied");
  EXPECT_EQ(r.decision().scope(), v1::CROSS_VM);
  EXPECT_EQ(r.decision().policy(), "webapp");
  EXPECT_EQ(r.decision().rule(), "ask-db");
  EXPECT_EQ(r.decision().policy_version(), 12u);
  EXPECT_TRUE(r.decision().enforced());
  EXPECT_EQ(r.ttl().seconds(), 30);
}

TEST_F(AnswerAuthorityTest, PutDecidesAndDeleteUndecides) {
  v1::StandingAnswer allow = Answer("", "web", "/run/*", v1::VERDICT_ALLOW, "db");
  *allow.mutable_ttl() = TimeUtil::SecondsToDuration(300);
  allow.set_note("INC-7");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PutAnswerResponse put, authority_->Put(allow, "alice"));
  EXPECT_FALSE(put.replaced());
  EXPECT_THAT(put.answer().id(), StartsWith("ans-"));
  EXPECT_EQ(put.answer().author(), "alice");
  EXPECT_EQ(put.answer().created().seconds(), absl::ToUnixSeconds(kNow));
  const std::string id = put.answer().id();

  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::AuthorizeResponse r,
                               authority_->Authorize("web-1", Request("web", "/run/db.sock")));
  EXPECT_EQ(r.decision().verdict(), v1::VERDICT_ALLOW);
  EXPECT_EQ(r.decision().reason(),
            "standing answer " + id + " (web unix-connect db:/run/*): allow");
  EXPECT_EQ(r.ttl().seconds(), 300);

  // Setting the same selector again replaces that answer (same id), here with deny.
  v1::StandingAnswer deny = Answer("", "web", "/run/*", v1::VERDICT_DENY, "db");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(put, authority_->Put(deny, "bob"));
  EXPECT_TRUE(put.replaced());
  EXPECT_EQ(put.answer().id(), id);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(r, authority_->Authorize("web-1", Request("web", "/run/db.sock")));
  EXPECT_EQ(r.decision().verdict(), v1::VERDICT_DENY);
  EXPECT_EQ(r.ttl().seconds(), 30);  // The default: this answer names no ttl.

  // A client-chosen id for automation, and List ordered by id.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      put, authority_->Put(Answer("zz-cache", "cache", "/run/*", v1::VERDICT_ALLOW), "bot"));
  EXPECT_EQ(put.answer().id(), "zz-cache");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::ListAnswersResponse list, authority_->List());
  ASSERT_EQ(list.answers_size(), 2);
  EXPECT_EQ(list.answers(0).id(), id);
  EXPECT_EQ(list.answers(1).id(), "zz-cache");
  // Another id with a taken selector is refused.
  EXPECT_THAT(authority_->Put(Answer("other", "cache", "/run/*", v1::VERDICT_DENY), "bot"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("zz-cache")));
  EXPECT_THAT(authority_->Put(Answer("x", "web", "/a", v1::VERDICT_REDIRECT), "bot"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("verdict")));

  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::DeleteAnswerResponse removed, authority_->Delete(id));
  EXPECT_EQ(removed.answer().author(), "bob");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(r, authority_->Authorize("web-1", Request("web", "/run/db.sock")));
  EXPECT_THAT(r.decision().reason(), StartsWith("no standing answer"));
  EXPECT_THAT(authority_->Delete(id), StatusIs(absl::StatusCode::kNotFound, HasSubstr(id)));

  // A new authority on the same store (a restart) loads what is stored.
  AnswerAuthority restarted(*store_, clock_);
  ASSERT_THAT(restarted.Load(), IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(r, restarted.Authorize("web-1", Request("cache", "/run/x")));
  EXPECT_EQ(r.decision().verdict(), v1::VERDICT_ALLOW);
}

TEST_F(AnswerAuthorityTest, ExpiryEndsTheAnswerAndCapsTheTtl) {
  v1::StandingAnswer temporary = Answer("temp", "web", "/run/db.sock", v1::VERDICT_ALLOW);
  *temporary.mutable_ttl() = TimeUtil::SecondsToDuration(600);
  *temporary.mutable_expires() = TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(kNow) + 100);
  ASSERT_THAT(authority_->Put(temporary, "alice"), IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::AuthorizeResponse r,
                               authority_->Authorize("web-1", Request("web", "/run/db.sock")));
  EXPECT_EQ(r.decision().verdict(), v1::VERDICT_ALLOW);
  EXPECT_EQ(r.ttl().seconds(), 100);  // Not cached past the expiry.
  clock_.Advance(absl::Seconds(70));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(r, authority_->Authorize("web-1", Request("web", "/run/db.sock")));
  EXPECT_EQ(r.ttl().seconds(), 30);
  clock_.Advance(absl::Seconds(30));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(r, authority_->Authorize("web-1", Request("web", "/run/db.sock")));
  EXPECT_EQ(r.decision().verdict(), v1::VERDICT_DENY);
  // Expired answers stay listed until removed.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::ListAnswersResponse list, authority_->List());
  EXPECT_EQ(list.answers_size(), 1);
}

TEST_F(AnswerAuthorityTest, AnAgentCanAskOnlyForItsOwnHost) {
  ASSERT_THAT(authority_->Put(Answer("a", "*", "*", v1::VERDICT_ALLOW), "alice"), IsOk());
  EXPECT_THAT(authority_->Authorize("db-1", Request("web", "/run/db.sock")),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr("certificate names host 'db-1'"),
                             HasSubstr("interaction is from host 'web-1'"))));
  v1::AuthorizeRequest no_host = Request("web", "/run/db.sock");
  no_host.mutable_interaction()->clear_host_id();
  EXPECT_THAT(authority_->Authorize("web-1", no_host),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("host ''")));
  v1::AuthorizeRequest no_vm = Request("", "/run/db.sock");
  EXPECT_THAT(authority_->Authorize("web-1", no_vm),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("subject_vm")));
  v1::AuthorizeRequest no_kind = Request("web", "/run/db.sock");
  no_kind.mutable_interaction()->set_kind(v1::INTERACTION_KIND_UNSPECIFIED);
  EXPECT_THAT(authority_->Authorize("web-1", no_kind),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("kind")));
}

TEST_F(AnswerAuthorityTest, ScopeFollowsTheVms) {
  auto scope = [&](const std::string& subject, const std::string& object_vm) {
    v1::AuthorizeRequest request = Request(subject, "/x");
    request.mutable_interaction()->set_object_vm(object_vm);
    absl::StatusOr<v1::AuthorizeResponse> r = authority_->Authorize("web-1", request);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? r->decision().scope() : v1::SCOPE_UNSPECIFIED;
  };
  EXPECT_EQ(scope("web", "db"), v1::CROSS_VM);
  EXPECT_EQ(scope("web", "web"), v1::INTRA_VM);
  EXPECT_EQ(scope("web", ""), v1::INTRA_VM);
  EXPECT_EQ(scope("web", "host"), v1::VM_HOST);
  EXPECT_EQ(scope("host", "web"), v1::HOST_VM);
}

}  // namespace
}  // namespace shuttle::controller
