// Unit tests of PlanShares: which fifo-open / shm-open rules become bind mounts, where, and why
// others do not.
#include "agent/share/share_plan.h"

#include <memory>
#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policy/policy_testing.h"

namespace shuttle::agent::share {
namespace {

using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::IsEmpty;

using ::shuttle::policy::testing::CompileYaml;

const std::vector<std::string> kVms = {"db", "web", "worker"};

::testing::Matcher<WantedShare> IsBind(std::string source_vm, std::string source_path,
                                       std::string target_vm, std::string target_path,
                                       bool read_only) {
  return Field(&WantedShare::bind, ::testing::AllOf(Field(&BindSpec::source_vm, source_vm),
                                                    Field(&BindSpec::source_path, source_path),
                                                    Field(&BindSpec::target_vm, target_vm),
                                                    Field(&BindSpec::target_path, target_path),
                                                    Field(&BindSpec::read_only, read_only)));
}

::testing::Matcher<SkippedRule> SkippedAs(std::string rule, std::string reason) {
  return ::testing::AllOf(Field(&SkippedRule::rule, rule), Field(&SkippedRule::reason, reason));
}

TEST(ShmPathTest, OnlyPosixNames) {
  EXPECT_EQ(ShmPath("/seg"), "/dev/shm/seg");
  EXPECT_EQ(ShmPath("seg"), std::nullopt);
  EXPECT_EQ(ShmPath("/a/b"), std::nullopt);
  EXPECT_EQ(ShmPath("/"), std::nullopt);
  EXPECT_EQ(ShmPath("/.."), std::nullopt);
  EXPECT_EQ(ShmPath("key:0x1234"), std::nullopt);
}

TEST(PlanSharesTest, FifoAllowedFromOneVmToAnother) {
  auto policy = CompileYaml(R"(
name: p
rules:
  - name: web-fifo
    subject: { vm: web }
    kind: fifo-open
    object: { vm: db, path: /run/app/fifo }
    action: allow
)");
  SharePlan plan = PlanShares(*policy, kVms);
  EXPECT_THAT(plan.shares,
              ElementsAre(IsBind("db", "/run/app/fifo", "web", "/run/app/fifo", true)));
  EXPECT_EQ(plan.shares[0].rule, "p/web-fifo");
  EXPECT_EQ(plan.shares[0].kind, v1::FIFO_OPEN);
  EXPECT_THAT(plan.skipped, IsEmpty());
  // The subject VM does not exist: nothing (yet). The object's VM need not exist.
  EXPECT_THAT(PlanShares(*policy, {"db"}).shares, IsEmpty());
  EXPECT_THAT(PlanShares(*policy, {"web"}).shares, ::testing::SizeIs(1));
}

TEST(PlanSharesTest, ShmForEveryOtherVmIsWritable) {
  auto policy = CompileYaml(R"(
name: p
rules:
  - name: all-see-seg
    kind: shm-open
    object: { vm: db, name: /seg }
    action: allow
)");
  EXPECT_THAT(PlanShares(*policy, kVms).shares,
              ElementsAre(IsBind("db", "/dev/shm/seg", "web", "/dev/shm/seg", false),
                          IsBind("db", "/dev/shm/seg", "worker", "/dev/shm/seg", false)));
}

TEST(PlanSharesTest, RedirectMayRenameAndTargetTheHost) {
  auto policy = CompileYaml(R"(
name: p
rules:
  - name: to-db
    subject: { vm: web }
    kind: fifo-open
    object: { path: /run/app.fifo }
    action: redirect
    redirect: { vm: db, name: /run/other.fifo }
  - name: to-host
    subject: { vm: worker }
    kind: shm-open
    object: { name: /cfg }
    action: redirect
    redirect: { vm: host }
)");
  EXPECT_THAT(PlanShares(*policy, kVms).shares,
              ElementsAre(IsBind("db", "/run/other.fifo", "web", "/run/app.fifo", true),
                          IsBind("host", "/dev/shm/cfg", "worker", "/dev/shm/cfg", false)));
}

TEST(PlanSharesTest, RulesThatCannotBeBoundAreSkippedWithAReason) {
  auto policy = CompileYaml(R"(
name: p
rules:
  - name: prefix
    subject: { vm: web }
    kind: fifo-open
    object: { vm: db, path: /run/app/* }
    action: allow
  - name: program
    subject: { vm: web, program: /usr/bin/x }
    kind: fifo-open
    object: { vm: db, path: /run/a }
    action: allow
  - name: uid
    subject: { vm: web, uid: 1000 }
    kind: fifo-open
    object: { vm: db, path: /run/b }
    action: allow
  - name: from-host
    subject: { vm: host }
    kind: fifo-open
    object: { vm: db, path: /run/c }
    action: allow
  - name: nowhere
    subject: { vm: web }
    kind: fifo-open
    object: { path: /run/d }
    action: allow
  - name: asked
    subject: { vm: web }
    kind: shm-open
    object: { vm: db, name: /e }
    action: ask
  - name: sysv
    subject: { vm: web }
    kind: shm-open
    object: { vm: db, name: "key:0x1234" }
    action: allow
  - name: watched
    subject: { vm: web }
    kind: shm-open
    object: { vm: db, name: /f }
    action: allow
    audit_only: true
  - name: denied
    subject: { vm: web }
    kind: shm-open
    object: { vm: db, name: /g }
    action: deny
)");
  SharePlan plan = PlanShares(*policy, kVms);
  EXPECT_THAT(plan.shares, IsEmpty());
  EXPECT_THAT(plan.skipped,
              ::testing::UnorderedElementsAre(
                  SkippedAs("p/prefix", kSkipPrefix), SkippedAs("p/program", kSkipSubject),
                  SkippedAs("p/uid", kSkipSubject), SkippedAs("p/from-host", kSkipSubject),
                  SkippedAs("p/nowhere", kSkipObjectVm), SkippedAs("p/asked", kSkipAsk),
                  SkippedAs("p/sysv", kSkipName), SkippedAs("p/watched", kSkipMonitor)));
}

TEST(PlanSharesTest, AHigherRankedRuleThatDecidesOtherwisePreventsTheBind) {
  auto policy = CompileYaml(R"(
name: p
rules:
  - name: web-fifo
    subject: { vm: web }
    kind: fifo-open
    object: { vm: db, path: /run/app/fifo }
    action: allow
  - name: not-for-x
    subject: { vm: web, program: /usr/bin/x }
    kind: fifo-open
    object: { path: /run/app/* }
    action: deny
  - name: all-seg
    kind: shm-open
    object: { vm: db, name: /seg }
    action: allow
  - name: worker-no-seg
    subject: { vm: worker }
    kind: shm-open
    object: { name: /seg }
    action: deny
  - name: broad-deny
    kind: shm-open
    object: { name: "/*" }
    action: deny
)");
  SharePlan plan = PlanShares(*policy, kVms);
  // web: the deny for one program of web wins for that program, so no bind for web's fifo.
  // worker: its own deny of /seg ranks higher (names the VM). web: the prefix deny for every
  // VM ranks lower than the exact allow for every VM, so web gets /seg.
  EXPECT_THAT(plan.shares, ElementsAre(IsBind("db", "/dev/shm/seg", "web", "/dev/shm/seg", false)));
  EXPECT_THAT(plan.skipped,
              ::testing::UnorderedElementsAre(SkippedAs("p/web-fifo", kSkipOverridden),
                                              SkippedAs("p/all-seg", kSkipOverridden)));
}

TEST(PlanSharesTest, AnotherRuleWithTheSameOutcomeDoesNotPreventIt) {
  auto policy = CompileYaml(R"(
name: p
rules:
  - name: web-fifo
    subject: { vm: web }
    kind: fifo-open
    object: { vm: db, path: /run/app/fifo }
    action: allow
  - name: also-for-x
    subject: { vm: web, program: /usr/bin/x }
    kind: fifo-open
    object: { vm: db, path: /run/app/fifo }
    action: allow
)");
  SharePlan plan = PlanShares(*policy, kVms);
  EXPECT_THAT(plan.shares,
              ElementsAre(IsBind("db", "/run/app/fifo", "web", "/run/app/fifo", true)));
  EXPECT_THAT(plan.skipped, ElementsAre(SkippedAs("p/also-for-x", kSkipSubject)));
}

}  // namespace
}  // namespace shuttle::agent::share
