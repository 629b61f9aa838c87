#include "controller/push/host_bundle.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace shuttle::controller::push {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

v1::Rule MakeRule(const std::string& name, const std::string& subject_vm) {
  v1::Rule r;
  r.set_name(name);
  r.mutable_subject()->set_vm(subject_vm);
  r.add_kinds(v1::UNIX_CONNECT);
  r.set_action(v1::ALLOW);
  return r;
}

v1::Policy MakePolicy(const std::string& name, std::vector<std::string> hosts,
                      std::vector<v1::Rule> rules) {
  v1::Policy p;
  p.set_name(name);
  for (std::string& h : hosts) p.add_hosts(std::move(h));
  for (v1::Rule& r : rules) *p.add_rules() = std::move(r);
  return p;
}

std::vector<std::string> RuleNames(const v1::Policy& p) {
  std::vector<std::string> out;
  for (const v1::Rule& r : p.rules()) out.push_back(r.name());
  return out;
}

std::vector<std::string> PolicyNames(const v1::PolicyBundle& b) {
  std::vector<std::string> out;
  for (const v1::Policy& p : b.policies()) out.push_back(p.name());
  return out;
}

TEST(RuleCanApplyTest, AnyVmHostOrOneOfTheHostsVms) {
  const std::vector<std::string> vms = {"web", "db"};
  EXPECT_TRUE(RuleCanApply("", vms));
  EXPECT_TRUE(RuleCanApply("*", vms));
  EXPECT_TRUE(RuleCanApply("host", vms));
  EXPECT_TRUE(RuleCanApply("db", vms));
  EXPECT_FALSE(RuleCanApply("cache", vms));
  EXPECT_FALSE(RuleCanApply("we", vms));
  EXPECT_FALSE(RuleCanApply("web", {}));
}

TEST(HostBundleTest, SelectsPoliciesByHostAndRulesByVm) {
  v1::PolicyBundle fleet;
  fleet.set_version(7);
  *fleet.add_policies() =
      MakePolicy("web", {},
                 {MakeRule("any", ""), MakeRule("star", "*"), MakeRule("from-web", "web"),
                  MakeRule("from-cache", "cache"), MakeRule("from-host", "host")});
  *fleet.add_policies() = MakePolicy("only-db-hosts", {"db-*"}, {MakeRule("r", "")});
  *fleet.add_policies() = MakePolicy("web-hosts", {"web-1", "web-2"}, {MakeRule("c", "cache")});

  v1::PolicyBundle b = HostBundle(fleet, "web-1", {"web", "db"});
  EXPECT_EQ(b.version(), 7u);
  ASSERT_THAT(PolicyNames(b), ElementsAre("web", "web-hosts"));
  EXPECT_THAT(RuleNames(b.policies(0)), ElementsAre("any", "star", "from-web", "from-host"));
  // Kept although none of its rules can apply here: a VM named "cache" may appear later.
  EXPECT_THAT(RuleNames(b.policies(1)), IsEmpty());

  v1::PolicyBundle db = HostBundle(fleet, "db-9", {"cache"});
  ASSERT_THAT(PolicyNames(db), ElementsAre("web", "only-db-hosts"));
  EXPECT_THAT(RuleNames(db.policies(0)), ElementsAre("any", "star", "from-cache", "from-host"));
}

TEST(HostBundleKeyTest, EqualKeysMeanEqualBundles) {
  v1::PolicyBundle fleet;
  fleet.set_version(7);
  *fleet.add_policies() = MakePolicy("web", {}, {MakeRule("any", ""), MakeRule("w", "web")});
  *fleet.add_policies() = MakePolicy("only-db-hosts", {"db-*"}, {MakeRule("r", "")});
  *fleet.add_policies() = MakePolicy("web-hosts", {"web-1", "web-2"}, {MakeRule("c", "cache")});

  // Same applicable policies and the same VM set (order and repeats aside): one key, and
  // indeed one bundle.
  const std::string web1 = HostBundleKey(fleet, "web-1", {"web", "db"});
  EXPECT_EQ(HostBundleKey(fleet, "web-2", {"db", "web", "db"}), web1);
  EXPECT_TRUE(MessageDifferencer::Equals(HostBundle(fleet, "web-1", {"web", "db"}),
                                         HostBundle(fleet, "web-2", {"db", "web", "db"})));
  EXPECT_EQ(HostBundleKey(fleet, "db-1", {}), HostBundleKey(fleet, "db-2", {}));

  // Another policy set or another VM set: another key.
  EXPECT_NE(HostBundleKey(fleet, "web-3", {"web", "db"}), web1);
  EXPECT_NE(HostBundleKey(fleet, "db-1", {"web", "db"}), web1);
  EXPECT_NE(HostBundleKey(fleet, "web-1", {"web"}), web1);
  EXPECT_NE(HostBundleKey(fleet, "web-1", {"web", "db", "cache"}), web1);
  // Names are length-prefixed, so no pair of VM lists can spell the same key.
  EXPECT_NE(HostBundleKey(fleet, "h", {"a1:b"}), HostBundleKey(fleet, "h", {"a", "b"}));
  EXPECT_NE(HostBundleKey(fleet, "h", {"ab"}), HostBundleKey(fleet, "h", {"a", "b"}));
}

TEST(DeltaTest, UpsertsChangedAndNewRemovesGone) {
  v1::PolicyBundle base;
  base.set_version(3);
  *base.add_policies() = MakePolicy("a", {}, {MakeRule("r1", "")});
  *base.add_policies() = MakePolicy("b", {}, {MakeRule("r1", "")});
  *base.add_policies() = MakePolicy("c", {}, {MakeRule("r1", "")});
  v1::PolicyBundle target;
  target.set_version(5);
  *target.add_policies() = MakePolicy("c", {}, {MakeRule("r1", "")});  // Same, other position.
  *target.add_policies() = MakePolicy("a", {}, {MakeRule("r2", "")});  // Changed.
  *target.add_policies() = MakePolicy("d", {}, {MakeRule("r1", "")});  // New.

  BundleDelta delta = ComputeDelta(base, target);
  ASSERT_EQ(delta.upserts.size(), 2u);
  EXPECT_EQ(delta.upserts[0].name(), "a");
  EXPECT_EQ(delta.upserts[1].name(), "d");
  EXPECT_THAT(delta.removals, ElementsAre("b"));

  // Applying it gives the target (in name order).
  v1::PolicyBundle applied = ApplyDelta(base, 5, delta.upserts, delta.removals);
  v1::PolicyBundle expected;
  expected.set_version(5);
  *expected.add_policies() = target.policies(1);
  *expected.add_policies() = target.policies(0);
  *expected.add_policies() = target.policies(2);
  EXPECT_TRUE(MessageDifferencer::Equals(applied, expected)) << applied.DebugString();
}

TEST(DeltaTest, SmallDeltaOrFullSnapshot) {
  v1::PolicyBundle base;
  base.set_version(1);
  for (const char* name : {"a", "b", "c", "d"}) *base.add_policies() = MakePolicy(name, {}, {});
  v1::PolicyBundle target = base;
  target.set_version(2);

  // Nothing changed for this host: an empty delta (a version bump).
  std::optional<BundleDelta> empty = DeltaIfSmall(base, target, 16);
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->size(), 0u);

  *target.mutable_policies(0)->add_rules() = MakeRule("x", "");
  std::optional<BundleDelta> one = DeltaIfSmall(base, target, 16);
  ASSERT_TRUE(one.has_value());
  EXPECT_EQ(one->size(), 1u);
  // Over the limit: full.
  *target.mutable_policies(1)->add_rules() = MakeRule("x", "");
  EXPECT_FALSE(DeltaIfSmall(base, target, 1).has_value());
  // More changes than the target has policies: a full snapshot is no larger.
  v1::PolicyBundle shrunk;
  shrunk.set_version(3);
  *shrunk.add_policies() = MakePolicy("z", {}, {});
  EXPECT_FALSE(DeltaIfSmall(base, shrunk, 16).has_value());
}

TEST(DeltaTest, VmChangeChangesOnlyTheAffectedPolicy) {
  v1::PolicyBundle fleet;
  fleet.set_version(9);
  *fleet.add_policies() = MakePolicy("a", {}, {MakeRule("w", "web")});
  *fleet.add_policies() = MakePolicy("b", {}, {MakeRule("any", "")});
  v1::PolicyBundle before = HostBundle(fleet, "h", {});
  v1::PolicyBundle after = HostBundle(fleet, "h", {"web"});
  BundleDelta delta = ComputeDelta(before, after);
  ASSERT_EQ(delta.upserts.size(), 1u);
  EXPECT_EQ(delta.upserts[0].name(), "a");
  EXPECT_THAT(delta.removals, IsEmpty());
}

}  // namespace
}  // namespace shuttle::controller::push
