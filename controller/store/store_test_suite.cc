#include "controller/store/store_test_suite.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/status_matchers.h"
#include "controller/store/store_testing.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"

namespace shuttle::controller::testing {

void StoreTest::SetUp() {
  harness_ = GetParam().make_harness();
  ASSERT_NE(harness_, nullptr);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, harness_->Open(clock_));
  ASSERT_NE(store_, nullptr);
}

namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::google::protobuf::util::TimeUtil;
using ::shuttle::testing::IsOk;
using ::shuttle::testing::IsOkAndHolds;
using ::shuttle::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::Eq;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

// Store times have microsecond precision (PostgreSQL's timestamptz has no more).
google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(t));
}

std::vector<uint64_t> Revisions(const std::vector<v1::PolicyRevision>& revisions) {
  std::vector<uint64_t> out;
  out.reserve(revisions.size());
  for (const v1::PolicyRevision& r : revisions) out.push_back(r.revision());
  return out;
}

std::vector<std::string> Names(const std::vector<v1::PolicyRevision>& revisions) {
  std::vector<std::string> out;
  out.reserve(revisions.size());
  for (const v1::PolicyRevision& r : revisions) out.push_back(r.name());
  return out;
}

TEST_P(StoreTest, EmptyStore) {
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(0u)));
  EXPECT_THAT(store_->ListPolicies(), IsOkAndHolds(IsEmpty()));
  EXPECT_THAT(store_->GetPolicy("web", 0), StatusIs(absl::StatusCode::kNotFound, HasSubstr("web")));
  EXPECT_THAT(store_->PolicyHistory("web"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("web")));
  EXPECT_THAT(store_->DeletePolicy("web", "alice"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("web")));
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(0u)));
}

TEST_P(StoreTest, PutThenGetRoundTripsEveryField) {
  PolicyWrite write = MakeWrite("web", "name: web\nrules: []\n", std::nullopt, "CN=alice");
  write.change = "rollback to 3";
  bool unchanged = true;
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision put, store_->PutPolicy(write, &unchanged));
  EXPECT_FALSE(unchanged);

  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision got, store_->GetPolicy("web", 0));
  for (const v1::PolicyRevision* r : {&put, &got}) {
    EXPECT_EQ(r->name(), "web");
    EXPECT_EQ(r->revision(), 1u);
    EXPECT_EQ(r->fleet_version(), 1u);
    EXPECT_EQ(r->source(), write.source);
    EXPECT_TRUE(MessageDifferencer::Equals(r->policy(), write.policy)) << r->policy().DebugString();
    EXPECT_TRUE(MessageDifferencer::Equals(r->created(), ToProto(clock_.Now())))
        << r->created().DebugString();
    EXPECT_EQ(r->author(), "CN=alice");
    EXPECT_EQ(r->change(), "rollback to 3");
    EXPECT_FALSE(r->deleted());
  }
  EXPECT_TRUE(MessageDifferencer::Equals(put, got));
  EXPECT_THAT(store_->GetPolicy("web", 1), IsOk());
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(1u)));
}

TEST_P(StoreTest, EachChangeBumpsRevisionAndFleetVersion) {
  const absl::Time t1 = clock_.Now();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision a1,
                               store_->PutPolicy(MakeWrite("a", "a1"), nullptr));
  clock_.Advance(absl::Seconds(10) + absl::Microseconds(7));
  const absl::Time t2 = clock_.Now();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision a2,
                               store_->PutPolicy(MakeWrite("a", "a2"), nullptr));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision b1,
                               store_->PutPolicy(MakeWrite("b", "b1"), nullptr));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision a3,
                               store_->PutPolicy(MakeWrite("a", "a3"), nullptr));

  EXPECT_EQ(a1.revision(), 1u);
  EXPECT_EQ(a1.fleet_version(), 1u);
  EXPECT_EQ(a2.revision(), 2u);
  EXPECT_EQ(a2.fleet_version(), 2u);
  EXPECT_EQ(b1.revision(), 1u);
  EXPECT_EQ(b1.fleet_version(), 3u);
  EXPECT_EQ(a3.revision(), 3u);
  EXPECT_EQ(a3.fleet_version(), 4u);
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(4u)));

  // Old revisions stay readable, with the content and time they were written with.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision old, store_->GetPolicy("a", 1));
  EXPECT_EQ(old.source(), "a1");
  EXPECT_EQ(old.policy().description(), "a1");
  EXPECT_EQ(old.fleet_version(), 1u);
  EXPECT_TRUE(MessageDifferencer::Equals(old.created(), ToProto(t1)));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision mid, store_->GetPolicy("a", 2));
  EXPECT_EQ(mid.source(), "a2");
  EXPECT_TRUE(MessageDifferencer::Equals(mid.created(), ToProto(t2)));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision current, store_->GetPolicy("a", 0));
  EXPECT_EQ(current.revision(), 3u);
  EXPECT_EQ(current.source(), "a3");

  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<v1::PolicyRevision> history, store_->PolicyHistory("a"));
  EXPECT_THAT(Revisions(history), ElementsAre(1u, 2u, 3u));
  EXPECT_EQ(history[0].source(), "a1");
  EXPECT_EQ(history[2].source(), "a3");
  EXPECT_THAT(CheckConsistent(*store_, {"a", "b"}), IsOk());
}

TEST_P(StoreTest, UnchangedReapplyWritesNothing) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision first,
                               store_->PutPolicy(MakeWrite("web", "same"), nullptr));
  clock_.Advance(absl::Minutes(1));
  bool unchanged = false;
  // Only the source decides: another author and change text are not a change.
  PolicyWrite again = MakeWrite("web", "same", std::nullopt, "bob");
  again.change = "apply again";
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision second, store_->PutPolicy(again, &unchanged));
  EXPECT_TRUE(unchanged);
  EXPECT_TRUE(MessageDifferencer::Equals(first, second)) << second.DebugString();
  // A null `unchanged` is allowed.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision third,
                               store_->PutPolicy(MakeWrite("web", "same"), nullptr));
  EXPECT_EQ(third.revision(), 1u);

  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(1u)));
  EXPECT_THAT(store_->PolicyHistory("web"), IsOkAndHolds(SizeIs(1)));

  // A real change after that is revision 2, fleet version 2: nothing was consumed.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision changed,
                               store_->PutPolicy(MakeWrite("web", "different"), &unchanged));
  EXPECT_FALSE(unchanged);
  EXPECT_EQ(changed.revision(), 2u);
  EXPECT_EQ(changed.fleet_version(), 2u);

  // Going back to an older source is a change too (only the live revision counts).
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision back,
                               store_->PutPolicy(MakeWrite("web", "same"), &unchanged));
  EXPECT_FALSE(unchanged);
  EXPECT_EQ(back.revision(), 3u);
}

TEST_P(StoreTest, ListGivesLivePoliciesByName) {
  for (const char* name : {"charlie", "alpha", "bravo", "delta"}) {
    ASSERT_THAT(store_->PutPolicy(MakeWrite(name, absl::StrCat(name, "-1")), nullptr), IsOk());
  }
  ASSERT_THAT(store_->PutPolicy(MakeWrite("alpha", "alpha-2"), nullptr), IsOk());
  ASSERT_THAT(store_->DeletePolicy("bravo", "alice"), IsOk());

  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<v1::PolicyRevision> listed, store_->ListPolicies());
  EXPECT_THAT(Names(listed), ElementsAre("alpha", "charlie", "delta"));
  ASSERT_THAT(listed, SizeIs(3));
  EXPECT_EQ(listed[0].revision(), 2u);
  EXPECT_EQ(listed[0].source(), "alpha-2");
  EXPECT_EQ(listed[0].policy().description(), "alpha-2");
  EXPECT_EQ(listed[1].revision(), 1u);
  EXPECT_EQ(listed[1].fleet_version(), 1u);
  EXPECT_THAT(CheckConsistent(*store_, {"alpha", "bravo", "charlie", "delta"}), IsOk());
}

TEST_P(StoreTest, DeleteWritesTombstone) {
  ASSERT_THAT(store_->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
  ASSERT_THAT(store_->PutPolicy(MakeWrite("web", "v2"), nullptr), IsOk());
  clock_.Advance(absl::Hours(1));

  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision tombstone, store_->DeletePolicy("web", "bob"));
  EXPECT_EQ(tombstone.name(), "web");
  EXPECT_EQ(tombstone.revision(), 3u);
  EXPECT_EQ(tombstone.fleet_version(), 3u);
  EXPECT_TRUE(tombstone.deleted());
  EXPECT_EQ(tombstone.author(), "bob");
  EXPECT_EQ(tombstone.change(), "delete");
  EXPECT_TRUE(MessageDifferencer::Equals(tombstone.created(), ToProto(clock_.Now())));
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(3u)));

  EXPECT_THAT(store_->GetPolicy("web", 0), StatusIs(absl::StatusCode::kNotFound, HasSubstr("web")));
  EXPECT_THAT(store_->ListPolicies(), IsOkAndHolds(IsEmpty()));
  // The tombstone and everything before it stay in the history.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision by_revision, store_->GetPolicy("web", 3));
  EXPECT_TRUE(by_revision.deleted());
  EXPECT_TRUE(MessageDifferencer::Equals(by_revision, tombstone));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision old, store_->GetPolicy("web", 2));
  EXPECT_EQ(old.source(), "v2");
  EXPECT_FALSE(old.deleted());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<v1::PolicyRevision> history,
                               store_->PolicyHistory("web"));
  EXPECT_THAT(Revisions(history), ElementsAre(1u, 2u, 3u));
  EXPECT_TRUE(history.back().deleted());

  // Deleting again finds nothing live and writes nothing.
  EXPECT_THAT(store_->DeletePolicy("web", "bob"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("web")));
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(3u)));

  // Applying again continues the history; the source before the delete is not "unchanged".
  bool unchanged = true;
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision back,
                               store_->PutPolicy(MakeWrite("web", "v2"), &unchanged));
  EXPECT_FALSE(unchanged);
  EXPECT_EQ(back.revision(), 4u);
  EXPECT_EQ(back.fleet_version(), 4u);
  EXPECT_FALSE(back.deleted());
  EXPECT_THAT(store_->GetPolicy("web", 0), IsOk());
  EXPECT_THAT(CheckConsistent(*store_, {"web"}), IsOk());
}

TEST_P(StoreTest, ExpectedRevisionGuardsEveryWrite) {
  // 0 = must not exist.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision created,
                               store_->PutPolicy(MakeWrite("web", "v1", 0), nullptr));
  EXPECT_EQ(created.revision(), 1u);
  EXPECT_THAT(store_->PutPolicy(MakeWrite("web", "v1b", 0), nullptr),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("web")));
  // The right revision wins, a stale one loses.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision second,
                               store_->PutPolicy(MakeWrite("web", "v2", 1), nullptr));
  EXPECT_EQ(second.revision(), 2u);
  EXPECT_THAT(store_->PutPolicy(MakeWrite("web", "v3", 1), nullptr),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("expected revision 1")));
  EXPECT_THAT(store_->PutPolicy(MakeWrite("web", "v3", 7), nullptr),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("web")));
  // The precondition is checked before "unchanged": a stale writer learns it is stale.
  bool unchanged = true;
  EXPECT_THAT(store_->PutPolicy(MakeWrite("web", "v2", 1), &unchanged),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("web")));
  EXPECT_FALSE(unchanged);
  // A policy that never existed has revision 0.
  EXPECT_THAT(store_->PutPolicy(MakeWrite("other", "o1", 1), nullptr),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("other")));
  // Failed writes wrote nothing.
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(2u)));
  EXPECT_THAT(store_->PolicyHistory("web"), IsOkAndHolds(SizeIs(2)));
  EXPECT_THAT(store_->PolicyHistory("other"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("other")));

  // A deleted policy counts as absent: 0 matches, its tombstone revision does not.
  ASSERT_THAT(store_->DeletePolicy("web", "alice"), IsOk());
  EXPECT_THAT(store_->PutPolicy(MakeWrite("web", "v4", 3), nullptr),
              StatusIs(absl::StatusCode::kAborted, HasSubstr("deleted")));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision recreated,
                               store_->PutPolicy(MakeWrite("web", "v4", 0), nullptr));
  EXPECT_EQ(recreated.revision(), 4u);
  EXPECT_EQ(recreated.fleet_version(), 4u);
  EXPECT_THAT(CheckConsistent(*store_, {"web", "other"}), IsOk());
}

TEST_P(StoreTest, NotFoundCases) {
  ASSERT_THAT(store_->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
  EXPECT_THAT(store_->GetPolicy("nope", 0),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(store_->GetPolicy("nope", 1),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(store_->GetPolicy("web", 2), StatusIs(absl::StatusCode::kNotFound, HasSubstr("web")));
  EXPECT_THAT(store_->GetPolicy("web", std::numeric_limits<uint64_t>::max()),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("web")));
  EXPECT_THAT(store_->PolicyHistory("nope"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(store_->DeletePolicy("nope", "alice"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  // Names are compared exactly.
  EXPECT_THAT(store_->GetPolicy("WEB", 0), StatusIs(absl::StatusCode::kNotFound, HasSubstr("WEB")));
  EXPECT_THAT(store_->GetPolicy("we", 0), StatusIs(absl::StatusCode::kNotFound, HasSubstr("we")));
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(1u)));
}

TEST_P(StoreTest, InvalidWritesAreRefused) {
  EXPECT_THAT(store_->PutPolicy(MakeWrite("", "v1"), nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("name")));
  PolicyWrite mismatch = MakeWrite("web", "v1");
  mismatch.policy.set_name("db");
  EXPECT_THAT(
      store_->PutPolicy(mismatch, nullptr),
      StatusIs(absl::StatusCode::kInvalidArgument, AllOf(HasSubstr("web"), HasSubstr("db"))));
  // A policy without a name of its own is stored under the write's name.
  PolicyWrite unnamed = MakeWrite("web", "v1");
  unnamed.policy.clear_name();
  EXPECT_THAT(store_->PutPolicy(unnamed, nullptr), IsOk());
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(1u)));
}

TEST_P(StoreTest, StoresAnyBytesVerbatim) {
  // Names and text are data, never SQL; sources are kept byte for byte.
  const std::string name = "x'); DROP TABLE policies; --\"\xc3\xa9";
  std::string source = "name: x\n# \xe2\x9c\x93 quotes ' \" and a NUL:";
  source.push_back('\0');
  source += "after\n";
  std::string big(1 << 20, 'y');
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision r1,
                               store_->PutPolicy(MakeWrite(name, source), nullptr));
  PolicyWrite big_write = MakeWrite("big", big);
  for (int i = 0; i < 500; ++i) *big_write.policy.add_rules() = big_write.policy.rules(0);
  ASSERT_THAT(store_->PutPolicy(big_write, nullptr), IsOk());

  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision got, store_->GetPolicy(name, 0));
  EXPECT_EQ(got.name(), name);
  EXPECT_EQ(got.source(), source);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision got_big, store_->GetPolicy("big", 1));
  EXPECT_EQ(got_big.source(), big);
  EXPECT_TRUE(MessageDifferencer::Equals(got_big.policy(), big_write.policy));
  EXPECT_THAT(CheckConsistent(*store_, {name, "big"}), IsOk());
}

TEST_P(StoreTest, SurvivesReopen) {
  ASSERT_THAT(store_->PutPolicy(MakeWrite("web", "v1"), nullptr), IsOk());
  ASSERT_THAT(store_->PutPolicy(MakeWrite("web", "v2"), nullptr), IsOk());
  ASSERT_THAT(store_->PutPolicy(MakeWrite("db", "d1"), nullptr), IsOk());
  ASSERT_THAT(store_->DeletePolicy("db", "alice"), IsOk());
  store_.reset();

  SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, OpenAgain());
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(4u)));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision web, store_->GetPolicy("web", 0));
  EXPECT_EQ(web.source(), "v2");
  EXPECT_THAT(store_->GetPolicy("db", 0), StatusIs(absl::StatusCode::kNotFound, HasSubstr("db")));
  EXPECT_THAT(CheckConsistent(*store_, {"web", "db"}), IsOk());
  // And it continues where it stopped.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision db,
                               store_->PutPolicy(MakeWrite("db", "d2"), nullptr));
  EXPECT_EQ(db.revision(), 3u);
  EXPECT_EQ(db.fleet_version(), 5u);
}

// Runs `threads` writers, writer t on stores[t % stores.size()], each making `writes` changes to
// its own policy and to one shared policy; checks that every change got its own fleet version
// and that together they are exactly 1..N.
void RunConcurrentWriters(const std::vector<Store*>& stores, int threads, int writes) {
  std::vector<std::vector<uint64_t>> versions(threads);
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      Store& store = *stores[t % stores.size()];
      for (int i = 0; i < writes; ++i) {
        std::string name = i % 2 == 0 ? absl::StrCat("own-", t) : "shared";
        auto r = store.PutPolicy(MakeWrite(name, absl::StrCat("t", t, " i", i)), nullptr);
        EXPECT_THAT(r, IsOk());
        if (r.ok()) versions[t].push_back(r->fleet_version());
      }
    });
  }
  for (std::thread& w : workers) w.join();

  std::vector<uint64_t> all;
  for (const std::vector<uint64_t>& v : versions) {
    // Each writer sees its own changes in order.
    EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
    all.insert(all.end(), v.begin(), v.end());
  }
  std::sort(all.begin(), all.end());
  const uint64_t total = static_cast<uint64_t>(threads) * writes;
  ASSERT_EQ(all.size(), total);
  for (uint64_t i = 0; i < total; ++i) ASSERT_EQ(all[i], i + 1) << "fleet versions not 1..N";
  EXPECT_THAT(stores[0]->FleetVersion(), IsOkAndHolds(Eq(total)));

  std::vector<std::string> names = {"shared"};
  uint64_t shared_writes = 0;
  for (int t = 0; t < threads; ++t) {
    names.push_back(absl::StrCat("own-", t));
    shared_writes += writes / 2;
    EXPECT_THAT(stores[0]->PolicyHistory(absl::StrCat("own-", t)),
                IsOkAndHolds(SizeIs((writes + 1) / 2)));
  }
  EXPECT_THAT(stores[0]->PolicyHistory("shared"), IsOkAndHolds(SizeIs(shared_writes)));
  EXPECT_THAT(CheckConsistent(*stores[0], names), IsOk());
}

TEST_P(StoreTest, ConcurrentWritersOnOneStore) { RunConcurrentWriters({store_.get()}, 8, 30); }

TEST_P(StoreTest, ConcurrentWritersOnTwoStoresOfOneDatabase) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(StorePtr second, OpenAgain());
  RunConcurrentWriters({store_.get(), second.get()}, 6, 30);
  // Both see the same state.
  EXPECT_THAT(second->FleetVersion(), IsOkAndHolds(Eq(180u)));
}

// Read-modify-write with expected_revision from several threads and two stores: conflicts are
// ABORTED and retried, so no increment is lost.
TEST_P(StoreTest, CompareAndSwapLosesNoUpdate) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(StorePtr second, OpenAgain());
  ASSERT_THAT(store_->PutPolicy(MakeWrite("counter", "0"), nullptr), IsOk());
  constexpr int kThreads = 4;
  constexpr int kIncrements = 15;
  constexpr int kMaxAttempts = 10'000;  // Bounds the test if conflicts were never resolved.
  std::vector<int> aborted(kThreads, 0);
  std::vector<std::thread> workers;
  workers.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      Store& store = t % 2 == 0 ? *store_ : *second;
      int done = 0;
      for (int attempt = 0; done < kIncrements && attempt < kMaxAttempts; ++attempt) {
        auto current = store.GetPolicy("counter", 0);
        ASSERT_THAT(current, IsOk());
        int value = std::stoi(current->source());
        auto put = store.PutPolicy(
            MakeWrite("counter", std::to_string(value + 1), current->revision()), nullptr);
        if (put.ok()) {
          ++done;
        } else {
          ASSERT_THAT(put, StatusIs(absl::StatusCode::kAborted, HasSubstr("counter")));
          ++aborted[t];
        }
      }
      EXPECT_EQ(done, kIncrements);
    });
  }
  for (std::thread& w : workers) w.join();

  constexpr int kTotal = kThreads * kIncrements;
  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::PolicyRevision final_revision, store_->GetPolicy("counter", 0));
  EXPECT_EQ(final_revision.source(), std::to_string(kTotal));
  EXPECT_EQ(final_revision.revision(), kTotal + 1u);
  EXPECT_THAT(store_->FleetVersion(), IsOkAndHolds(Eq(kTotal + 1u)));
  // Every revision is the one before it plus one: no two writers ever built on the same state.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<v1::PolicyRevision> history,
                               store_->PolicyHistory("counter"));
  for (size_t i = 0; i < history.size(); ++i) EXPECT_EQ(history[i].source(), std::to_string(i));
  EXPECT_THAT(CheckConsistent(*store_, {"counter"}), IsOk());
}

// --- Join tokens and hosts.

JoinToken MakeToken(char fill, absl::Time created, absl::Duration ttl, std::string host_id = "") {
  JoinToken t;
  t.secret_sha256 = std::string(64, fill);
  t.host_id = std::move(host_id);
  t.created = created;
  t.expires = created + ttl;
  return t;
}

TEST_P(StoreTest, JoinTokenIsConsumedOnce) {
  const absl::Time now = clock_.Now();
  ASSERT_THAT(store_->CreateJoinToken(MakeToken('a', now, absl::Hours(1))), IsOk());
  EXPECT_THAT(store_->CreateJoinToken(MakeToken('a', now, absl::Hours(1))),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("already exists")));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(JoinToken used,
                               store_->ConsumeJoinToken(std::string(64, 'a'), "web-1", now));
  EXPECT_EQ(used.used_by, "web-1");
  ASSERT_TRUE(used.used_at.has_value());
  EXPECT_EQ(*used.used_at, now);
  EXPECT_THAT(store_->ConsumeJoinToken(std::string(64, 'a'), "web-1", now),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("already used")));
  // Reopening (a restart) keeps it used.
  store_.reset();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, OpenAgain());
  EXPECT_THAT(store_->ConsumeJoinToken(std::string(64, 'a'), "web-2", now),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("already used")));
}

TEST_P(StoreTest, JoinTokenRefusals) {
  const absl::Time now = clock_.Now();
  EXPECT_THAT(store_->ConsumeJoinToken(std::string(64, 'z'), "web-1", now),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("unknown join token")));
  ASSERT_THAT(store_->CreateJoinToken(MakeToken('b', now, absl::Seconds(10))), IsOk());
  EXPECT_THAT(store_->ConsumeJoinToken(std::string(64, 'b'), "web-1", now + absl::Seconds(10)),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("expired")));
  ASSERT_THAT(store_->CreateJoinToken(MakeToken('c', now, absl::Hours(1), "db-1")), IsOk());
  EXPECT_THAT(store_->ConsumeJoinToken(std::string(64, 'c'), "web-1", now),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("issued for host \"db-1\"")));
  // A refusal consumes nothing: the right host still enrolls with it.
  EXPECT_THAT(store_->ConsumeJoinToken(std::string(64, 'c'), "db-1", now), IsOk());
  EXPECT_THAT(store_->CreateJoinToken(MakeToken('d', now, absl::ZeroDuration())),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expires")));
  JoinToken short_hash = MakeToken('d', now, absl::Hours(1));
  short_hash.secret_sha256 = "abc";
  EXPECT_THAT(store_->CreateJoinToken(short_hash),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("64")));
}

TEST_P(StoreTest, JoinTokenConcurrentConsumeHasOneWinner) {
  const absl::Time now = clock_.Now();
  ASSERT_THAT(store_->CreateJoinToken(MakeToken('e', now, absl::Hours(1))), IsOk());
  // Half the threads use a second store on the same data (another replica or process).
  SHUTTLE_ASSERT_OK_AND_ASSIGN(StorePtr other, OpenAgain());
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      Store& s = i % 2 == 0 ? *store_ : *other;
      results[i] = s.ConsumeJoinToken(std::string(64, 'e'), absl::StrCat("h", i), now).status();
    });
  }
  for (std::thread& t : threads) t.join();
  int ok = 0;
  for (const absl::Status& r : results) {
    if (r.ok()) {
      ++ok;
    } else {
      EXPECT_THAT(r, StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("already used")));
    }
  }
  EXPECT_EQ(ok, 1);
}

TEST_P(StoreTest, HostsRoundTripAndKeepFirstSeen) {
  EXPECT_THAT(store_->GetHost("web-1"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("web-1")));
  EXPECT_THAT(store_->ListHosts(), IsOkAndHolds(IsEmpty()));
  EXPECT_THAT(store_->PutHost(HostRecord{}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  const absl::Time t0 = clock_.Now();
  HostRecord host;
  host.host_id = "web-1";
  host.first_seen = t0;
  host.last_seen = t0;
  ASSERT_THAT(store_->PutHost(host), IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(HostRecord got, store_->GetHost("web-1"));
  EXPECT_EQ(got.first_seen, t0);
  EXPECT_EQ(got.acked_version, 0u);
  EXPECT_FALSE(got.nack_time.has_value());
  EXPECT_THAT(got.vms, IsEmpty());

  host.first_seen = t0 + absl::Hours(5);  // Ignored for an existing host.
  host.last_seen = t0 + absl::Seconds(7);
  host.acked_version = 4;
  host.nack_version = 4;
  host.nacked_version = 5;
  host.nack_error = "rule x: bad";
  host.nack_time = t0 + absl::Seconds(6);
  v1::VmInfo vm;
  vm.set_name("web");
  vm.set_init_pid(42);
  vm.set_running(true);
  host.vms.push_back(vm);
  ASSERT_THAT(store_->PutHost(host), IsOk());
  HostRecord other;
  other.host_id = "db-1";
  other.first_seen = other.last_seen = t0;
  ASSERT_THAT(store_->PutHost(other), IsOk());

  store_.reset();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, OpenAgain());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(got, store_->GetHost("web-1"));
  EXPECT_EQ(got.first_seen, t0);
  EXPECT_EQ(got.last_seen, t0 + absl::Seconds(7));
  EXPECT_EQ(got.acked_version, 4u);
  EXPECT_EQ(got.nack_version, 4u);
  EXPECT_EQ(got.nacked_version, 5u);
  EXPECT_EQ(got.nack_error, "rule x: bad");
  ASSERT_TRUE(got.nack_time.has_value());
  EXPECT_EQ(*got.nack_time, t0 + absl::Seconds(6));
  ASSERT_THAT(got.vms, SizeIs(1));
  EXPECT_TRUE(MessageDifferencer::Equals(got.vms[0], vm));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<HostRecord> all, store_->ListHosts());
  ASSERT_THAT(all, SizeIs(2));
  EXPECT_EQ(all[0].host_id, "db-1");
  EXPECT_EQ(all[1].host_id, "web-1");
}

// ----- Audit log -------------------------------------------------------------------------------

v1::AuditRecord MakeAuditRecord(const std::string& id, const std::string& host,
                                const std::string& subject_vm, const std::string& object_vm,
                                v1::Verdict verdict, v1::InteractionKind kind, int64_t seconds) {
  v1::AuditRecord r;
  r.set_id(id);
  *r.mutable_time() = TimeUtil::SecondsToTimestamp(seconds);
  r.set_host_id(host);
  v1::Interaction* i = r.mutable_interaction();
  i->set_host_id(host);
  i->set_subject_vm(subject_vm);
  i->set_pid(4242);
  i->set_program("/usr/bin/psql");
  i->set_uid(1000);
  i->set_kind(kind);
  i->set_object_vm(object_vm);
  i->set_object_name("/run/postgresql/.s.PGSQL.5432");
  v1::Decision* d = r.mutable_decision();
  d->set_verdict(verdict);
  d->set_scope(v1::CROSS_VM);
  d->set_policy("webapp");
  d->set_rule("web-to-db");
  d->set_policy_version(7);
  d->set_enforced(true);
  *r.mutable_latency() = TimeUtil::MicrosecondsToDuration(35);
  return r;
}

v1::AuditRecord SimpleRecord(const std::string& id, int64_t seconds = 1'700'000'000) {
  return MakeAuditRecord(id, "web-1", "web", "db", v1::VERDICT_ALLOW, v1::UNIX_CONNECT, seconds);
}

std::vector<std::string> Ids(const std::vector<v1::AuditRecord>& records) {
  std::vector<std::string> out;
  out.reserve(records.size());
  for (const v1::AuditRecord& r : records) out.push_back(r.id());
  return out;
}

// Every record matching `filter`, following page tokens with pages of `page_size`.
absl::StatusOr<std::vector<v1::AuditRecord>> QueryAll(Store& store, const v1::AuditFilter& filter,
                                                      uint32_t page_size) {
  std::vector<v1::AuditRecord> out;
  std::string token;
  for (int pages = 0; pages < 1000; ++pages) {
    absl::StatusOr<AuditPage> page = store.QueryAudit(filter, page_size, token);
    if (!page.ok()) return page.status();
    out.insert(out.end(), page->records.begin(), page->records.end());
    if (page->next_page_token.empty()) return out;
    token = page->next_page_token;
  }
  return absl::InternalError("page tokens never end");
}

TEST_P(StoreTest, AuditPutIsIdempotentById) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      AuditPutResult first, store_->PutAuditRecords({SimpleRecord("h/1/1"), SimpleRecord("h/1/2"),
                                                     SimpleRecord("h/1/3")}));
  EXPECT_EQ(first.accepted, 3u);
  EXPECT_EQ(first.duplicates, 0u);
  ASSERT_THAT(first.sequences, SizeIs(3));
  EXPECT_GT(first.sequences[0], 0u);
  EXPECT_LT(first.sequences[0], first.sequences[1]);
  EXPECT_LT(first.sequences[1], first.sequences[2]);

  // A retried batch (the agent never saw the answer) plus one new record.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      AuditPutResult retry, store_->PutAuditRecords({SimpleRecord("h/1/2"), SimpleRecord("h/1/3"),
                                                     SimpleRecord("h/1/4")}));
  EXPECT_EQ(retry.accepted, 1u);
  EXPECT_EQ(retry.duplicates, 2u);
  ASSERT_THAT(retry.sequences, SizeIs(3));
  EXPECT_EQ(retry.sequences[0], 0u);
  EXPECT_EQ(retry.sequences[1], 0u);
  EXPECT_GT(retry.sequences[2], first.sequences[2]);

  // The same id twice in one batch is stored once.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      AuditPutResult twice,
      store_->PutAuditRecords({SimpleRecord("h/1/5"), SimpleRecord("h/1/5")}));
  EXPECT_EQ(twice.accepted, 1u);
  EXPECT_EQ(twice.duplicates, 1u);

  // A batch with a record without id stores nothing, not even its good records.
  EXPECT_THAT(store_->PutAuditRecords({SimpleRecord("h/1/6"), SimpleRecord("")}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("#1 has no id")));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPutResult empty, store_->PutAuditRecords({}));
  EXPECT_EQ(empty.accepted + empty.duplicates, 0u);

  // What is stored reads back whole, in storage order, also after a restart.
  store_.reset();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, OpenAgain());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPage page, store_->QueryAudit({}, 0, ""));
  EXPECT_THAT(Ids(page.records), ElementsAre("h/1/1", "h/1/2", "h/1/3", "h/1/4", "h/1/5"));
  EXPECT_TRUE(page.next_page_token.empty());
  ASSERT_THAT(page.sequences, SizeIs(5));
  EXPECT_EQ(page.sequences[0], first.sequences[0]);
  EXPECT_EQ(page.sequences[3], retry.sequences[2]);
  EXPECT_TRUE(MessageDifferencer::Equals(page.records[0], SimpleRecord("h/1/1")));
  // A restart does not make old ids new.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPutResult after,
                               store_->PutAuditRecords({SimpleRecord("h/1/1")}));
  EXPECT_EQ(after.duplicates, 1u);
}

TEST_P(StoreTest, AuditConcurrentUploadsOfOneBatchStoreEachRecordOnce) {
  // Two stores on the same data (replicas) and four uploaders racing with the same records.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(StorePtr other, OpenAgain());
  std::vector<v1::AuditRecord> batch;
  for (int i = 0; i < 40; ++i) batch.push_back(SimpleRecord(absl::StrCat("h/1/", i)));
  constexpr int kThreads = 4;
  std::vector<absl::StatusOr<AuditPutResult>> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back(
        [&, t] { results[t] = (t % 2 ? *other : *store_).PutAuditRecords(batch); });
  }
  for (std::thread& t : threads) t.join();
  uint64_t accepted = 0;
  uint64_t duplicates = 0;
  for (const auto& r : results) {
    ASSERT_THAT(r, IsOk());
    accepted += r->accepted;
    duplicates += r->duplicates;
  }
  EXPECT_EQ(accepted, 40u);
  EXPECT_EQ(duplicates, 40u * (kThreads - 1));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<v1::AuditRecord> all, QueryAll(*store_, {}, 7));
  EXPECT_THAT(all, SizeIs(40));
}

TEST_P(StoreTest, AuditQueryFilters) {
  const int64_t t0 = 1'700'000'000;
  ASSERT_THAT(
      store_->PutAuditRecords({
          MakeAuditRecord("a", "web-1", "web", "db", v1::VERDICT_ALLOW, v1::UNIX_CONNECT, t0),
          MakeAuditRecord("b", "web-1", "web", "host", v1::VERDICT_DENY, v1::SIGNAL, t0 + 10),
          MakeAuditRecord("c", "db-1", "db", "web", v1::VERDICT_DENY, v1::UNIX_CONNECT, t0 + 20),
          MakeAuditRecord("d", "db-1", "cache", "db", v1::VERDICT_REDIRECT, v1::TCP_CONNECT,
                          t0 + 30),
          // Stored last but decided first: order is storage order, not decision time.
          MakeAuditRecord("e", "web-1", "cache", "", v1::VERDICT_ALLOW, v1::MQ_OPEN, t0 - 5),
      }),
      IsOk());
  auto ids = [&](const v1::AuditFilter& filter) -> std::vector<std::string> {
    absl::StatusOr<AuditPage> page = store_->QueryAudit(filter, 0, "");
    EXPECT_THAT(page, IsOk());
    return page.ok() ? Ids(page->records) : std::vector<std::string>{"error"};
  };
  v1::AuditFilter f;
  EXPECT_THAT(ids(f), ElementsAre("a", "b", "c", "d", "e"));
  f.set_host_id("web-1");
  EXPECT_THAT(ids(f), ElementsAre("a", "b", "e"));
  f.Clear();
  f.set_vm("web");  // Subject or object VM.
  EXPECT_THAT(ids(f), ElementsAre("a", "b", "c"));
  f.set_vm("db");
  EXPECT_THAT(ids(f), ElementsAre("a", "c", "d"));
  f.set_vm("host");
  EXPECT_THAT(ids(f), ElementsAre("b"));
  f.Clear();
  *f.mutable_since() = TimeUtil::SecondsToTimestamp(t0 + 20);  // At or after.
  EXPECT_THAT(ids(f), ElementsAre("c", "d"));
  f.Clear();
  f.set_verdict(v1::VERDICT_DENY);
  EXPECT_THAT(ids(f), ElementsAre("b", "c"));
  f.Clear();
  f.set_kind(v1::UNIX_CONNECT);
  EXPECT_THAT(ids(f), ElementsAre("a", "c"));
  // Every set field must match.
  f.set_vm("web");
  f.set_host_id("db-1");
  f.set_verdict(v1::VERDICT_DENY);
  *f.mutable_since() = TimeUtil::SecondsToTimestamp(t0);
  EXPECT_THAT(ids(f), ElementsAre("c"));
  f.set_kind(v1::SIGNAL);
  EXPECT_THAT(ids(f), IsEmpty());
  f.Clear();
  f.set_host_id("nope");
  EXPECT_THAT(ids(f), IsEmpty());
}

TEST_P(StoreTest, AuditQueryPages) {
  std::vector<v1::AuditRecord> batch;
  for (int i = 0; i < 25; ++i) {
    batch.push_back(MakeAuditRecord(absl::StrCat("r", i), "web-1", "web", "db",
                                    i % 2 ? v1::VERDICT_DENY : v1::VERDICT_ALLOW, v1::UNIX_CONNECT,
                                    1'700'000'000 + i));
  }
  ASSERT_THAT(store_->PutAuditRecords(batch), IsOk());

  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPage p1, store_->QueryAudit({}, 10, ""));
  ASSERT_THAT(p1.records, SizeIs(10));
  EXPECT_EQ(p1.records[0].id(), "r0");
  ASSERT_FALSE(p1.next_page_token.empty());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPage p2, store_->QueryAudit({}, 10, p1.next_page_token));
  ASSERT_THAT(p2.records, SizeIs(10));
  EXPECT_EQ(p2.records[0].id(), "r10");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPage p3, store_->QueryAudit({}, 10, p2.next_page_token));
  EXPECT_THAT(Ids(p3.records), ElementsAre("r20", "r21", "r22", "r23", "r24"));
  EXPECT_TRUE(p3.next_page_token.empty());
  EXPECT_GT(p2.sequences.front(), p1.sequences.back());

  // Exactly a page full: no token, since there is nothing more.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPage whole, store_->QueryAudit({}, 25, ""));
  EXPECT_THAT(whole.records, SizeIs(25));
  EXPECT_TRUE(whole.next_page_token.empty());

  // A token stays valid while records are added: the next page continues after it.
  ASSERT_THAT(store_->PutAuditRecords({SimpleRecord("late")}), IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPage p3b, store_->QueryAudit({}, 10, p2.next_page_token));
  EXPECT_THAT(Ids(p3b.records), ElementsAre("r20", "r21", "r22", "r23", "r24", "late"));

  // Paging a filtered query visits exactly the matching records, in order.
  v1::AuditFilter denied;
  denied.set_verdict(v1::VERDICT_DENY);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<v1::AuditRecord> all_denied,
                               QueryAll(*store_, denied, 4));
  ASSERT_THAT(all_denied, SizeIs(12));
  EXPECT_EQ(all_denied.front().id(), "r1");
  EXPECT_EQ(all_denied.back().id(), "r23");

  EXPECT_THAT(store_->QueryAudit({}, kMaxAuditPageSize + 1, ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("limit")));
  EXPECT_THAT(store_->QueryAudit({}, 10, "not-a-token"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("page token")));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPage max, store_->QueryAudit({}, kMaxAuditPageSize, ""));
  EXPECT_THAT(max.records, SizeIs(26));
}

TEST_P(StoreTest, AuditDefaultPageIsOneHundred) {
  std::vector<v1::AuditRecord> batch;
  for (int i = 0; i < 101; ++i) batch.push_back(SimpleRecord(absl::StrCat("r", i)));
  ASSERT_THAT(store_->PutAuditRecords(batch), IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(AuditPage page, store_->QueryAudit({}, 0, ""));
  EXPECT_THAT(page.records, SizeIs(kDefaultAuditPageSize));
  EXPECT_FALSE(page.next_page_token.empty());
}

// ----- Standing answers --------------------------------------------------------------------------

v1::StandingAnswer MakeAnswer(const std::string& id, const std::string& subject_vm,
                              const std::string& object, v1::Verdict verdict) {
  v1::StandingAnswer a;
  a.set_id(id);
  a.set_subject_vm(subject_vm);
  a.set_kind(v1::UNIX_CONNECT);
  a.set_object_vm("*");
  a.set_object(object);
  a.set_verdict(verdict);
  *a.mutable_ttl() = TimeUtil::SecondsToDuration(30);
  a.set_note("ticket 12");
  a.set_author("alice");
  *a.mutable_created() = TimeUtil::SecondsToTimestamp(1'700'000'000);
  return a;
}

TEST_P(StoreTest, StandingAnswersCrud) {
  EXPECT_THAT(store_->ListStandingAnswers(), IsOkAndHolds(IsEmpty()));
  bool replaced = true;
  ASSERT_THAT(store_->PutStandingAnswer(MakeAnswer("b", "web", "/run/db.sock", v1::VERDICT_ALLOW),
                                        &replaced),
              IsOk());
  EXPECT_FALSE(replaced);
  ASSERT_THAT(store_->PutStandingAnswer(MakeAnswer("a", "*", "/run/*", v1::VERDICT_DENY), nullptr),
              IsOk());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<v1::StandingAnswer> listed,
                               store_->ListStandingAnswers());
  ASSERT_THAT(listed, SizeIs(2));
  EXPECT_EQ(listed[0].id(), "a");  // By id.
  EXPECT_TRUE(MessageDifferencer::Equals(
      listed[1], MakeAnswer("b", "web", "/run/db.sock", v1::VERDICT_ALLOW)));

  // Replacing by id, also with a new selector.
  v1::StandingAnswer changed = MakeAnswer("b", "web", "/run/db2.sock", v1::VERDICT_DENY);
  ASSERT_THAT(store_->PutStandingAnswer(changed, &replaced), IsOk());
  EXPECT_TRUE(replaced);
  // Another id with the same selector is refused, naming the answer that has it.
  EXPECT_THAT(store_->PutStandingAnswer(MakeAnswer("c", "web", "/run/db2.sock", v1::VERDICT_ALLOW),
                                        nullptr),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("\"b\"")));
  // The same selector for another kind is another answer.
  v1::StandingAnswer signal = MakeAnswer("c", "web", "/run/db2.sock", v1::VERDICT_ALLOW);
  signal.set_kind(v1::SIGNAL);
  EXPECT_THAT(store_->PutStandingAnswer(signal, nullptr), IsOk());
  EXPECT_THAT(store_->PutStandingAnswer(MakeAnswer("", "web", "/x", v1::VERDICT_ALLOW), nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("id is empty")));

  store_.reset();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(store_, OpenAgain());
  SHUTTLE_ASSERT_OK_AND_ASSIGN(listed, store_->ListStandingAnswers());
  ASSERT_THAT(listed, SizeIs(3));
  EXPECT_TRUE(MessageDifferencer::Equals(listed[1], changed));

  SHUTTLE_ASSERT_OK_AND_ASSIGN(v1::StandingAnswer removed, store_->DeleteStandingAnswer("b"));
  EXPECT_TRUE(MessageDifferencer::Equals(removed, changed));
  EXPECT_THAT(store_->DeleteStandingAnswer("b"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("\"b\" not found")));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(listed, store_->ListStandingAnswers());
  ASSERT_THAT(listed, SizeIs(2));
  EXPECT_EQ(listed[0].id(), "a");
  EXPECT_EQ(listed[1].id(), "c");
  // Its selector is free again.
  EXPECT_THAT(store_->PutStandingAnswer(MakeAnswer("d", "web", "/run/db2.sock", v1::VERDICT_ALLOW),
                                        nullptr),
              IsOk());
}

}  // namespace
}  // namespace shuttle::controller::testing
