#include "policy/matcher.h"

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <new>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policy/parser.h"

// Counts heap allocations made on this thread while `g_count_allocations` is set, so a test can
// check that Decide() does not allocate. Sanitizers replace operator new themselves; there the
// counting is off and the test is skipped.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SHUTTLE_COUNT_ALLOCATIONS 0
#else
#define SHUTTLE_COUNT_ALLOCATIONS 1
#endif

namespace {
thread_local bool g_count_allocations = false;
thread_local int g_allocations = 0;
}  // namespace

#if SHUTTLE_COUNT_ALLOCATIONS
// The replacements pair malloc with free; GCC cannot see that pairing across the replaced
// operators and warns at every delete.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
  if (g_count_allocations) ++g_allocations;
  void* p = std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#endif

namespace shuttle::policy {
namespace {

using ::shuttle::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

v1::Policy MustParse(std::string_view yaml, std::string_view file = "test.yaml") {
  ParseResult result = ParsePolicyYaml(yaml, file);
  std::string errors;
  for (const v1::ValidationError& e : result.errors) errors += FormatError(e) + "\n";
  EXPECT_TRUE(result.policy.has_value()) << errors << yaml;
  return result.policy.value_or(v1::Policy());
}

std::shared_ptr<const CompiledPolicy> MustCompile(const std::vector<std::string>& yamls,
                                                  std::string_view host = "",
                                                  uint64_t version = 7) {
  v1::PolicyBundle bundle;
  bundle.set_version(version);
  for (const std::string& yaml : yamls) *bundle.add_policies() = MustParse(yaml);
  absl::StatusOr<std::shared_ptr<const CompiledPolicy>> compiled =
      CompiledPolicy::Compile(bundle, host);
  EXPECT_TRUE(compiled.ok()) << compiled.status();
  return compiled.ok() ? *compiled : nullptr;
}

// An interaction whose strings live as long as the test case.
struct Ask {
  std::string subject_vm = "web";
  std::string program = "/usr/bin/app";
  uint32_t uid = 1000;
  v1::InteractionKind kind = v1::UNIX_CONNECT;
  std::string object_vm = "db";
  std::string object_name = "/run/postgresql/.s.PGSQL.5432";

  InteractionView View() const { return {subject_vm, program, uid, kind, object_vm, object_name}; }
};

std::string WinnerName(const Verdict& v) {
  return v.rule == nullptr ? "(default)" : v.rule->rule->name();
}

// ---------------------------------------------------------------------------------------------
// Defaults

struct DefaultCase {
  std::string name;
  std::string subject_vm;
  std::string object_vm;
  v1::Verdict verdict;
  v1::Scope scope;
  std::string reason;
};

class DefaultTest : public ::testing::TestWithParam<DefaultCase> {};

TEST_P(DefaultTest, NoRuleMeansLeastPenetration) {
  const DefaultCase& c = GetParam();
  // A policy whose only rule is about something else entirely.
  auto compiled = MustCompile({R"(name: other
rules:
  - name: signals
    kind: signal
    action: deny
)"});
  ASSERT_NE(compiled, nullptr);
  Ask ask;
  ask.subject_vm = c.subject_vm;
  ask.object_vm = c.object_vm;
  Verdict v = compiled->Decide(ask.View());
  EXPECT_EQ(v.rule, nullptr);
  EXPECT_EQ(v.verdict, c.verdict);
  EXPECT_EQ(v.scope, c.scope);
  EXPECT_TRUE(v.enforced);
  EXPECT_EQ(v.reason, c.reason);
  v1::Decision d = compiled->ToProto(v);
  EXPECT_EQ(d.reason(), c.reason);
  EXPECT_EQ(d.policy(), "");
  EXPECT_EQ(d.policy_version(), 7u);
}

INSTANTIATE_TEST_SUITE_P(
    EachScope, DefaultTest,
    ::testing::Values(DefaultCase{"IntraVm", "web", "web", v1::VERDICT_ALLOW, v1::INTRA_VM,
                                  "default: intra-vm allowed"},
                      DefaultCase{"UnknownObjectVm", "web", "", v1::VERDICT_ALLOW, v1::INTRA_VM,
                                  "default: intra-vm allowed"},
                      DefaultCase{"CrossVm", "web", "db", v1::VERDICT_DENY, v1::CROSS_VM,
                                  "default: cross-vm denied"},
                      DefaultCase{"VmHost", "web", "host", v1::VERDICT_DENY, v1::VM_HOST,
                                  "default: vm-host denied"},
                      DefaultCase{"HostVm", "host", "db", v1::VERDICT_DENY, v1::HOST_VM,
                                  "default: host-vm denied"},
                      DefaultCase{"HostHost", "host", "host", v1::VERDICT_ALLOW, v1::INTRA_VM,
                                  "default: intra-vm allowed"}),
    [](const ::testing::TestParamInfo<DefaultCase>& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// Precedence: each case is a set of rules (all of which match the interaction unless noted) and
// the rule that must win.

struct PrecedenceCase {
  std::string name;
  std::string rules;  // YAML rule list items.
  Ask ask;
  std::string winner;
};

void PrintTo(const PrecedenceCase& c, std::ostream* os) { *os << c.name; }
void PrintTo(const DefaultCase& c, std::ostream* os) { *os << c.name; }

PrecedenceCase Case(std::string name, std::string rules, std::string winner, Ask ask = Ask()) {
  return {std::move(name), std::move(rules), std::move(ask), std::move(winner)};
}

std::vector<PrecedenceCase> PrecedenceCases() {
  Ask tcp;
  tcp.kind = v1::TCP_CONNECT;
  tcp.object_name = "127.0.0.1:5432";
  Ask abstract;
  abstract.object_name = "@dbus-session";
  Ask host;
  host.subject_vm = "host";
  Ask unknown_object_vm;
  unknown_object_vm.object_vm = "";
  return {
      Case("ProgramBeatsVmBeatsGlobal", R"(
  - { name: global, kind: unix-connect, action: deny }
  - { name: vm, subject: { vm: web }, kind: unix-connect, action: deny }
  - { name: program, subject: { vm: web, program: /usr/bin/app }, kind: unix-connect, action: allow }
)",
           "program"),
      Case("ProgramAloneBeatsVm", R"(
  - { name: vm, subject: { vm: web }, kind: unix-connect, action: deny }
  - { name: program, subject: { program: /usr/bin/app }, kind: unix-connect, action: allow }
)",
           "program"),
      Case("VmBeatsGlobal", R"(
  - { name: global, kind: unix-connect, action: deny }
  - { name: vm, subject: { vm: web }, kind: unix-connect, action: allow }
)",
           "vm"),
      Case("UidAddsSpecificity", R"(
  - { name: vm, subject: { vm: web }, kind: unix-connect, action: deny }
  - { name: vm-uid, subject: { vm: web, uid: 1000 }, kind: unix-connect, action: allow }
)",
           "vm-uid"),
      Case("ProgramPrefixMatches", R"(
  - { name: vm, subject: { vm: web }, kind: unix-connect, action: deny }
  - { name: prog, subject: { vm: web, program: /usr/bin/* }, kind: unix-connect, action: allow }
)",
           "prog"),
      Case("SubjectBeatsObject", R"(
  - { name: exact-object, subject: { vm: web }, kind: unix-connect,
      object: { vm: db, path: /run/postgresql/.s.PGSQL.5432 }, action: deny }
  - { name: program-any-object, subject: { vm: web, program: /usr/bin/app }, kind: unix-connect,
      action: allow }
)",
           "program-any-object"),
      Case("LongerPrefixWins", R"(
  - { name: short, kind: unix-connect, object: { path: /run/* }, action: deny }
  - { name: long, kind: unix-connect, object: { path: /run/postgresql/* }, action: allow }
  - { name: none, kind: unix-connect, action: deny }
)",
           "long"),
      Case("ExactBeatsPrefix", R"(
  - { name: prefix, kind: unix-connect, object: { path: /run/postgresql/.s.PGSQL* }, action: deny }
  - { name: exact, kind: unix-connect, object: { path: /run/postgresql/.s.PGSQL.5432 }, action: allow }
)",
           "exact"),
      Case("ExactBeatsPrefixOfFullLength", R"(
  - { name: prefix, kind: unix-connect, object: { path: "/run/postgresql/.s.PGSQL.5432*" }, action: deny }
  - { name: exact, kind: unix-connect, object: { path: /run/postgresql/.s.PGSQL.5432 }, action: allow }
)",
           "exact"),
      Case("ObjectVmNamedBeatsAny", R"(
  - { name: any-vm, kind: unix-connect, object: { path: /run/postgresql/* }, action: deny }
  - { name: db-vm, kind: unix-connect, object: { vm: db, path: /run/postgresql/* }, action: allow }
)",
           "db-vm"),
      Case("DenyWinsATie", R"(
  - { name: allow, subject: { vm: web }, kind: unix-connect, action: allow }
  - { name: deny, subject: { vm: web }, kind: unix-connect, action: deny }
  - { name: ask, subject: { vm: web }, kind: unix-connect, action: ask }
)",
           "deny"),
      Case("AskBeatsRedirectBeatsAllow", R"(
  - { name: allow, kind: unix-connect, action: allow }
  - { name: redirect, kind: unix-connect, action: redirect, redirect: { vm: db2 } }
  - { name: ask, kind: unix-connect, action: ask }
)",
           "ask"),
      Case("EarlierRuleWinsFullTie", R"(
  - { name: first, kind: unix-connect, action: allow }
  - { name: second, kind: unix-connect, action: allow }
)",
           "first"),
      Case("OtherObjectVmDoesNotMatch", R"(
  - { name: other-vm, subject: { vm: web }, kind: unix-connect, object: { vm: cache }, action: deny }
  - { name: global, kind: unix-connect, action: allow }
)",
           "global"),
      Case("OtherUidDoesNotMatch", R"(
  - { name: root-only, subject: { vm: web, uid: 0 }, kind: unix-connect, action: deny }
  - { name: global, kind: unix-connect, action: allow }
)",
           "global"),
      Case("OtherProgramDoesNotMatch", R"(
  - { name: psql, subject: { vm: web, program: /usr/bin/psql }, kind: unix-connect, action: deny }
  - { name: global, kind: unix-connect, action: allow }
)",
           "global"),
      Case("OtherKindDoesNotMatch", R"(
  - { name: tcp, subject: { vm: web }, kind: tcp-connect, action: deny }
  - { name: fifo, subject: { vm: web }, kinds: [fifo-open, unix-connect], action: allow }
)",
           "fifo"),
      Case("OtherSubjectVmDoesNotMatch", R"(
  - { name: db, subject: { vm: db }, kind: unix-connect, action: deny }
)",
           "(default)"),
      Case("PrefixMustMatch", R"(
  - { name: other, kind: unix-connect, object: { path: /run/postgresql/x* }, action: deny }
  - { name: exact-other, kind: unix-connect, object: { path: /run/postgresql }, action: deny }
)",
           "(default)"),
      Case("AnyIpPortRule", R"(
  - { name: any-port, kind: tcp-connect, object: { address: "127.0.0.1:*" }, action: deny }
  - { name: any-ip, kind: tcp-connect, object: { address: "*:5432" }, action: allow }
  - { name: other-port, kind: tcp-connect, object: { address: "*:5433" }, action: deny }
)",
           "any-port", tcp),
      Case("ExactAddressBeatsAnyIp", R"(
  - { name: any-ip, kind: tcp-connect, object: { address: "*:5432" }, action: deny }
  - { name: exact, kind: tcp-connect, object: { address: "127.0.0.1:5432" }, action: allow }
)",
           "exact", tcp),
      Case("AbstractSocketsByAtName", R"(
  - { name: path, kind: unix-connect, object: { path: /dbus-session }, action: deny }
  - { name: abstract, kind: unix-connect, object: { abstract: dbus-* }, action: allow }
)",
           "abstract", abstract),
      Case("WildcardSubjectCoversHost", R"(
  - { name: global, kind: unix-connect, object: { vm: db }, action: allow }
)",
           "global", host),
      Case("UnknownObjectVmMatchesNamedRules", R"(
  - { name: db-only, subject: { vm: web }, kind: unix-connect, object: { vm: db }, action: allow }
)",
           "db-only", unknown_object_vm),
  };
}

class PrecedenceTest : public ::testing::TestWithParam<PrecedenceCase> {};

TEST_P(PrecedenceTest, TheRightRuleWins) {
  const PrecedenceCase& c = GetParam();
  auto compiled = MustCompile({"name: p\nrules:" + c.rules});
  ASSERT_NE(compiled, nullptr);
  Verdict v = compiled->Decide(c.ask.View());
  EXPECT_EQ(WinnerName(v), c.winner);
  Explanation e = compiled->Explain(c.ask.View());
  EXPECT_EQ(WinnerName(e.verdict), c.winner) << "Explain disagrees with Decide";
}

INSTANTIATE_TEST_SUITE_P(Rules, PrecedenceTest, ::testing::ValuesIn(PrecedenceCases()),
                         [](const ::testing::TestParamInfo<PrecedenceCase>& info) {
                           return info.param.name;
                         });

TEST(Precedence, PolicyNameBreaksTiesAcrossPolicies) {
  auto compiled =
      MustCompile({"name: zeta\nrules:\n  - { name: z, kind: signal, action: allow }\n",
                   "name: alpha\nrules:\n  - { name: a, kind: signal, action: allow }\n"});
  Ask ask;
  ask.kind = v1::SIGNAL;
  ask.object_name = "";
  Verdict v = compiled->Decide(ask.View());
  ASSERT_NE(v.rule, nullptr);
  EXPECT_EQ(v.rule->policy->name(), "alpha");
}

// ---------------------------------------------------------------------------------------------
// Verdicts, scopes, monitor mode

TEST(Decide, VerdictScopeAndDecisionOfEachAction) {
  auto compiled = MustCompile({R"(name: web
rules:
  - name: to-db
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/postgresql/.s.PGSQL.5432 }
    action: allow
  - name: legacy
    subject: { vm: web }
    kind: unix-connect
    object: { path: /var/run/postgresql/.s.PGSQL.5432 }
    action: redirect
    redirect: { vm: db, name: /run/postgresql/.s.PGSQL.5432 }
  - name: to-host
    subject: { vm: web }
    kind: unix-connect
    object: { vm: host, path: /run/dbus/* }
    action: ask
    ask: { fail: open }
  - name: from-host
    subject: { vm: host }
    kind: unix-connect
    object: { vm: db }
    action: ask
)"},
                              "", 42);
  Ask to_db;
  Verdict v = compiled->Decide(to_db.View());
  EXPECT_EQ(WinnerName(v), "to-db");
  EXPECT_EQ(v.verdict, v1::VERDICT_ALLOW);
  EXPECT_EQ(v.scope, v1::CROSS_VM);
  EXPECT_TRUE(v.enforced);
  EXPECT_FALSE(v.NeedsAsk());
  v1::Decision d = compiled->ToProto(v);
  EXPECT_EQ(d.policy(), "web");
  EXPECT_EQ(d.rule(), "to-db");
  EXPECT_EQ(d.policy_version(), 42u);
  EXPECT_EQ(d.reason(), "rule web/to-db: allow");
  EXPECT_FALSE(d.has_redirect());

  Ask legacy;
  legacy.object_vm = "web";  // The socket path as seen in the caller's own VM.
  legacy.object_name = "/var/run/postgresql/.s.PGSQL.5432";
  v = compiled->Decide(legacy.View());
  EXPECT_EQ(WinnerName(v), "legacy");
  EXPECT_EQ(v.verdict, v1::VERDICT_REDIRECT);
  EXPECT_EQ(v.scope, v1::CROSS_VM);  // Where the call goes: VM db.
  d = compiled->ToProto(v);
  EXPECT_EQ(d.redirect().vm(), "db");
  EXPECT_EQ(d.redirect().name(), "/run/postgresql/.s.PGSQL.5432");

  Ask to_host;
  to_host.object_vm = "host";
  to_host.object_name = "/run/dbus/system_bus_socket";
  v = compiled->Decide(to_host.View());
  EXPECT_EQ(WinnerName(v), "to-host");
  EXPECT_TRUE(v.NeedsAsk());
  EXPECT_EQ(v.verdict, v1::VERDICT_ALLOW);  // fail: open
  EXPECT_EQ(v.scope, v1::VM_HOST);
  EXPECT_EQ(compiled->ToProto(v).reason(), "rule web/to-host: ask (fail open)");

  Ask from_host;
  from_host.subject_vm = "host";
  v = compiled->Decide(from_host.View());
  EXPECT_EQ(WinnerName(v), "from-host");
  EXPECT_TRUE(v.NeedsAsk());
  EXPECT_EQ(v.verdict, v1::VERDICT_DENY);  // fail closed by default
  EXPECT_EQ(v.scope, v1::HOST_VM);

  // The object VM unknown: the winner's object VM decides the scope.
  Ask unknown = to_db;
  unknown.object_vm = "";
  v = compiled->Decide(unknown.View());
  EXPECT_EQ(WinnerName(v), "to-db");
  EXPECT_EQ(v.scope, v1::CROSS_VM);
}

TEST(Decide, MonitorModeAndAuditOnlyAreNotEnforced) {
  auto compiled = MustCompile({R"(name: trial
mode: monitor
rules:
  - { name: lockdown, subject: { vm: reports }, kind: unix-connect, action: deny }
)",
                               R"(name: live
rules:
  - { name: try-rule, subject: { vm: web }, kind: signal, action: deny, audit_only: true }
  - { name: real, subject: { vm: web }, kind: fifo-open, action: deny }
)"});
  Ask reports;
  reports.subject_vm = "reports";
  Verdict v = compiled->Decide(reports.View());
  EXPECT_EQ(WinnerName(v), "lockdown");
  EXPECT_EQ(v.verdict, v1::VERDICT_DENY);
  EXPECT_FALSE(v.enforced);
  v1::Decision d = compiled->ToProto(v);
  EXPECT_FALSE(d.enforced());
  EXPECT_THAT(d.reason(), HasSubstr("monitor"));

  Ask signal;
  signal.kind = v1::SIGNAL;
  signal.object_name = "";
  v = compiled->Decide(signal.View());
  EXPECT_EQ(WinnerName(v), "try-rule");
  EXPECT_FALSE(v.enforced);
  EXPECT_THAT(compiled->ToProto(v).reason(), HasSubstr("audit_only"));

  Ask fifo;
  fifo.kind = v1::FIFO_OPEN;
  v = compiled->Decide(fifo.View());
  EXPECT_EQ(WinnerName(v), "real");
  EXPECT_TRUE(v.enforced);
}

// ---------------------------------------------------------------------------------------------
// Hosts

TEST(PolicyAppliesToHost, Selectors) {
  v1::Policy policy;
  EXPECT_TRUE(PolicyAppliesToHost(policy, "h1"));
  policy.add_hosts("edge-*");
  policy.add_hosts("db1");
  EXPECT_TRUE(PolicyAppliesToHost(policy, "edge-7"));
  EXPECT_TRUE(PolicyAppliesToHost(policy, "db1"));
  EXPECT_FALSE(PolicyAppliesToHost(policy, "db12"));
  EXPECT_FALSE(PolicyAppliesToHost(policy, "web1"));
  policy.add_hosts("*");
  EXPECT_TRUE(PolicyAppliesToHost(policy, "web1"));
}

TEST(Compile, KeepsOnlyThePoliciesOfTheHost) {
  std::vector<std::string> policies = {
      "name: everywhere\nrules:\n  - { name: a, kind: signal, action: allow }\n",
      "name: edge\nhosts: [\"edge-*\"]\nrules:\n  - { name: b, kind: signal, action: deny }\n",
      "name: db\nhosts: [db1]\nrules:\n  - { name: c, kind: signal, action: deny }\n"};
  Ask signal;
  signal.kind = v1::SIGNAL;
  signal.object_name = "";

  auto all = MustCompile(policies);
  EXPECT_EQ(all->rule_count(), 3u);
  auto edge = MustCompile(policies, "edge-3");
  EXPECT_EQ(edge->rule_count(), 2u);
  EXPECT_EQ(WinnerName(edge->Decide(signal.View())), "b");
  auto db = MustCompile(policies, "db1");
  EXPECT_EQ(db->rule_count(), 2u);
  EXPECT_EQ(WinnerName(db->Decide(signal.View())), "c");
  auto other = MustCompile(policies, "web9");
  EXPECT_EQ(other->rule_count(), 1u);
  EXPECT_EQ(WinnerName(other->Decide(signal.View())), "a");
  EXPECT_EQ(other->version(), 7u);
}

TEST(Compile, RejectsInvalidPoliciesNamingPolicyAndRule) {
  v1::PolicyBundle bundle;
  v1::Policy* bad = bundle.add_policies();
  *bad = MustParse("name: p\nrules:\n  - { name: r, kind: unix-connect, action: allow }\n");
  bad->mutable_rules(0)->mutable_object()->set_path("relative");
  EXPECT_THAT(CompiledPolicy::Compile(bundle),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("policy 'p', rule 'r'"), HasSubstr("test.yaml:3:5"),
                             HasSubstr("rules[0].object.path"), HasSubstr("absolute"))));
  // A policy for another host is not compiled, so not checked either.
  bad->add_hosts("elsewhere");
  EXPECT_TRUE(CompiledPolicy::Compile(bundle, "here").ok());

  v1::PolicyBundle twice;
  *twice.add_policies() =
      MustParse("name: p\nrules:\n  - { name: r, kind: signal, action: allow }\n");
  *twice.add_policies() = twice.policies(0);
  EXPECT_THAT(CompiledPolicy::Compile(twice),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("more than once")));
}

TEST(Compile, AcceptsAPolicyLeftWithoutRulesInAHostBundle) {
  // What the controller sends a host without VM `web` for a policy of web-only rules.
  v1::PolicyBundle bundle;
  bundle.set_version(4);
  *bundle.add_policies() = MustParse(
      "name: p\nrules:\n  - { name: r, subject: { vm: web }, kind: signal, action: allow }\n");
  bundle.mutable_policies(0)->clear_rules();
  absl::StatusOr<std::shared_ptr<const CompiledPolicy>> compiled =
      CompiledPolicy::Compile(bundle, "db-host");
  ASSERT_TRUE(compiled.ok()) << compiled.status();
  EXPECT_EQ((*compiled)->rule_count(), 0u);
  EXPECT_EQ((*compiled)->version(), 4u);
  // The rest of such a policy is still checked.
  bundle.mutable_policies(0)->set_name("Bad Name");
  EXPECT_THAT(CompiledPolicy::Compile(bundle, "db-host"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a valid policy name")));
}

TEST(Compile, EmptyBundleDecidesByDefaults) {
  absl::StatusOr<std::shared_ptr<const CompiledPolicy>> compiled =
      CompiledPolicy::Compile(v1::PolicyBundle());
  ASSERT_TRUE(compiled.ok());
  Ask ask;
  EXPECT_EQ((*compiled)->Decide(ask.View()).verdict, v1::VERDICT_DENY);
  ask.kind = static_cast<v1::InteractionKind>(999);  // Garbage from a broken caller.
  EXPECT_EQ((*compiled)->Decide(ask.View()).reason, "default: cross-vm denied");
}

// ---------------------------------------------------------------------------------------------
// Explain

TEST(Explain, ListsEveryMatchingLoserWithWhy) {
  auto compiled = MustCompile({R"(name: p
rules:
  - { name: winner, subject: { vm: web, program: /usr/bin/app }, kind: unix-connect,
      object: { vm: db, path: /run/postgresql/.s.PGSQL.5432 }, action: allow }
  - { name: vm-only, subject: { vm: web }, kind: unix-connect,
      object: { vm: db, path: /run/postgresql/.s.PGSQL.5432 }, action: deny }
  - { name: short-prefix, subject: { vm: web, program: /usr/bin/app }, kind: unix-connect,
      object: { path: /run/* }, action: deny }
  - { name: same-prefix-len, subject: { vm: web, program: /usr/bin/app }, kind: unix-connect,
      object: { vm: db, path: "/run/postgresql/.s.PGSQL.5432*" }, action: deny }
  - { name: no-object-vm, subject: { vm: web, program: /usr/bin/app }, kind: unix-connect,
      object: { path: /run/postgresql/.s.PGSQL.5432 }, action: deny }
  - { name: later, subject: { vm: web, program: /usr/bin/app }, kind: unix-connect,
      object: { vm: db, path: /run/postgresql/.s.PGSQL.5432 }, action: allow }
  - { name: no-object, subject: { vm: web, program: /usr/bin/app }, kind: unix-connect,
      action: deny }
  - { name: not-matching, subject: { vm: other }, kind: unix-connect, action: deny }
)",
                               R"(name: q
rules:
  - { name: tie-deny, kind: signal, action: deny }
  - { name: tie-allow, kind: signal, action: allow }
)"});
  Ask ask;
  Explanation e = compiled->Explain(ask.View());
  EXPECT_EQ(WinnerName(e.verdict), "winner");
  EXPECT_EQ(e.verdict.verdict, v1::VERDICT_ALLOW);
  std::vector<std::pair<std::string, std::string>> losers;
  for (const Explanation::Loser& loser : e.losers) {
    losers.emplace_back(loser.rule->rule->name(), loser.why);
  }
  using P = std::pair<std::string, std::string>;
  EXPECT_THAT(
      losers,
      ElementsAre(
          P{"later", "later in order: rule 'winner' comes first in policy 'p'"},
          P{"no-object-vm", "names no object VM; winner names VM 'db'"},
          P{"same-prefix-len",
            "object prefix '/run/postgresql/.s.PGSQL.5432*' of the same length as winner's exact "
            "'/run/postgresql/.s.PGSQL.5432'; an exact name wins"},
          P{"short-prefix",
            "shorter object prefix (5 < 29): '/run/*' vs '/run/postgresql/.s.PGSQL.5432'"},
          P{"no-object", "names no object; winner names '/run/postgresql/.s.PGSQL.5432'"},
          P{"vm-only", "less specific subject: names VM only; winner names program and VM"}));

  Ask signal;
  signal.kind = v1::SIGNAL;
  e = compiled->Explain(signal.View());
  EXPECT_EQ(WinnerName(e.verdict), "tie-deny");
  ASSERT_THAT(e.losers, SizeIs(1));
  EXPECT_EQ(e.losers[0].why, "deny wins a tie");

  Ask nothing;
  nothing.kind = v1::FIFO_OPEN;
  e = compiled->Explain(nothing.View());
  EXPECT_EQ(e.verdict.rule, nullptr);
  EXPECT_THAT(e.losers, IsEmpty());
}

// ---------------------------------------------------------------------------------------------
// The hot path does not allocate.

TEST(Decide, DoesNotAllocate) {
  if (!SHUTTLE_COUNT_ALLOCATIONS) GTEST_SKIP() << "allocation counting is off under sanitizers";
  auto compiled = MustCompile({R"(name: p
rules:
  - { name: a, subject: { vm: web, program: /usr/bin/* }, kind: unix-connect,
      object: { vm: db, path: /run/postgresql/* }, action: allow }
  - { name: b, subject: { vm: web }, kind: unix-connect, object: { path: /run/x }, action: deny }
  - { name: c, kind: tcp-connect, object: { address: "*:5432" }, action: deny }
  - { name: d, kind: unix-connect, action: deny }
)"});
  Ask hit;
  Ask miss;
  miss.subject_vm = "nobody";
  miss.object_name = "/nothing/here/at/all/with/a/long/name/beyond/any/small/string";
  Ask tcp;
  tcp.kind = v1::TCP_CONNECT;
  tcp.object_name = "127.0.0.1:5432";
  InteractionView views[] = {hit.View(), miss.View(), tcp.View()};
  g_allocations = 0;
  g_count_allocations = true;
  int found = 0;
  for (int i = 0; i < 100; ++i) {
    for (const InteractionView& view : views) found += compiled->Decide(view).rule != nullptr;
  }
  g_count_allocations = false;
  EXPECT_EQ(g_allocations, 0);
  EXPECT_EQ(found, 300);
}

// ---------------------------------------------------------------------------------------------
// The index agrees with a plain reading of the rules, on random policies.

struct Reference {
  static bool Matches(const v1::Rule& rule, const Ask& ask) {
    bool kind = false;
    for (int k : rule.kinds()) kind |= k == ask.kind;
    if (!kind) return false;
    const v1::SubjectSelector& s = rule.subject();
    if (!s.vm().empty() && s.vm() != "*" && s.vm() != ask.subject_vm) return false;
    if (!s.program().empty()) {
      std::string_view p = s.program();
      if (p.back() == '*' ? !ask.program.starts_with(p.substr(0, p.size() - 1))
                          : p != ask.program) {
        return false;
      }
    }
    if (s.has_uid() && s.uid() != ask.uid) return false;
    const v1::ObjectSelector& o = rule.object();
    if (!o.vm().empty() && o.vm() != "*" && !ask.object_vm.empty() && o.vm() != ask.object_vm) {
      return false;
    }
    std::string name = !o.path().empty() ? o.path() : !o.address().empty() ? o.address() : "";
    if (name.empty()) return true;
    if (name.rfind("*:", 0) == 0) {
      return ask.object_name.size() >= name.size() - 1 &&
             ask.object_name.substr(ask.object_name.rfind(':')) == name.substr(1);
    }
    if (name.back() == '*') return ask.object_name.rfind(name.substr(0, name.size() - 1), 0) == 0;
    return ask.object_name == name;
  }
  // The precedence of matcher.h, spelt out.
  static std::tuple<int, int, bool, bool, int, int> Key(const v1::Rule& rule, int order) {
    const v1::SubjectSelector& s = rule.subject();
    int spec = (s.program().empty() ? 0 : 4) + (s.vm().empty() || s.vm() == "*" ? 0 : 2) +
               (s.has_uid() ? 1 : 0);
    const v1::ObjectSelector& o = rule.object();
    std::string name = !o.path().empty() ? o.path() : !o.address().empty() ? o.address() : "";
    bool prefix = !name.empty() && name.back() == '*';
    bool any_ip = name.rfind("*:", 0) == 0;
    int literal = static_cast<int>(name.size()) - (prefix || any_ip ? 1 : 0);
    bool exact = !name.empty() && !prefix;
    int action = rule.action() == v1::DENY       ? 3
                 : rule.action() == v1::ASK      ? 2
                 : rule.action() == v1::REDIRECT ? 1
                                                 : 0;
    return {spec, literal, exact, !o.vm().empty() && o.vm() != "*", action, -order};
  }
};

TEST(Decide, AgreesWithAPlainReadingOfTheRules) {
  std::mt19937 rng(7);
  auto pick = [&rng](const std::vector<std::string>& options) {
    return options[rng() % options.size()];
  };
  const std::vector<std::string> vms = {"", "web", "db", "host", "cache"};
  const std::vector<std::string> programs = {"", "", "/usr/bin/app", "/usr/bin/*", "/usr/sbin/x"};
  const std::vector<std::string> paths = {"",        "",         "/run/*", "/run/a",   "/run/a*",
                                          "/run/ab", "/run/ab*", "/r*",    "/run/a/b", "/tmp/x"};
  const std::vector<std::string> addresses = {"",     "127.0.0.1:80", "*:80", "127.0.0.1:*",
                                              "*:81", "127.0.0.2:80"};
  const std::vector<std::string> actions = {"allow", "deny", "ask", "redirect"};
  for (int round = 0; round < 40; ++round) {
    std::string yaml = "name: p\nrules:\n";
    int rules = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < rules; ++i) {
      bool tcp = rng() % 3 == 0;
      std::string action = pick(actions);
      yaml += "  - name: r" + std::to_string(i) + "\n";
      std::string vm = pick(vms), program = pick(programs);
      yaml += "    subject: {";
      if (!vm.empty()) yaml += " vm: " + vm + ",";
      if (!program.empty()) yaml += " program: \"" + program + "\",";
      if (rng() % 4 == 0) yaml += " uid: " + std::to_string(rng() % 2) + ",";
      yaml += " }\n";
      yaml += tcp ? "    kind: tcp-connect\n" : "    kinds: [unix-connect, fifo-open]\n";
      std::string ovm = pick(vms);
      std::string name = tcp ? pick(addresses) : pick(paths);
      yaml += "    object: {";
      if (!ovm.empty()) yaml += " vm: " + ovm + ",";
      if (!name.empty()) yaml += std::string(tcp ? " address" : " path") + ": \"" + name + "\",";
      yaml += " }\n";
      yaml += "    action: " + action + "\n";
      if (action == "redirect") yaml += "    redirect: { vm: db }\n";
    }
    v1::Policy policy = MustParse(yaml);
    auto compiled = MustCompile({yaml});
    ASSERT_NE(compiled, nullptr);
    for (int probe = 0; probe < 200; ++probe) {
      Ask ask;
      ask.subject_vm = pick({"web", "db", "host", "cache"});
      ask.program = pick({"/usr/bin/app", "/usr/bin/other", "/usr/sbin/x", "/bin/sh"});
      ask.uid = static_cast<uint32_t>(rng() % 2);
      bool tcp = rng() % 3 == 0;
      ask.kind = tcp ? v1::TCP_CONNECT : (rng() % 2 ? v1::UNIX_CONNECT : v1::FIFO_OPEN);
      ask.object_vm = pick({"", "web", "db", "host", "cache"});
      ask.object_name = tcp ? pick({"127.0.0.1:80", "127.0.0.2:80", "127.0.0.1:81", "[::1]:80"})
                            : pick({"/run/a", "/run/ab", "/run/abc", "/run/a/b", "/tmp/x", "/r"});
      const v1::Rule* expected = nullptr;
      std::tuple<int, int, bool, bool, int, int> best;
      for (int i = 0; i < policy.rules_size(); ++i) {
        if (!Reference::Matches(policy.rules(i), ask)) continue;
        auto key = Reference::Key(policy.rules(i), i);
        if (expected == nullptr || key > best) {
          expected = &policy.rules(i);
          best = key;
        }
      }
      Verdict v = compiled->Decide(ask.View());
      ASSERT_EQ(WinnerName(v), expected == nullptr ? "(default)" : expected->name())
          << yaml << "\nsubject " << ask.subject_vm << " " << ask.program << " uid " << ask.uid
          << " kind " << KindName(ask.kind) << " object " << ask.object_vm << " "
          << ask.object_name;
      Explanation e = compiled->Explain(ask.View());
      ASSERT_EQ(e.verdict.rule, v.rule);
      int matching = 0;
      for (const v1::Rule& rule : policy.rules()) matching += Reference::Matches(rule, ask);
      ASSERT_EQ(static_cast<int>(e.losers.size()), std::max(0, matching - 1));
    }
  }
}

// deploy/examples/webapp.yaml decides the paper's case as its comments say.
TEST(Examples, WebappPolicyDecidesThePapersCase) {
  std::ifstream in(std::string(SHUTTLE_SOURCE_DIR) + "/deploy/examples/webapp.yaml");
  std::stringstream text;
  text << in.rdbuf();
  ASSERT_FALSE(text.str().empty());
  auto compiled = MustCompile({text.str()});
  ASSERT_NE(compiled, nullptr);

  Ask php;
  php.program = "/usr/sbin/php-fpm8.2";
  Verdict v = compiled->Decide(php.View());
  EXPECT_EQ(WinnerName(v), "php-to-postgres-socket");
  EXPECT_EQ(v.verdict, v1::VERDICT_ALLOW);
  EXPECT_EQ(v.scope, v1::CROSS_VM);

  Ask php_tcp = php;
  php_tcp.kind = v1::TCP_CONNECT;
  php_tcp.object_name = "127.0.0.1:5432";
  EXPECT_EQ(WinnerName(compiled->Decide(php_tcp.View())), "php-to-postgres-tcp");

  Ask other_tcp = php_tcp;
  other_tcp.program = "/usr/bin/python3";
  v = compiled->Decide(other_tcp.View());
  EXPECT_EQ(v.rule, nullptr);
  EXPECT_EQ(v.verdict, v1::VERDICT_DENY);

  Ask nginx;
  nginx.program = "/usr/sbin/nginx";
  v = compiled->Decide(nginx.View());
  EXPECT_EQ(WinnerName(v), "others-no-postgres");
  EXPECT_EQ(v.verdict, v1::VERDICT_DENY);
  Explanation e = compiled->Explain(php.View());
  ASSERT_THAT(e.losers, SizeIs(1));
  EXPECT_EQ(e.losers[0].rule->rule->name(), "others-no-postgres");
  EXPECT_EQ(e.losers[0].why, "less specific subject: names VM only; winner names program and VM");

  Ask legacy;
  legacy.object_vm = "web";
  legacy.object_name = "/var/run/postgresql/.s.PGSQL.5432";
  v = compiled->Decide(legacy.View());
  EXPECT_EQ(WinnerName(v), "legacy-socket-to-db");
  EXPECT_EQ(compiled->ToProto(v).redirect().vm(), "db");

  Ask psql;
  psql.subject_vm = "host";
  psql.program = "/usr/bin/psql";
  psql.uid = 1000;
  v = compiled->Decide(psql.View());
  EXPECT_EQ(WinnerName(v), "host-psql-asks");
  EXPECT_TRUE(v.NeedsAsk());
  EXPECT_EQ(v.scope, v1::HOST_VM);
}

// uses_programs() is what lets the agent skip reading /proc/PID/exe: it must be true whenever
// the program can change a verdict, and false only when it cannot.
TEST(UsesUids, TrueOnlyIfSomeRuleNamesAUid) {
  auto none = MustCompile({});
  ASSERT_NE(none, nullptr);
  EXPECT_FALSE(none->uses_uids());
  auto with_uid = MustCompile({R"(name: u
rules:
  - name: r
    subject: { vm: web, uid: 1000 }
    kind: unix-connect
    object: { path: /run/x }
    action: deny
)"});
  ASSERT_NE(with_uid, nullptr);
  EXPECT_TRUE(with_uid->uses_uids());
  auto without_uid = MustCompile({R"(name: p
rules:
  - name: r
    subject: { vm: web, program: /usr/bin/psql }
    kind: unix-connect
    object: { path: /run/x }
    action: deny
)"});
  ASSERT_NE(without_uid, nullptr);
  EXPECT_FALSE(without_uid->uses_uids());
}

// has_rules_for() lets the agent skip resolving the subject's VM: false must mean that no
// subject can get anything but the default for that kind.
TEST(HasRulesFor, TrueExactlyForTheKindsRulesList) {
  auto none = MustCompile({});
  ASSERT_NE(none, nullptr);
  EXPECT_FALSE(none->has_rules_for(v1::UNIX_CONNECT));
  auto some = MustCompile({R"(name: k
rules:
  - name: r
    subject: { vm: "*" }
    kinds: [tcp-connect, udp-send]
    object: { address: "127.0.0.1:5432" }
    action: allow
)"});
  ASSERT_NE(some, nullptr);
  EXPECT_TRUE(some->has_rules_for(v1::TCP_CONNECT));
  EXPECT_TRUE(some->has_rules_for(v1::UDP_SEND));
  EXPECT_FALSE(some->has_rules_for(v1::SIGNAL));
  EXPECT_FALSE(some->has_rules_for(v1::UNIX_CONNECT));
  EXPECT_FALSE(some->has_rules_for(v1::INTERACTION_KIND_UNSPECIFIED));
  // And the default it promises: an intra-VM call of a kind without rules is allowed for anyone.
  for (const char* vm : {"web", "db", "host"}) {
    InteractionView view;
    view.subject_vm = vm;
    view.kind = v1::UNIX_CONNECT;
    view.object_name = "/run/app.sock";
    Verdict v = some->Decide(view);
    EXPECT_EQ(v.verdict, v1::VERDICT_ALLOW) << vm;
    EXPECT_EQ(v.scope, v1::INTRA_VM) << vm;
  }
}

TEST(UsesPrograms, TrueOnlyIfSomeRuleNamesAProgram) {
  auto none = MustCompile({});
  ASSERT_NE(none, nullptr);
  EXPECT_FALSE(none->uses_programs());

  const std::string vm_only = R"(name: vm-only
rules:
  - name: web-to-db
    subject: { vm: web, uid: 1000 }
    kind: unix-connect
    object: { vm: db, path: /run/postgresql/* }
    action: allow
)";
  const std::string one_program = R"(name: one-program
rules:
  - name: psql
    subject: { vm: web, program: /usr/bin/psql }
    kind: tcp-connect
    object: { vm: db, address: "127.0.0.1:5432" }
    action: allow
)";
  auto without = MustCompile({vm_only});
  ASSERT_NE(without, nullptr);
  EXPECT_FALSE(without->uses_programs());
  // ... and indeed no program changes its verdicts.
  for (const char* name : {"/run/postgresql/.s.PGSQL.5432", "/x"}) {
    Ask a;
    a.object_name = name;
    Ask b = a;
    b.program = "";
    Ask c = a;
    c.program = "/usr/sbin/something-else";
    Verdict va = without->Decide(a.View());
    EXPECT_EQ(without->Decide(b.View()).rule, va.rule) << name;
    EXPECT_EQ(without->Decide(c.View()).rule, va.rule) << name;
  }

  // One program rule anywhere in the bundle, for any kind, is enough.
  auto with = MustCompile({vm_only, one_program});
  ASSERT_NE(with, nullptr);
  EXPECT_TRUE(with->uses_programs());
  Ask psql;
  psql.kind = v1::TCP_CONNECT;
  psql.object_name = "127.0.0.1:5432";
  psql.program = "/usr/bin/psql";
  EXPECT_EQ(WinnerName(with->Decide(psql.View())), "psql");
  psql.program = "";
  EXPECT_EQ(WinnerName(with->Decide(psql.View())), "(default)");
}

TEST(InteractionView, FromProtoViewsEveryField) {
  v1::Interaction in;
  in.set_subject_vm("web");
  in.set_program("/bin/app");
  in.set_uid(5);
  in.set_kind(v1::MQ_OPEN);
  in.set_object_vm("db");
  in.set_object_name("/queue");
  InteractionView view = InteractionView::FromProto(in);
  EXPECT_EQ(view.subject_vm, "web");
  EXPECT_EQ(view.program, "/bin/app");
  EXPECT_EQ(view.uid, 5u);
  EXPECT_EQ(view.kind, v1::MQ_OPEN);
  EXPECT_EQ(view.object_vm, "db");
  EXPECT_EQ(view.object_name, "/queue");
}

}  // namespace
}  // namespace shuttle::policy
