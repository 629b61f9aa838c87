// AskCache: lifetimes online and offline (FakeClock, no sleeping), coalescing of concurrent
// asks, invalidation by rule change, and its bounds.
#include "agent/decide/ask_cache.h"

#include <optional>
#include <string>
#include <vector>

#include "agent/decide/ask_testing.h"
#include "common/clock.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent {
namespace {

using ::shuttle::testing::StatusIs;
using testing::Answer;
using testing::CompileYaml;
using ::testing::HasSubstr;

// A key that owns its strings (AskKey only views them).
struct Key {
  std::string vm = "web";
  v1::InteractionKind kind = v1::UNIX_CONNECT;
  std::string object = "/run/db.sock";
  std::string policy = "asks";
  std::string rule = "ask-db";
  uint64_t fingerprint = 1;
  AskKey view() const { return AskKey{vm, kind, object, policy, rule, fingerprint}; }
};

AskLimits Limits(absl::Duration ttl, absl::Duration offline_ttl) {
  AskLimits limits;
  limits.ttl = ttl;
  limits.offline_ttl = offline_ttl;
  return limits;
}

class AskCacheTest : public ::testing::Test {
 protected:
  AskCacheTest() : cache_(Options()) {}

  AskCacheOptions Options() {
    AskCacheOptions options;
    options.clock = &clock_;
    return options;
  }

  // Joins `key` with a waiter that stores its outcome in outcomes_[slot].
  AskCache::JoinResult Join(const Key& key, int slot,
                            AskLimits limits = Limits(absl::Seconds(30), absl::Minutes(5))) {
    return cache_.Join(key.view(), limits,
                       [this, slot](const AskOutcome& outcome) { outcomes_[slot] = outcome; });
  }

  // Asks for `key` and completes the flight with `result`; returns what the waiter got.
  AskOutcome AskAndComplete(const Key& key, absl::StatusOr<v1::AuthorizeResponse> result,
                            AskLimits limits = Limits(absl::Seconds(30), absl::Minutes(5))) {
    AskCache::JoinResult joined = Join(key, 0, limits);
    EXPECT_EQ(joined.joined, AskCache::Joined::kStart);
    if (joined.flight != nullptr) cache_.Complete(joined.flight, std::move(result));
    EXPECT_TRUE(outcomes_[0].has_value());
    AskOutcome out = outcomes_[0].value_or(AskOutcome{});
    outcomes_[0].reset();
    return out;
  }

  AskCache::Lookup Lookup(const Key& key) { return cache_.Find(key.view()).lookup; }

  // `key` is a hit until `lifetime` from now, then expired.
  void ExpectLifetime(const Key& key, absl::Duration lifetime) {
    clock_.Advance(lifetime - absl::Seconds(1));
    EXPECT_EQ(Lookup(key), AskCache::Lookup::kHit);
    clock_.Advance(absl::Seconds(1));
    EXPECT_EQ(Lookup(key), AskCache::Lookup::kExpired);
  }

  FakeClock clock_;
  AskCache cache_;
  std::optional<AskOutcome> outcomes_[4];
};

TEST_F(AskCacheTest, AnswerIsKeptForTheShorterOfAnswerAndRuleTtl) {
  Key key;
  EXPECT_EQ(Lookup(key), AskCache::Lookup::kMiss);
  AskOutcome outcome = AskAndComplete(key, Answer(v1::VERDICT_DENY, absl::Seconds(10)));
  EXPECT_EQ(outcome.source, AskOutcome::Source::kController);
  EXPECT_EQ(outcome.answer.verdict, v1::VERDICT_DENY);
  EXPECT_EQ(outcome.answer.reason, "test says so");

  AskCache::Found found = cache_.Find(key.view());
  EXPECT_EQ(found.lookup, AskCache::Lookup::kHit);
  EXPECT_EQ(found.answer.verdict, v1::VERDICT_DENY);
  ExpectLifetime(key, absl::Seconds(10));

  // The rule's ttl is shorter than the answer's this time.
  Key other;
  other.object = "/run/other.sock";
  AskAndComplete(other, Answer(v1::VERDICT_ALLOW, absl::Hours(1)),
                 Limits(absl::Seconds(5), absl::Minutes(5)));
  ExpectLifetime(other, absl::Seconds(5));
}

TEST_F(AskCacheTest, AnswerWithoutTtlLivesForTheRuleTtl) {
  Key key;
  AskAndComplete(key, Answer(v1::VERDICT_ALLOW));
  ExpectLifetime(key, absl::Seconds(30));
}

TEST_F(AskCacheTest, ZeroTtlIsNotCached) {
  Key key;
  EXPECT_EQ(AskAndComplete(key, Answer(v1::VERDICT_ALLOW, absl::ZeroDuration())).answer.verdict,
            v1::VERDICT_ALLOW);
  EXPECT_EQ(Lookup(key), AskCache::Lookup::kMiss);
  AskAndComplete(key, Answer(v1::VERDICT_ALLOW), Limits(absl::ZeroDuration(), absl::Minutes(5)));
  EXPECT_EQ(Lookup(key), AskCache::Lookup::kMiss);
  EXPECT_EQ(cache_.size(), 0u);
}

TEST_F(AskCacheTest, OfflineAnswersFetchedEarlierLastUntilTheOfflineTtl) {
  Key key;
  AskAndComplete(key, Answer(v1::VERDICT_ALLOW));  // ttl 30s, offline_ttl 5m.
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(Lookup(key), AskCache::Lookup::kExpired);  // Online: past the 30 s.

  // The refresh finds no controller: the answer fetched a minute ago still decides.
  AskOutcome outcome = AskAndComplete(key, absl::UnavailableError("connection refused"));
  EXPECT_EQ(outcome.source, AskOutcome::Source::kCache);
  EXPECT_EQ(outcome.answer.verdict, v1::VERDICT_ALLOW);
  EXPECT_THAT(outcome.error, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("refused")));
  EXPECT_FALSE(cache_.reachable());
  EXPECT_EQ(Lookup(key), AskCache::Lookup::kHit);  // Offline: within 5 m of the fetch.
  clock_.Advance(absl::Minutes(4) - absl::Seconds(1));
  EXPECT_EQ(Lookup(key), AskCache::Lookup::kHit);
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(Lookup(key), AskCache::Lookup::kExpired);
  EXPECT_EQ(cache_.size(), 0u) << "past every lifetime: dropped";

  // Still offline, nothing cached: the fail mode decides.
  outcome = AskAndComplete(key, absl::DeadlineExceededError("deadline"));
  EXPECT_EQ(outcome.source, AskOutcome::Source::kNone);
  EXPECT_THAT(outcome.error, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("deadline")));

  // An answer brings it back online, and the online lifetime applies again.
  AskAndComplete(key, Answer(v1::VERDICT_DENY));
  EXPECT_TRUE(cache_.reachable());
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(Lookup(key), AskCache::Lookup::kExpired);
}

TEST_F(AskCacheTest, DeadlineExceededAlsoMeansUnreachable) {
  Key key;
  AskAndComplete(key, Answer(v1::VERDICT_ALLOW));
  clock_.Advance(absl::Minutes(1));
  AskOutcome outcome = AskAndComplete(key, absl::DeadlineExceededError("slow"));
  EXPECT_EQ(outcome.source, AskOutcome::Source::kCache);
  EXPECT_FALSE(cache_.reachable());
}

TEST_F(AskCacheTest, ErrorsFromTheControllerKeepItReachableAndAreNotCached) {
  Key key;
  cache_.SetReachable(false);
  AskOutcome outcome = AskAndComplete(key, absl::PermissionDeniedError("not your VM"));
  EXPECT_EQ(outcome.source, AskOutcome::Source::kNone);
  EXPECT_TRUE(cache_.reachable());
  outcome = AskAndComplete(key, Answer(v1::VERDICT_UNSPECIFIED));
  EXPECT_EQ(outcome.source, AskOutcome::Source::kNone);
  EXPECT_THAT(outcome.error, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("verdict")));
  EXPECT_EQ(Lookup(key), AskCache::Lookup::kMiss);
  // CANCELLED is the agent stopping, not news about the controller.
  cache_.SetReachable(false);
  AskAndComplete(key, absl::CancelledError("stopping"));
  EXPECT_FALSE(cache_.reachable());
}

TEST_F(AskCacheTest, ConcurrentAsksForOneKeyShareOneFlight) {
  Key key, other;
  other.object = "/run/other.sock";
  AskCache::JoinResult first = Join(key, 0);
  EXPECT_EQ(first.joined, AskCache::Joined::kStart);
  EXPECT_EQ(Join(key, 1).joined, AskCache::Joined::kWaiting);
  EXPECT_EQ(Join(key, 2).joined, AskCache::Joined::kWaiting);
  AskCache::JoinResult second = Join(other, 3);
  EXPECT_EQ(second.joined, AskCache::Joined::kStart);
  EXPECT_EQ(cache_.inflight(), 2u);

  cache_.Complete(first.flight, Answer(v1::VERDICT_DENY));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(outcomes_[i].has_value()) << i;
    EXPECT_EQ(outcomes_[i]->answer.verdict, v1::VERDICT_DENY) << i;
  }
  EXPECT_FALSE(outcomes_[3].has_value());
  cache_.Complete(second.flight, Answer(v1::VERDICT_ALLOW));
  ASSERT_TRUE(outcomes_[3].has_value());
  EXPECT_EQ(outcomes_[3]->answer.verdict, v1::VERDICT_ALLOW);
  EXPECT_EQ(cache_.inflight(), 0u);
}

TEST_F(AskCacheTest, JoinAfterTheAnswerArrivedIsAnsweredAtOnce) {
  Key key;
  AskAndComplete(key, Answer(v1::VERDICT_ALLOW));
  AskCache::JoinResult joined = Join(key, 1);
  EXPECT_EQ(joined.joined, AskCache::Joined::kAnswered);
  ASSERT_TRUE(outcomes_[1].has_value());
  EXPECT_EQ(outcomes_[1]->source, AskOutcome::Source::kCache);
  EXPECT_EQ(outcomes_[1]->answer.verdict, v1::VERDICT_ALLOW);
}

TEST_F(AskCacheTest, TooManyFlightsAreRefusedAtOnce) {
  AskCacheOptions options = Options();
  options.max_inflight = 1;
  AskCache cache(options);
  Key a, b;
  b.object = "/run/b.sock";
  std::optional<AskOutcome> got;
  EXPECT_EQ(cache.Join(a.view(), {}, [](const AskOutcome&) {}).joined, AskCache::Joined::kStart);
  EXPECT_EQ(cache.Join(b.view(), {}, [&got](const AskOutcome& o) { got = o; }).joined,
            AskCache::Joined::kAnswered);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->source, AskOutcome::Source::kNone);
  EXPECT_THAT(got->error, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("in flight")));
}

TEST_F(AskCacheTest, LeastRecentlyUsedIsEvictedFirst) {
  AskCacheOptions options = Options();
  options.max_entries = 2;
  AskCache cache(options);
  Key a, b, c;
  b.object = "/run/b.sock";
  c.object = "/run/c.sock";
  for (const Key* key : {&a, &b}) {
    AskCache::JoinResult joined =
        cache.Join(key->view(), Limits(absl::Minutes(1), absl::Minutes(1)), [](auto&) {});
    cache.Complete(joined.flight, Answer(v1::VERDICT_ALLOW));
  }
  EXPECT_EQ(cache.Find(a.view()).lookup, AskCache::Lookup::kHit);  // b is now the oldest.
  AskCache::JoinResult joined =
      cache.Join(c.view(), Limits(absl::Minutes(1), absl::Minutes(1)), [](auto&) {});
  cache.Complete(joined.flight, Answer(v1::VERDICT_ALLOW));
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.evictions(), 1u);
  EXPECT_EQ(cache.Find(a.view()).lookup, AskCache::Lookup::kHit);
  EXPECT_EQ(cache.Find(b.view()).lookup, AskCache::Lookup::kMiss);
  EXPECT_EQ(cache.Find(c.view()).lookup, AskCache::Lookup::kHit);
}

// The key of `rule` in `compiled` for a call from web to `object`.
Key KeyOf(const policy::CompiledPolicy& compiled, const std::string& rule_name,
          v1::InteractionKind kind, const std::string& object) {
  Key key;
  key.kind = kind;
  key.object = object;
  key.rule = rule_name;
  for (const policy::CompiledRule& rule : compiled.rules()) {
    if (rule.rule->name() == rule_name) {
      key.fingerprint = AskRuleFingerprint(*rule.policy, *rule.rule);
    }
  }
  return key;
}

TEST_F(AskCacheTest, PolicyChangeDropsExactlyTheAnswersOfChangedOrVanishedRules) {
  std::string error;
  auto v1 = CompileYaml(testing::kAskPolicy, 1, &error);
  ASSERT_NE(v1, nullptr) << error;
  Key db = KeyOf(*v1, "ask-db", v1::UNIX_CONNECT, "/run/db.sock");
  Key redis = KeyOf(*v1, "ask-cache", v1::TCP_CONNECT, "127.0.0.1:6379");
  AskAndComplete(db, Answer(v1::VERDICT_ALLOW));
  AskAndComplete(redis, Answer(v1::VERDICT_ALLOW));

  // Another rule above moves both rules down a few lines: their content is the same.
  std::string moved = testing::kAskPolicy;
  moved.insert(moved.find("  - name: ask-db"),
               "  - name: unrelated\n    kind: signal\n    action: deny\n");
  auto v2 = CompileYaml(moved, 2, &error);
  ASSERT_NE(v2, nullptr) << error;
  EXPECT_EQ(KeyOf(*v2, "ask-db", v1::UNIX_CONNECT, "/run/db.sock").fingerprint, db.fingerprint);
  EXPECT_EQ(cache_.OnPolicy(*v2), 0u);
  EXPECT_EQ(Lookup(db), AskCache::Lookup::kHit);

  // ask-db's ttl changes; ask-cache stays: only ask-db's answer goes.
  std::string changed = testing::kAskPolicy;
  changed.replace(changed.find("ttl: 30s"), 8, "ttl: 10s");
  auto v3 = CompileYaml(changed, 3, &error);
  ASSERT_NE(v3, nullptr) << error;
  Key db3 = KeyOf(*v3, "ask-db", v1::UNIX_CONNECT, "/run/db.sock");
  EXPECT_NE(db3.fingerprint, db.fingerprint);
  // A flight of the old rule (for another socket) is in the air when the policy changes.
  Key db_other = db;
  db_other.object = "/run/db-other.sock";
  AskCache::JoinResult flying = Join(db_other, 1);
  ASSERT_EQ(flying.joined, AskCache::Joined::kStart);
  EXPECT_EQ(cache_.OnPolicy(*v3), 1u);
  EXPECT_EQ(Lookup(redis), AskCache::Lookup::kHit);
  EXPECT_EQ(Lookup(db3), AskCache::Lookup::kMiss);
  // Its waiter is still answered, but the answer of a rule that is gone is not kept.
  EXPECT_EQ(cache_.inflight(), 0u) << "forgotten: a new ask would not join it";
  cache_.Complete(flying.flight, Answer(v1::VERDICT_DENY));
  ASSERT_TRUE(outcomes_[1].has_value());
  EXPECT_EQ(outcomes_[1]->answer.verdict, v1::VERDICT_DENY);
  EXPECT_EQ(Lookup(db), AskCache::Lookup::kMiss);
  EXPECT_EQ(Lookup(db_other), AskCache::Lookup::kMiss);

  // Back to the first content (a new answer for it), then ask-cache vanishes.
  AskAndComplete(db, Answer(v1::VERDICT_ALLOW));
  std::string without = testing::kAskPolicy;
  without.erase(without.find("  - name: ask-cache"));
  auto v4 = CompileYaml(without, 4, &error);
  ASSERT_NE(v4, nullptr) << error;
  EXPECT_EQ(cache_.OnPolicy(*v4), 1u);
  EXPECT_EQ(Lookup(redis), AskCache::Lookup::kMiss);
  EXPECT_EQ(Lookup(db), AskCache::Lookup::kHit);
}

TEST(AskRuleFingerprint, DependsOnPolicyNameAndContentNotLocation) {
  v1::Policy p;
  p.set_name("p");
  v1::Rule rule;
  rule.set_name("r");
  rule.set_action(v1::ASK);
  rule.mutable_location()->set_line(3);
  const uint64_t base = AskRuleFingerprint(p, rule);
  v1::Rule moved = rule;
  moved.mutable_location()->set_line(30);
  EXPECT_EQ(AskRuleFingerprint(p, moved), base);
  v1::Rule changed = rule;
  changed.mutable_ask()->set_fail_mode(v1::FAIL_OPEN);
  EXPECT_NE(AskRuleFingerprint(p, changed), base);
  v1::Policy q = p;
  q.set_name("q");
  EXPECT_NE(AskRuleFingerprint(q, rule), base);
}

}  // namespace
}  // namespace shuttle::agent
