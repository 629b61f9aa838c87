// Unit tests of the invocation policy helpers: which stand-ins a policy wants, what a decision
// means for one invocation, and the environment filter.
#include "agent/invoke/invoke_plan.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policy/policy_testing.h"

namespace shuttle::agent::invoke {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::shared_ptr<const policy::CompiledPolicy> Compile(const std::string& yaml) {
  return policy::testing::CompileYaml(yaml);
}

constexpr char kPolicy[] = R"(
name: inv
rules:
  - name: hostname-in-db
    subject: { vm: web }
    kind: invoke
    object: { vm: db, program: /usr/bin/hostname }
    action: allow
    env: [LANG, LC_*]
  - name: any-to-app
    kind: invoke
    object: { vm: app, program: /usr/bin/tool }
    action: allow
  - name: prefix-ignored
    kind: invoke
    object: { vm: db, program: /opt/bin/* }
    action: allow
  - name: no-vm-ignored
    kind: invoke
    object: { program: /usr/bin/novm }
    action: allow
  - name: redirected
    subject: { vm: web }
    kind: invoke
    object: { program: /usr/bin/dump }
    action: redirect
    redirect: { vm: db, name: /usr/lib/dump-real }
  - name: denied
    subject: { vm: db }
    kind: invoke
    object: { vm: web, program: /usr/bin/secret }
    action: deny
)";

TEST(PlanPlacementsTest, NamedAndAnySubjectsExactProgramsOnly) {
  auto compiled = Compile(kPolicy);
  std::vector<Placement> plan = PlanPlacements(*compiled, {"app", "db", "web"});
  std::vector<std::string> got;
  for (const Placement& p : plan) got.push_back(p.caller_vm + " " + p.program + " " + p.target_vm);
  EXPECT_THAT(got, ElementsAre("db /usr/bin/tool app", "web /usr/bin/dump db",
                               "web /usr/bin/hostname db", "web /usr/bin/tool app"));
  EXPECT_EQ(plan[2].rule, "inv/hostname-in-db");
}

TEST(PlanPlacementsTest, MonitorModeAndAuditOnlyPlaceNothing) {
  auto compiled = Compile(R"(
name: mon
mode: monitor
rules:
  - name: r
    kind: invoke
    object: { vm: db, program: /usr/bin/x }
    action: allow
)");
  EXPECT_TRUE(PlanPlacements(*compiled, {"db", "web"}).empty());
  auto audit_only = Compile(R"(
name: ao
rules:
  - name: r
    kind: invoke
    object: { vm: db, program: /usr/bin/x }
    action: allow
    audit_only: true
)");
  EXPECT_TRUE(PlanPlacements(*audit_only, {"db", "web"}).empty());
}

policy::Verdict Decide(const policy::CompiledPolicy& compiled, const char* vm,
                       const char* program) {
  policy::InteractionView view;
  view.subject_vm = vm;
  view.program = program;
  view.kind = v1::INVOKE;
  view.object_name = program;
  return compiled.Decide(view);
}

TEST(TargetOfTest, AllowRedirectDenyAndNoRule) {
  auto compiled = Compile(kPolicy);
  std::string why;
  std::optional<InvokeTarget> t =
      TargetOf(Decide(*compiled, "web", "/usr/bin/hostname"), "web", "/usr/bin/hostname", &why);
  ASSERT_TRUE(t.has_value()) << why;
  EXPECT_EQ(t->vm, "db");
  EXPECT_EQ(t->program, "/usr/bin/hostname");
  EXPECT_THAT(t->env_patterns, ElementsAre("LANG", "LC_*"));

  t = TargetOf(Decide(*compiled, "web", "/usr/bin/dump"), "web", "/usr/bin/dump", &why);
  ASSERT_TRUE(t.has_value()) << why;
  EXPECT_EQ(t->vm, "db");
  EXPECT_EQ(t->program, "/usr/lib/dump-real");

  EXPECT_FALSE(TargetOf(Decide(*compiled, "db", "/usr/bin/secret"), "db", "/usr/bin/secret", &why));
  EXPECT_THAT(why, HasSubstr("denied by rule inv/denied"));

  EXPECT_FALSE(TargetOf(Decide(*compiled, "web", "/bin/ls"), "web", "/bin/ls", &why));
  EXPECT_THAT(why, HasSubstr("no rule places /bin/ls in another VM"));

  // A rule that places the program in the caller's own VM places it nowhere else.
  EXPECT_FALSE(TargetOf(Decide(*compiled, "app", "/usr/bin/tool"), "app", "/usr/bin/tool", &why));
  EXPECT_THAT(why, HasSubstr("does not place"));
}

TEST(PlacementOfTest, FindsWhatAVmHandsOn) {
  auto compiled = Compile(kPolicy);
  std::optional<Placement> p = PlacementOf(*compiled, "web", "/usr/bin/hostname");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->target_vm, "db");
  // db places /usr/bin/tool in app (the any-subject rule): running it in db would hand it on.
  p = PlacementOf(*compiled, "db", "/usr/bin/tool");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->target_vm, "app");
  EXPECT_FALSE(PlacementOf(*compiled, "db", "/usr/bin/hostname").has_value());
  EXPECT_FALSE(PlacementOf(*compiled, "app", "/usr/bin/tool").has_value());
}

TEST(FilterEnvTest, PassesNamedAndPrefixedAddsDefaultPath) {
  std::vector<std::string> env = {"LANG=C", "LC_ALL=C.UTF-8", "SECRET=x",
                                  "LCX=no", "bogus",          "=novalue"};
  EXPECT_THAT(FilterEnv(env, {"LANG", "LC_*"}),
              ElementsAre("LANG=C", "LC_ALL=C.UTF-8", std::string(kDefaultPath)));
  EXPECT_THAT(FilterEnv({"PATH=/x", "HOME=/root"}, {"PATH"}), ElementsAre("PATH=/x"));
  EXPECT_THAT(FilterEnv(env, {}), ElementsAre(std::string(kDefaultPath)));
  EXPECT_TRUE(EnvPassed("LC_", {"LC_*"}));
  EXPECT_FALSE(EnvPassed("LC", {"LC_*"}));
  EXPECT_FALSE(EnvPassed("LANGUAGE", {"LANG"}));
}

}  // namespace
}  // namespace shuttle::agent::invoke
