#include "agent/client/policy_snapshot.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::Policy MakePolicy(const std::string& name, const std::string& rule_name) {
  v1::Policy p;
  p.set_name(name);
  v1::Rule* rule = p.add_rules();
  rule->set_name(rule_name);
  rule->mutable_subject()->set_vm("web");
  rule->add_kinds(v1::UNIX_CONNECT);
  rule->mutable_object()->set_vm("db");
  rule->mutable_object()->set_path("/run/" + name + ".sock");
  rule->set_action(v1::ALLOW);
  return p;
}

std::vector<std::string> Names(const v1::PolicyBundle& bundle) {
  std::vector<std::string> names;
  for (const v1::Policy& p : bundle.policies()) names.push_back(p.name());
  return names;
}

std::string TempDir() {
  std::string tmpl = ::testing::TempDir() + "/snapshot-XXXXXX";
  char* dir = ::mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr);
  return tmpl;
}

TEST(BundleFromPushTest, FullSnapshotTakesThePushVersion) {
  v1::PolicyBundle current;
  current.set_version(3);
  v1::StreamResponse::Push push;
  push.set_version(7);
  *push.mutable_snapshot()->add_policies() = MakePolicy("b", "r");
  absl::StatusOr<v1::PolicyBundle> bundle = BundleFromPush(current, push);
  ASSERT_THAT(bundle, IsOk());
  EXPECT_EQ(bundle->version(), 7u);
  EXPECT_THAT(Names(*bundle), ElementsAre("b"));
}

TEST(BundleFromPushTest, DeltaReplacesAddsAndRemovesByName) {
  v1::PolicyBundle current;
  current.set_version(4);
  *current.add_policies() = MakePolicy("c", "old");
  *current.add_policies() = MakePolicy("a", "keep");
  *current.add_policies() = MakePolicy("gone", "x");
  v1::StreamResponse::Push push;
  push.set_version(5);
  push.set_is_delta(true);
  push.set_base_version(4);
  *push.add_upserts() = MakePolicy("c", "new");
  *push.add_upserts() = MakePolicy("b", "added");
  push.add_removals("gone");
  push.add_removals("never-existed");
  absl::StatusOr<v1::PolicyBundle> bundle = BundleFromPush(current, push);
  ASSERT_THAT(bundle, IsOk());
  EXPECT_EQ(bundle->version(), 5u);
  EXPECT_THAT(Names(*bundle), ElementsAre("a", "b", "c"));
  EXPECT_EQ(bundle->policies(2).rules(0).name(), "new");
}

TEST(BundleFromPushTest, DeltaOnAnotherBaseNeedsAFullSnapshot) {
  v1::PolicyBundle current;
  current.set_version(4);
  v1::StreamResponse::Push push;
  push.set_version(6);
  push.set_is_delta(true);
  push.set_base_version(5);
  EXPECT_THAT(BundleFromPush(current, push),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("full snapshot")));
}

TEST(BundleFromPushTest, DuplicateUpsertIsRejected) {
  v1::PolicyBundle current;
  v1::StreamResponse::Push push;
  push.set_version(1);
  push.set_is_delta(true);
  *push.add_upserts() = MakePolicy("a", "one");
  *push.add_upserts() = MakePolicy("a", "two");
  EXPECT_THAT(BundleFromPush(current, push),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("twice")));
}

TEST(PolicySnapshotTest, SaveLoadRoundTripAndCompile) {
  const std::string path = TempDir() + "/last-good.pb";
  EXPECT_THAT(LoadPolicySnapshot(path), StatusIs(absl::StatusCode::kNotFound, HasSubstr(path)));
  v1::PolicyBundle bundle;
  bundle.set_version(9);
  *bundle.add_policies() = MakePolicy("a", "r");
  ASSERT_THAT(SavePolicySnapshot(path, bundle), IsOk());
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  absl::StatusOr<LoadedPolicy> loaded = LoadAndCompileSnapshot(path, "host-1");
  ASSERT_THAT(loaded, IsOk());
  EXPECT_EQ(loaded->bundle.version(), 9u);
  EXPECT_EQ(loaded->compiled->version(), 9u);
  EXPECT_EQ(loaded->compiled->rule_count(), 1u);
}

TEST(PolicySnapshotTest, GarbageIsDataLoss) {
  const std::string path = TempDir() + "/last-good.pb";
  std::ofstream(path) << "\xff\xff\xff not a bundle";
  EXPECT_THAT(LoadPolicySnapshot(path), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(path)));
}

TEST(PolicySnapshotTest, UncompilableSnapshotNamesTheFile) {
  const std::string path = TempDir() + "/last-good.pb";
  v1::PolicyBundle bundle;
  bundle.set_version(2);
  v1::Policy bad = MakePolicy("a", "");  // A rule without a name does not validate.
  *bundle.add_policies() = bad;
  ASSERT_THAT(SavePolicySnapshot(path, bundle), IsOk());
  EXPECT_THAT(LoadAndCompileSnapshot(path, "h"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(path)));
}

}  // namespace
}  // namespace shuttle::agent
