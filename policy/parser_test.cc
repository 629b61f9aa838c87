#include "policy/parser.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace shuttle::policy {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::SizeIs;

std::string Dump(const std::vector<v1::ValidationError>& errors) {
  std::string out;
  for (const v1::ValidationError& e : errors) out += FormatError(e) + "\n";
  return out;
}

MATCHER_P4(ErrorAt, line, column, field, message, "") {
  *result_listener << FormatError(arg);
  return arg.line() == static_cast<uint32_t>(line) &&
         arg.column() == static_cast<uint32_t>(column) && arg.field() == field &&
         arg.message().find(message) != std::string::npos;
}

constexpr std::string_view kGood = R"yaml(# A policy that uses every field.
name: webapp
mode: monitor
description: "web to db"
hosts: ["*", "edge-*"]
rules:
  - name: web-to-db
    subject: { vm: web, program: /usr/bin/psql, uid: 1000 }
    kind: unix-connect
    object: { vm: db, path: /run/postgresql/.s.PGSQL.5432 }
    action: allow
  - name: tcp
    subject: { vm: web }
    kinds: [tcp-connect, udp-send]
    object: { vm: db, address: "127.0.0.1:5432" }
    action: redirect
    redirect: { vm: db, name: "127.0.0.1:6432" }
  - name: ask-me
    subject: { vm: host }
    kind: unix-connect
    object: { abstract: "dbus-*" }
    action: ask
    ask: { ttl: 1m30s, timeout: 1s, fail: open }
    audit_only: true
  - name: transfer
    kind: name-transfer
    object: { program: /usr/bin/pg_dump }
    action: allow
    writable: true
  - name: run
    kind: invoke
    object: { vm: db, program: /usr/bin/pg_dump }
    action: allow
    env: [PGUSER, LC_*]
  - name: service
    kind: depend
    object: { vm: db, service: postgresql }
    action: deny
  - name: any-port
    kind: tcp-connect
    object: { address: "*:8080" }
    action: allow
  - name: shm
    kind: shm-open
    object: { name: /pg-shm* }
    action: deny
)yaml";

TEST(ParsePolicyYaml, GoodFileYieldsEveryField) {
  ParseResult result = ParsePolicyYaml(kGood, "good.yaml");
  ASSERT_THAT(result.errors, IsEmpty()) << Dump(result.errors);
  ASSERT_TRUE(result.policy.has_value());
  const v1::Policy& p = *result.policy;
  EXPECT_EQ(p.name(), "webapp");
  EXPECT_EQ(p.mode(), v1::MONITOR);
  EXPECT_EQ(p.description(), "web to db");
  EXPECT_THAT(p.hosts(), ElementsAre("*", "edge-*"));
  ASSERT_EQ(p.rules_size(), 8);

  const v1::Rule& r0 = p.rules(0);
  EXPECT_EQ(r0.name(), "web-to-db");
  EXPECT_EQ(r0.subject().vm(), "web");
  EXPECT_EQ(r0.subject().program(), "/usr/bin/psql");
  EXPECT_TRUE(r0.subject().has_uid());
  EXPECT_EQ(r0.subject().uid(), 1000u);
  EXPECT_THAT(r0.kinds(), ElementsAre(v1::UNIX_CONNECT));
  EXPECT_EQ(r0.object().vm(), "db");
  EXPECT_EQ(r0.object().path(), "/run/postgresql/.s.PGSQL.5432");
  EXPECT_EQ(r0.action(), v1::ALLOW);
  EXPECT_FALSE(r0.has_redirect());
  EXPECT_FALSE(r0.has_ask());
  EXPECT_EQ(r0.location().file(), "good.yaml");
  EXPECT_EQ(r0.location().line(), 7u);
  EXPECT_EQ(r0.location().column(), 5u);

  const v1::Rule& r1 = p.rules(1);
  EXPECT_THAT(r1.kinds(), ElementsAre(v1::TCP_CONNECT, v1::UDP_SEND));
  EXPECT_EQ(r1.action(), v1::REDIRECT);
  EXPECT_EQ(r1.redirect().vm(), "db");
  EXPECT_EQ(r1.redirect().name(), "127.0.0.1:6432");
  EXPECT_EQ(r1.location().line(), 12u);

  const v1::Rule& r2 = p.rules(2);
  EXPECT_EQ(r2.object().abstract(), "dbus-*");
  EXPECT_EQ(r2.action(), v1::ASK);
  EXPECT_EQ(r2.ask().ttl().seconds(), 90);
  EXPECT_EQ(r2.ask().offline_ttl().seconds(), 300);  // Default filled in.
  EXPECT_EQ(r2.ask().timeout().seconds(), 1);
  EXPECT_EQ(r2.ask().fail_mode(), v1::FAIL_OPEN);
  EXPECT_TRUE(r2.audit_only());

  EXPECT_TRUE(p.rules(3).writable());
  EXPECT_THAT(p.rules(4).env(), ElementsAre("PGUSER", "LC_*"));
  EXPECT_EQ(p.rules(5).object().service(), "postgresql");
  EXPECT_EQ(p.rules(6).object().address(), "*:8080");
  EXPECT_EQ(p.rules(7).object().name(), "/pg-shm*");
}

TEST(ParsePolicyYaml, DefaultsForModeAndAsk) {
  ParseResult result = ParsePolicyYaml(R"(name: p
rules:
  - name: r
    kind: unix-connect
    action: ask
)",
                                       "f.yaml");
  ASSERT_THAT(result.errors, IsEmpty()) << Dump(result.errors);
  EXPECT_EQ(result.policy->mode(), v1::ENFORCE);
  const v1::AskParams& ask = result.policy->rules(0).ask();
  v1::AskParams defaults = DefaultAskParams();
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(ask, defaults));
  EXPECT_EQ(defaults.ttl().seconds(), 30);
  EXPECT_EQ(defaults.offline_ttl().seconds(), 300);
  EXPECT_EQ(defaults.timeout().nanos(), 200000000);
  EXPECT_EQ(defaults.fail_mode(), v1::FAIL_CLOSED);
}

TEST(ParsePolicyYaml, RoundTripThroughPolicyToYaml) {
  ParseResult first = ParsePolicyYaml(kGood, "good.yaml");
  ASSERT_THAT(first.errors, IsEmpty()) << Dump(first.errors);
  std::string yaml = PolicyToYaml(*first.policy);
  ParseResult second = ParsePolicyYaml(yaml, "again.yaml");
  ASSERT_THAT(second.errors, IsEmpty()) << Dump(second.errors) << yaml;
  v1::Policy a = *first.policy;
  v1::Policy b = *second.policy;
  for (v1::Rule& rule : *a.mutable_rules()) rule.clear_location();
  for (v1::Rule& rule : *b.mutable_rules()) rule.clear_location();
  std::string diff;
  google::protobuf::util::MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differencer.Compare(a, b)) << diff << "\n" << yaml;
  // And the text is a fixed point.
  EXPECT_EQ(PolicyToYaml(*second.policy), yaml);
}

// One bad input, the one error it must produce (and nothing else), and where.
struct BadCase {
  std::string name;
  std::string yaml;
  int line;
  int column;
  std::string field;
  std::string message;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

// A valid rule list suffix for cases that only break the policy header.
constexpr std::string_view kOneRule = R"(rules:
  - name: r
    kind: unix-connect
    action: allow
)";

std::string Rule(std::string_view body) {
  return "name: p\nrules:\n  - name: r\n" + std::string(body);
}

std::vector<BadCase> BadCases() {
  return {
      {"SyntaxError", "name: p\nrules: [\n  a: b\n", 4, 1, "", "YAML syntax"},
      {"UndefinedAlias", "name: *nothing\n" + std::string(kOneRule), 1, 7, "", "anchor"},
      // yaml-cpp's own LoadAll() loops forever on this one.
      {"StrayComma", ",x\n", 1, 1, "", "YAML syntax: unexpected ','"},
      {"EmptyFile", "# nothing here\n", 1, 1, "", "empty"},
      {"TwoDocuments", "name: p\n" + std::string(kOneRule) + "---\nname: q\n", 6, 1, "",
       "more than one YAML document"},
      {"RootIsList", "- a\n- b\n", 1, 1, "", "expected a map"},
      {"NameIsList", "name: [a]\n" + std::string(kOneRule), 1, 7, "name",
       "expected a single value, found a list"},
      {"NameMissingValue", "name:\n" + std::string(kOneRule), 1, 1, "name",
       "expected a single value, found nothing"},
      {"RulesNotList", "name: p\nrules: everything\n", 2, 8, "rules", "expected a list of rules"},
      {"RuleNotMap", "name: p\nrules:\n  - allow\n", 3, 5, "rules[0]", "expected a map"},
      {"UnknownTopKey", "name: p\nmdoe: monitor\n" + std::string(kOneRule), 2, 1, "mdoe",
       "did you mean 'mode'"},
      {"UnknownSubjectKey",
       Rule("    subject: { vm: web, prog: /bin/x }\n    kind: signal\n    action: deny\n"), 4, 25,
       "rules[0].subject.prog", "did you mean 'program'"},
      {"UnknownKeyNoHint", "name: p\nzzzzzzzz: 1\n" + std::string(kOneRule), 2, 1, "zzzzzzzz",
       "expected one of: name, mode"},
      {"MisspeltKeyIsNotAlsoMissing", Rule("    kind: signal\n    acton: deny\n"), 5, 5,
       "rules[0].acton", "unknown key 'acton' (did you mean 'action'?)"},
      {"DuplicateKey", Rule("    kind: signal\n    action: deny\n    action: allow\n"), 6, 5,
       "rules[0].action", "duplicate key 'action' (first at line 5)"},
      {"MissingPolicyName", std::string(kOneRule), 1, 1, "name", "a policy needs a name"},
      {"MissingRules", "name: p\n", 1, 1, "rules", "at least one rule"},
      {"EmptyRules", "name: p\nrules: []\n", 2, 8, "rules", "at least one rule"},
      {"RuleMissingName", "name: p\nrules:\n  - kind: signal\n    action: deny\n", 3, 5,
       "rules[0].name", "a rule needs a name"},
      {"RuleMissingKind", Rule("    action: deny\n"), 3, 5, "rules[0].kind", "needs a kind"},
      {"RuleMissingAction", Rule("    kind: signal\n"), 3, 5, "rules[0].action", "needs an action"},
      {"BadPolicyName", "name: Web_App\n" + std::string(kOneRule), 1, 7, "name",
       "not a valid policy name"},
      {"BadRuleName", "name: p\nrules:\n  - name: -x\n    kind: signal\n    action: deny\n", 3, 11,
       "rules[0].name", "not a valid rule name"},
      {"DuplicateRuleName",
       "name: p\nrules:\n  - name: r\n    kind: signal\n    action: deny\n  - name: r\n    kind: "
       "signal\n    action: allow\n",
       6, 11, "rules[1].name", "duplicate rule name 'r' (first used by rules[0] at line 3)"},
      {"UnknownKind", Rule("    kind: unix-conect\n    action: allow\n"), 4, 11, "rules[0].kind",
       "unknown kind 'unix-conect' (did you mean 'unix-connect'?)"},
      {"UnknownKindInList", Rule("    kinds: [signal, teleport]\n    action: allow\n"), 4, 21,
       "rules[0].kinds[1]", "unknown kind 'teleport'"},
      {"KindIsList", Rule("    kind: [signal]\n    action: allow\n"), 4, 11, "rules[0].kind",
       "use `kinds: [a, b]`"},
      {"KindAndKinds", Rule("    kind: signal\n    kinds: [invoke]\n    action: allow\n"), 5, 5,
       "rules[0].kinds", "either `kind` or `kinds`"},
      {"DuplicateKindInList", Rule("    kinds: [signal, signal]\n    action: allow\n"), 4, 21,
       "rules[0].kinds[1]", "listed twice"},
      {"UnknownAction", Rule("    kind: signal\n    action: alow\n"), 5, 13, "rules[0].action",
       "unknown action 'alow' (did you mean 'allow'?)"},
      {"UnknownMode", "name: p\nmode: enforcing\n" + std::string(kOneRule), 2, 7, "mode",
       "unknown mode 'enforcing' (did you mean 'enforce'?)"},
      {"UnknownFailMode", Rule("    kind: signal\n    action: ask\n    ask: { fail: maybe }\n"), 6,
       18, "rules[0].ask.fail", "unknown fail mode 'maybe'"},
      {"AddressOnUnixConnect",
       Rule(
           "    kind: unix-connect\n    object: { address: \"127.0.0.1:1\" }\n    action: allow\n"),
       5, 24, "rules[0].object.address",
       "does not apply to kind unix-connect (it takes path or abstract)"},
      {"PathOnMixedKinds",
       Rule("    kinds: [unix-connect, tcp-connect]\n    object: { path: /run/x }\n    action: "
            "allow\n"),
       5, 21, "rules[0].object.path", "does not apply to kind tcp-connect"},
      {"NameOnSignal", Rule("    kind: signal\n    object: { name: x }\n    action: allow\n"), 5,
       21, "rules[0].object.name", "names no object"},
      {"TwoObjectNames",
       Rule("    kind: unix-connect\n    object: { path: /a, abstract: b }\n    action: allow\n"),
       5, 35, "rules[0].object.abstract", "already names `path`"},
      {"EmptyObjectName",
       Rule("    kind: unix-connect\n    object: { path: \"\" }\n    action: allow\n"), 5, 21,
       "rules[0].object.path", "is empty"},
      {"RelativePath",
       Rule("    kind: fifo-open\n    object: { path: run/fifo }\n    action: allow\n"), 5, 21,
       "rules[0].object.path", "must be an absolute path"},
      {"DotDotPath",
       Rule("    kind: fifo-open\n    object: { path: /run/../etc/x }\n    action: allow\n"), 5, 21,
       "rules[0].object.path", "normalized"},
      {"RelativeProgram",
       Rule("    subject: { program: bash }\n    kind: signal\n    action: allow\n"), 4, 25,
       "rules[0].subject.program", "absolute"},
      {"StarInMiddle",
       Rule("    kind: unix-connect\n    object: { path: /run/*/sock }\n    action: allow\n"), 5,
       21, "rules[0].object.path", "'*' is only allowed at the end"},
      {"StarAlone", Rule("    kind: shm-open\n    object: { name: \"*\" }\n    action: allow\n"), 5,
       21, "rules[0].object.name", "leave the field out"},
      {"AddressNotLoopback",
       Rule("    kind: tcp-connect\n    object: { address: \"10.0.0.5:5432\" }\n    action: "
            "allow\n"),
       5, 24, "rules[0].object.address", "'10.0.0.5' is not a loopback IP"},
      {"AddressNoPort",
       Rule("    kind: tcp-connect\n    object: { address: 127.0.0.1 }\n    action: allow\n"), 5,
       24, "rules[0].object.address", "must be IP:PORT"},
      {"AddressPortZero",
       Rule("    kind: udp-send\n    object: { address: \"127.0.0.1:0\" }\n    action: allow\n"), 5,
       24, "rules[0].object.address", "port '0'"},
      {"AddressPortTooBig",
       Rule("    kind: udp-send\n    object: { address: \"[::1]:70000\" }\n    action: allow\n"), 5,
       24, "rules[0].object.address", "port '70000'"},
      {"AddressStarStar",
       Rule("    kind: udp-send\n    object: { address: \"*:*\" }\n    action: allow\n"), 5, 24,
       "rules[0].object.address", "leave `address` out"},
      {"RedirectWithoutTarget", Rule("    kind: signal\n    action: redirect\n"), 3, 5,
       "rules[0].redirect.vm", "a redirect needs a target"},
      {"RedirectTargetStar",
       Rule("    kind: fifo-open\n    action: redirect\n    redirect: { vm: \"*\" }\n"), 6, 21,
       "rules[0].redirect.vm", "not a VM name"},
      {"RedirectOnAllow",
       Rule("    kind: fifo-open\n    action: allow\n    redirect: { vm: db }\n"), 6, 15,
       "rules[0].redirect", "only for action redirect, not allow"},
      {"RedirectNameRelative",
       Rule("    kind: fifo-open\n    action: redirect\n    redirect: { vm: db, name: x }\n"), 6,
       31, "rules[0].redirect.name", "absolute"},
      {"AskOnDeny", Rule("    kind: signal\n    action: deny\n    ask: { ttl: 5s }\n"), 6, 10,
       "rules[0].ask", "only for action ask, not deny"},
      {"DurationWithoutUnit", Rule("    kind: signal\n    action: ask\n    ask: { ttl: 30 }\n"), 6,
       17, "rules[0].ask.ttl", "add a unit"},
      {"DurationGarbage", Rule("    kind: signal\n    action: ask\n    ask: { timeout: soon }\n"),
       6, 21, "rules[0].ask.timeout", "bad duration 'soon'"},
      {"DurationNegative",
       Rule("    kind: signal\n    action: ask\n    ask: { offline_ttl: -5s }\n"), 6, 25,
       "rules[0].ask.offline_ttl", "must not be negative"},
      {"TimeoutZero", Rule("    kind: signal\n    action: ask\n    ask: { timeout: 0s }\n"), 6, 21,
       "rules[0].ask.timeout", "longer than zero"},
      {"WritableOnInvoke", Rule("    kind: invoke\n    action: allow\n    writable: true\n"), 6, 15,
       "rules[0].writable", "only for kind name-transfer, not invoke"},
      {"EnvOnSignal", Rule("    kind: signal\n    action: allow\n    env: [HOME]\n"), 6, 10,
       "rules[0].env", "only for kind invoke"},
      {"BadEnvName", Rule("    kind: invoke\n    action: allow\n    env: [\"1X\"]\n"), 6, 11,
       "rules[0].env[0]", "not an environment variable name"},
      {"BoolNotBool", Rule("    kind: signal\n    action: allow\n    audit_only: maybe\n"), 6, 17,
       "rules[0].audit_only", "expected true or false"},
      {"UidNotNumber", Rule("    subject: { uid: root }\n    kind: signal\n    action: allow\n"), 4,
       21, "rules[0].subject.uid", "uid must be a number"},
      {"UidTooBig", Rule("    subject: { uid: 4294967296 }\n    kind: signal\n    action: allow\n"),
       4, 21, "rules[0].subject.uid", "uid must be a number"},
      {"BadSubjectVm",
       Rule("    subject: { vm: \"web vm\" }\n    kind: signal\n    action: allow\n"), 4, 20,
       "rules[0].subject.vm", "not a VM name"},
      {"SubjectNotMap", Rule("    subject: web\n    kind: signal\n    action: allow\n"), 4, 14,
       "rules[0].subject", "expected a map"},
      {"BadHost", "name: p\nhosts: [\"a*b\"]\n" + std::string(kOneRule), 2, 9, "hosts[0]",
       "'*' is only allowed at the end"},
      {"HostsNotList", "name: p\nhosts: \"*\"\n" + std::string(kOneRule), 2, 8, "hosts",
       "expected a list"},
  };
}

class BadInputTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadInputTest, ReportsExactlyOneErrorAtTheRightPlace) {
  const BadCase& c = GetParam();
  ParseResult result = ParsePolicyYaml(c.yaml, "bad.yaml");
  EXPECT_FALSE(result.policy.has_value());
  ASSERT_THAT(result.errors, SizeIs(1)) << Dump(result.errors) << "--- input:\n" << c.yaml;
  EXPECT_THAT(result.errors[0], ErrorAt(c.line, c.column, c.field, c.message)) << "--- input:\n"
                                                                               << c.yaml;
  EXPECT_EQ(result.errors[0].file(), "bad.yaml");
}

INSTANTIATE_TEST_SUITE_P(EachMistake, BadInputTest, ::testing::ValuesIn(BadCases()),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           return info.param.name;
                         });

TEST(ParsePolicyYaml, CollectsEveryErrorAtOnceInFileOrder) {
  constexpr std::string_view kBad = R"(name: Bad
mode: enforcing
rules:
  - name: one
    kind: unix-connect
    object: { address: "127.0.0.1:1" }
    acton: allow
  - name: one
    kind: tcp-connect
    object: { address: "8.8.8.8:53" }
    action: allow
  - name: three
    kind: fifo-open
    object: { path: relative }
    action: redirect
)";
  ParseResult result = ParsePolicyYaml(kBad, "bad.yaml");
  EXPECT_FALSE(result.policy.has_value());
  EXPECT_THAT(result.errors,
              ElementsAre(ErrorAt(1, 7, "name", "not a valid policy name"),
                          ErrorAt(2, 7, "mode", "unknown mode"),
                          ErrorAt(6, 24, "rules[0].object.address", "does not apply"),
                          ErrorAt(7, 5, "rules[0].acton", "did you mean 'action'"),
                          ErrorAt(8, 11, "rules[1].name", "duplicate rule name"),
                          ErrorAt(10, 24, "rules[1].object.address", "not a loopback IP"),
                          ErrorAt(12, 5, "rules[2].redirect.vm", "needs a target"),
                          ErrorAt(14, 21, "rules[2].object.path", "absolute")))
      << Dump(result.errors);
}

TEST(ParsePolicyYaml, DeepNestingIsAnErrorNotACrash) {
  std::string deep = "name: " + std::string(100000, '[') + std::string(100000, ']') + "\n";
  ParseResult result = ParsePolicyYaml(deep, "deep.yaml");
  EXPECT_FALSE(result.policy.has_value());
  EXPECT_THAT(result.errors, Not(IsEmpty()));
}

TEST(ParsePolicyYaml, TooManyErrorsAreCapped) {
  std::string yaml = "name: p\nrules:\n";
  for (int i = 0; i < 2000; ++i) yaml += "  - name: X\n";
  ParseResult result = ParsePolicyYaml(yaml, "many.yaml");
  ASSERT_FALSE(result.errors.empty());
  EXPECT_LE(result.errors.size(), 501u);
  EXPECT_THAT(result.errors.back().message(), HasSubstr("too many errors"));
}

TEST(ParsePolicyYaml, SurvivesRandomMutationsOfAValidFile) {
  std::mt19937 rng(20240611);
  const std::string base(kGood);
  const std::string alphabet = "{}[]:,-*&!|>'\"#%@`?\n\t \\abz019/.";
  int parsed = 0;
  int rejected = 0;
  for (int iteration = 0; iteration < 600; ++iteration) {
    std::string text = base;
    int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      size_t at = rng() % text.size();
      switch (rng() % 6) {
        case 0:  // Replace a byte, sometimes with a non-ASCII or NUL one.
          text[at] =
              rng() % 4 == 0 ? static_cast<char>(rng() % 256) : alphabet[rng() % alphabet.size()];
          break;
        case 1:  // Insert.
          text.insert(at, 1, alphabet[rng() % alphabet.size()]);
          break;
        case 2:  // Delete a run.
          text.erase(at, rng() % 16);
          break;
        case 3: {  // Duplicate a run elsewhere.
          std::string run = text.substr(at, rng() % 64);
          text.insert(rng() % text.size(), run);
          break;
        }
        case 4:  // Truncate.
          text.resize(at);
          break;
        default: {  // Swap two lines.
          size_t a = text.rfind('\n', at);
          size_t b = text.find('\n', at);
          if (a != std::string::npos && b != std::string::npos && a < b) {
            std::string line = text.substr(a, b - a);
            text.erase(a, b - a);
            text.insert(rng() % (text.size() + 1), line);
          }
          break;
        }
      }
    }
    ParseResult result = ParsePolicyYaml(text, "fuzz.yaml");
    ASSERT_NE(result.policy.has_value(), !result.errors.empty()) << text;
    for (const v1::ValidationError& error : result.errors) {
      ASSERT_FALSE(error.message().empty()) << text;
      ASSERT_EQ(error.file(), "fuzz.yaml");
    }
    if (result.policy) {
      ++parsed;
      // Whatever parses must also pass the network-side validation and print back.
      EXPECT_THAT(ValidatePolicy(*result.policy), IsEmpty()) << text;
      EXPECT_TRUE(ParsePolicyYaml(PolicyToYaml(*result.policy), "again.yaml").policy.has_value())
          << text;
    } else {
      ++rejected;
    }
  }
  // Both outcomes happen, so the test exercises both paths.
  EXPECT_GT(parsed, 0);
  EXPECT_GT(rejected, 0);
}

TEST(ValidatePolicy, SharesTheChecksAndUsesRuleLocations) {
  v1::Policy policy;
  policy.set_name("net");
  v1::Rule* rule = policy.add_rules();
  rule->set_name("r");
  rule->add_kinds(v1::UNIX_CONNECT);
  rule->mutable_object()->set_address("127.0.0.1:80");
  rule->set_action(v1::ALLOW);
  rule->mutable_ask()->mutable_ttl()->set_seconds(1);
  rule->mutable_location()->set_file("net.yaml");
  rule->mutable_location()->set_line(7);
  rule->mutable_location()->set_column(3);
  v1::Rule* second = policy.add_rules();
  second->set_name("r");
  second->add_kinds(static_cast<v1::InteractionKind>(99));
  second->set_action(static_cast<v1::Action>(42));
  second->mutable_location()->set_file("net.yaml");
  second->mutable_location()->set_line(12);
  second->mutable_location()->set_column(3);

  std::vector<v1::ValidationError> errors = ValidatePolicy(policy);
  EXPECT_THAT(errors,
              ElementsAre(ErrorAt(7, 3, "rules[0].object.address", "does not apply"),
                          ErrorAt(7, 3, "rules[0].ask", "only for action ask"),
                          ErrorAt(12, 3, "rules[1].kinds[0]", "unknown kind (99)"),
                          ErrorAt(12, 3, "rules[1].action", "unknown action (42)"),
                          ErrorAt(12, 3, "rules[1].name", "first used by rules[0] at line 7")))
      << Dump(errors);
  for (const v1::ValidationError& e : errors) EXPECT_EQ(e.file(), "net.yaml");
}

TEST(ValidatePolicy, AcceptsWhatTheParserAccepts) {
  ParseResult result = ParsePolicyYaml(kGood, "good.yaml");
  ASSERT_TRUE(result.policy.has_value()) << Dump(result.errors);
  EXPECT_THAT(ValidatePolicy(*result.policy), IsEmpty());
}

TEST(FormatError, OneLineWithWhatIsKnown) {
  v1::ValidationError e;
  e.set_file("a.yaml");
  e.set_line(3);
  e.set_column(5);
  e.set_field("rules[0].action");
  e.set_message("unknown action 'x'");
  EXPECT_EQ(FormatError(e), "a.yaml:3:5: rules[0].action: unknown action 'x'");
  e.clear_field();
  EXPECT_EQ(FormatError(e), "a.yaml:3:5: unknown action 'x'");
  e.clear_file();
  e.clear_line();
  EXPECT_EQ(FormatError(e), "unknown action 'x'");
}

TEST(ErrorsToStatus, ListsEveryErrorOnItsOwnLine) {
  EXPECT_THAT(ErrorsToStatus({}), IsOk());
  ParseResult result = ParsePolicyYaml("name: X\nrules: 5\n", "f.yaml");
  ASSERT_THAT(result.errors, SizeIs(2));
  absl::Status status = ErrorsToStatus(result.errors);
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kInvalidArgument,
                               AllOf(HasSubstr("f.yaml:1:7: name: 'X' is not a valid policy name"),
                                     HasSubstr("\nf.yaml:2:8: rules: expected a list"))));
  EXPECT_THAT(ParsePolicyOrStatus("name: X\nrules: 5\n", "f.yaml"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("f.yaml:2:8")));
  EXPECT_THAT(ParsePolicyOrStatus(kGood, "f.yaml"), IsOk());
}

TEST(Names, RoundTripEveryEnum) {
  for (int k = v1::UNIX_CONNECT; k <= v1::DEPEND; ++k) {
    auto kind = static_cast<v1::InteractionKind>(k);
    EXPECT_EQ(ParseKindName(KindName(kind)), kind);
  }
  EXPECT_EQ(KindName(v1::NAME_TRANSFER), "name-transfer");
  EXPECT_EQ(ParseKindName("nope"), std::nullopt);
  for (v1::Action a : {v1::ALLOW, v1::DENY, v1::REDIRECT, v1::ASK}) {
    EXPECT_EQ(ParseActionName(ActionName(a)), a);
  }
  for (v1::Verdict v : {v1::VERDICT_ALLOW, v1::VERDICT_DENY, v1::VERDICT_REDIRECT}) {
    EXPECT_EQ(ParseVerdictName(VerdictName(v)), v);
  }
  for (v1::Scope s : {v1::INTRA_VM, v1::CROSS_VM, v1::VM_HOST, v1::HOST_VM}) {
    EXPECT_EQ(ParseScopeName(ScopeName(s)), s);
  }
  EXPECT_EQ(ScopeName(v1::CROSS_VM), "cross-vm");
  EXPECT_EQ(KindName(static_cast<v1::InteractionKind>(77)), "unknown");
  EXPECT_EQ(ActionName(v1::ACTION_UNSPECIFIED), "unspecified");
  EXPECT_EQ(PolicyModeName(v1::POLICY_MODE_UNSPECIFIED), "enforce");
  EXPECT_EQ(FailModeName(v1::FAIL_OPEN), "open");
}

// The shipped examples: every good one parses; bad-policy.yaml shows many errors at once.
TEST(Examples, ShippedPoliciesParseAndTheBadOneFailsLoudly) {
  std::filesystem::path dir = std::filesystem::path(SHUTTLE_SOURCE_DIR) / "deploy" / "examples";
  int good = 0;
  bool saw_bad = false;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    ParseResult result = ParsePolicyYaml(text.str(), entry.path().filename().string());
    if (entry.path().filename() == "bad-policy.yaml") {
      saw_bad = true;
      EXPECT_FALSE(result.policy.has_value());
      EXPECT_GE(result.errors.size(), 10u) << Dump(result.errors);
      std::vector<std::string> fields;
      for (const v1::ValidationError& e : result.errors) fields.push_back(e.field());
      EXPECT_THAT(fields, AllOf(Contains("name"), Contains("mode"), Contains("rules[0].acton"),
                                Contains("rules[0].object.address"), Contains("rules[1].name"),
                                Contains("rules[2].object.path"), Contains("rules[3].ask.ttl"),
                                Contains("rules[4].writable")))
          << Dump(result.errors);
    } else {
      EXPECT_THAT(result.errors, IsEmpty()) << entry.path() << "\n" << Dump(result.errors);
      ++good;
    }
  }
  EXPECT_TRUE(saw_bad);
  EXPECT_GE(good, 2);
}

}  // namespace
}  // namespace shuttle::policy
