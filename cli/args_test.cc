#include "cli/args.h"

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::cli {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

absl::StatusOr<Invocation> Parse(const std::vector<std::string>& args, const char* env = nullptr) {
  return ParseArgs(args, env);
}

TEST(ParseArgsTest, DefaultsFollowTheDesign) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation inv, Parse({"policy", "ls"}));
  ASSERT_NE(inv.command, nullptr);
  EXPECT_EQ(inv.command->name, "policy ls");
  EXPECT_FALSE(inv.help);
  EXPECT_EQ(inv.global.controller, "127.0.0.1:7443");
  EXPECT_EQ(inv.global.data_dir, "/var/lib/shuttle/controller");
  EXPECT_EQ(inv.global.CaPath(), "/var/lib/shuttle/controller/pki/ca.pem");
  EXPECT_EQ(inv.global.CertPath(), "/var/lib/shuttle/controller/pki/admin.pem");
  EXPECT_EQ(inv.global.KeyPath(), "/var/lib/shuttle/controller/pki/admin.key");
  EXPECT_FALSE(inv.global.insecure);
  EXPECT_EQ(inv.global.output, OutputFormat::kTable);
  EXPECT_EQ(inv.global.timeout, absl::Seconds(10));
  EXPECT_THAT(inv.args, IsEmpty());
}

TEST(ParseArgsTest, ControllerFromEnvironmentThenFlag) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation from_env, Parse({"policy", "ls"}, "10.0.0.1:1"));
  EXPECT_EQ(from_env.global.controller, "10.0.0.1:1");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation empty_env, Parse({"policy", "ls"}, ""));
  EXPECT_EQ(empty_env.global.controller, "127.0.0.1:7443");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      Invocation from_flag, Parse({"policy", "ls", "--controller", "127.0.0.1:9"}, "10.0.0.1:1"));
  EXPECT_EQ(from_flag.global.controller, "127.0.0.1:9");
}

TEST(ParseArgsTest, GlobalFlagsAnywhereInBothSpellings) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      Invocation inv, Parse({"--controller=127.0.0.1:1", "-o", "json", "policy", "--insecure",
                             "get", "web", "--timeout", "2s", "--data-dir", "/d", "--ca=/c.pem",
                             "--revision=3", "--server-name", "ctl"}));
  EXPECT_EQ(inv.command->name, "policy get");
  EXPECT_THAT(inv.args, ElementsAre("web"));
  EXPECT_EQ(inv.global.controller, "127.0.0.1:1");
  EXPECT_EQ(inv.global.output, OutputFormat::kJson);
  EXPECT_TRUE(inv.global.insecure);
  EXPECT_EQ(inv.global.timeout, absl::Seconds(2));
  EXPECT_EQ(inv.global.CaPath(), "/c.pem");
  EXPECT_EQ(inv.global.CertPath(), "/d/pki/admin.pem");
  EXPECT_EQ(inv.global.server_name, "ctl");
  EXPECT_EQ(inv.GetUint("revision"), 3u);
}

TEST(ParseArgsTest, CertificateOverrides) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation inv,
                               Parse({"policy", "ls", "--cert", "/v.pem", "--key", "/v.key"}));
  EXPECT_EQ(inv.global.CertPath(), "/v.pem");
  EXPECT_EQ(inv.global.KeyPath(), "/v.key");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation none, Parse({"policy", "ls", "--no-client-cert"}));
  EXPECT_TRUE(none.global.no_client_cert);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation off, Parse({"policy", "ls", "--insecure=false"}));
  EXPECT_FALSE(off.global.insecure);
}

TEST(ParseArgsTest, PolicyVerbs) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation apply, Parse({"policy", "apply", "-f", "web.yaml"}));
  EXPECT_EQ(apply.command->name, "policy apply");
  EXPECT_EQ(apply.Get("file"), "web.yaml");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation validate,
                               Parse({"policy", "validate", "--file=bad.yaml"}));
  EXPECT_EQ(validate.Get("file"), "bad.yaml");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation rm, Parse({"policy", "rm", "web"}));
  EXPECT_THAT(rm.args, ElementsAre("web"));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation history, Parse({"policy", "history", "web"}));
  EXPECT_EQ(history.command->name, "policy history");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation rollback,
                               Parse({"policy", "rollback", "web", "--to", "2"}));
  EXPECT_EQ(rollback.GetUint("to"), 2u);
  EXPECT_EQ(rollback.GetUint("revision"), std::nullopt);
}

TEST(ParseArgsTest, ExplainTakesTheWholeInteraction) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      Invocation inv, Parse({"explain", "--vm", "web", "--program", "/usr/bin/app", "--uid", "0",
                             "--kind", "unix-connect", "--object", "/run/db.sock", "--object-vm",
                             "db", "-f", "c.yaml", "--host", "h1"}));
  EXPECT_EQ(inv.command->name, "explain");
  EXPECT_EQ(inv.Get("vm"), "web");
  EXPECT_EQ(inv.Get("program"), "/usr/bin/app");
  EXPECT_EQ(inv.GetUint("uid"), 0u);
  EXPECT_EQ(inv.Get("kind"), "unix-connect");
  EXPECT_EQ(inv.Get("object"), "/run/db.sock");
  EXPECT_EQ(inv.Get("object-vm"), "db");
  EXPECT_EQ(inv.Get("file"), "c.yaml");
  EXPECT_EQ(inv.Get("host"), "h1");
  EXPECT_FALSE(inv.Has("since"));
  EXPECT_EQ(inv.Get("since", "none"), "none");
}

TEST(ParseArgsTest, MissingRequiredFlagNamesIt) {
  EXPECT_THAT(Parse({"policy", "apply"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("policy apply: missing -f FILE (see shuttlectl policy apply")));
  EXPECT_THAT(Parse({"policy", "rollback", "web"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing --to N")));
  EXPECT_THAT(Parse({"explain", "--vm", "web", "--kind", "signal"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing --object NAME")));
}

TEST(ParseArgsTest, PositionalCountIsChecked) {
  EXPECT_THAT(Parse({"policy", "get"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("policy get: missing NAME")));
  EXPECT_THAT(Parse({"policy", "get", "a", "b"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unexpected argument 'b'")));
  EXPECT_THAT(Parse({"policy", "ls", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unexpected argument 'x'")));
}

TEST(ParseArgsTest, VerbFlagsOnlyWhereTheyBelong) {
  EXPECT_THAT(
      Parse({"policy", "ls", "--to", "3"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("policy ls: unknown flag --to")));
  EXPECT_THAT(Parse({"policy", "ls", "--bogus"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown flag --bogus")));
  EXPECT_THAT(Parse({"policy", "ls", "-z"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown flag -z")));
}

TEST(ParseArgsTest, ValuesAreTypeChecked) {
  EXPECT_THAT(Parse({"policy", "get", "w", "--revision", "0"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("positive integer")));
  EXPECT_THAT(Parse({"policy", "get", "w", "--revision", "abc"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--revision: 'abc'")));
  EXPECT_THAT(Parse({"policy", "rollback", "w", "--to", "-1"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("positive integer")));
  EXPECT_THAT(Parse({"explain", "--vm", "a", "--kind", "teleport", "--object", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'teleport' is not an interaction kind (unix-connect")));
  EXPECT_THAT(Parse({"explain", "--vm", "a", "--kind", "signal", "--object", "x", "--uid", "-3"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("non-negative integer")));
  EXPECT_THAT(Parse({"policy", "ls", "-o", "yaml"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("table or json")));
  EXPECT_THAT(Parse({"policy", "ls", "--timeout", "0s"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("positive duration")));
  EXPECT_THAT(Parse({"policy", "ls", "--insecure=maybe"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("true or false")));
  EXPECT_THAT(Parse({"audit", "--verdict", "perhaps"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("allow, deny or redirect")));
  EXPECT_THAT(Parse({"audit", "--since", "yesterday"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("RFC 3339")));
  EXPECT_THAT(Parse({"policy", "ls", "--controller", ""}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("non-empty")));
}

TEST(ParseArgsTest, FlagWithoutValue) {
  EXPECT_THAT(
      Parse({"policy", "get", "w", "--revision"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("flag --revision needs a value (N)")));
}

TEST(ParseArgsTest, CommandAndGroupErrors) {
  EXPECT_THAT(Parse({}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing command")));
  EXPECT_THAT(Parse({"policy"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("policy: missing subcommand (apply, validate, get, ls, rm, "
                                 "history, rollback)")));
  EXPECT_THAT(Parse({"policy", "frob"}), StatusIs(absl::StatusCode::kInvalidArgument,
                                                  HasSubstr("policy: unknown subcommand 'frob'")));
  EXPECT_THAT(Parse({"frob"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown command 'frob'")));
}

TEST(ParseArgsTest, RunTakesTheCommandAfterDoubleDash) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation inv,
                               Parse({"run", "--vm", "web", "--", "ls", "-l", "--vm", "x"}));
  EXPECT_EQ(inv.command->name, "run");
  EXPECT_EQ(inv.Get("vm"), "web");
  EXPECT_THAT(inv.passthrough, ElementsAre("ls", "-l", "--vm", "x"));
  EXPECT_THAT(Parse({"run", "--vm", "web"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("run: missing -- CMD")));
  EXPECT_THAT(Parse({"policy", "ls", "--", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no arguments after --")));
}

TEST(ParseArgsTest, ServiceVerbs) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(
      Invocation add,
      Parse({"service", "add", "--vm", "db", "--name", "pg", "--ready", "tcp:127.0.0.1:5432",
             "--user", "postgres", "--start-timeout", "30s", "--cwd", "/var/lib/pg", "--",
             "/usr/bin/postgres", "-D", "/var/lib/pg"}));
  EXPECT_EQ(add.command->name, "service add");
  EXPECT_EQ(add.Get("ready"), "tcp:127.0.0.1:5432");
  EXPECT_EQ(add.GetDuration("start-timeout"), absl::Seconds(30));
  EXPECT_THAT(add.passthrough, ElementsAre("/usr/bin/postgres", "-D", "/var/lib/pg"));
  EXPECT_THAT(
      Parse({"service", "add", "--vm", "db", "--name", "pg", "--", "x"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("service add: missing --ready")));
  EXPECT_THAT(
      Parse({"service", "add", "--vm", "db", "--name", "pg", "--ready", "unix:/x"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("service add: missing -- CMD")));
  EXPECT_THAT(Parse({"service", "add", "--vm", "db", "--name", "pg", "--ready", "unix:/x",
                     "--start-timeout", "soon", "--", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("--start-timeout")));
  EXPECT_THAT(Parse({"service", "ls"}), IsOk());
  EXPECT_THAT(Parse({"service", "rm", "--vm", "db", "--name", "pg"}), IsOk());
  EXPECT_THAT(Parse({"service", "rm", "--vm", "db"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing --name")));
  EXPECT_THAT(HelpText("service"), HasSubstr("service add"));
}

TEST(ParseArgsTest, LaterIssueVerbsParse) {
  EXPECT_THAT(Parse({"hosts"}), IsOk());
  EXPECT_THAT(Parse({"hosts", "h1"}), IsOk());
  EXPECT_THAT(Parse({"audit", "--follow", "--vm", "web", "--since", "1h", "--limit", "5"}), IsOk());
  EXPECT_THAT(Parse({"token", "create", "--ttl", "30m", "--host", "h1"}), IsOk());
  EXPECT_THAT(Parse({"vm", "create", "web"}), IsOk());
  EXPECT_THAT(Parse({"vm", "ls"}), IsOk());
  EXPECT_THAT(Parse({"vm", "rm", "web"}), IsOk());
}

TEST(ParseArgsTest, AnswerVerbs) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation set, Parse({"answer",      "set",
                                                      "--vm",        "*",
                                                      "--kind",      "unix-connect",
                                                      "--object",    "/run/*",
                                                      "--verdict",   "allow",
                                                      "--ttl",       "2m",
                                                      "--expires",   "2030-01-01T00:00:00Z",
                                                      "--note",      "INC-1",
                                                      "--object-vm", "db",
                                                      "--id",        "web-run"}));
  EXPECT_EQ(set.command->name, "answer set");
  EXPECT_EQ(set.Get("vm"), "*");
  EXPECT_EQ(set.Get("expires"), "2030-01-01T00:00:00Z");
  EXPECT_EQ(set.Get("id"), "web-run");
  EXPECT_THAT(
      Parse({"answer", "set", "--vm", "web", "--kind", "signal", "--object", "x"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("answer set: missing --verdict V")));
  EXPECT_THAT(Parse({"answer", "set", "--vm", "web", "--kind", "signal", "--object", "x",
                     "--verdict", "deny", "--expires", "someday"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("--expires: 'someday' is not a duration from now")));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation ls, Parse({"answer", "ls", "-o", "json"}));
  EXPECT_EQ(ls.command->name, "answer ls");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation rm, Parse({"answer", "rm", "ans-1"}));
  EXPECT_THAT(rm.args, ElementsAre("ans-1"));
  EXPECT_THAT(Parse({"answer", "rm"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("answer rm: missing ID")));
  EXPECT_THAT(Parse({"answer"}), StatusIs(absl::StatusCode::kInvalidArgument,
                                          HasSubstr("answer: missing subcommand (set, ls, rm)")));
  EXPECT_THAT(Parse({"answer", "ls", "--note", "x"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown flag --note")));
}

TEST(ParseArgsTest, HelpWinsEvenOnAnIncompleteLine) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation top, Parse({"--help"}));
  EXPECT_TRUE(top.help);
  EXPECT_EQ(top.help_topic, "");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation group, Parse({"policy", "-h"}));
  EXPECT_TRUE(group.help);
  EXPECT_EQ(group.help_topic, "policy");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation verb, Parse({"policy", "apply", "--help"}));
  EXPECT_EQ(verb.help_topic, "policy apply");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(Invocation word, Parse({"help", "explain"}));
  EXPECT_TRUE(word.help);
  EXPECT_EQ(word.help_topic, "explain");
}

TEST(HelpTextTest, ListsEveryCommandAndItsFlags) {
  std::string top = HelpText("");
  for (const CommandSpec& c : Commands()) EXPECT_THAT(top, HasSubstr(std::string(c.name)));
  EXPECT_THAT(top, HasSubstr("--controller ADDR"));
  EXPECT_THAT(top, HasSubstr("-o, --output table|json"));

  std::string rollback = HelpText("policy rollback");
  EXPECT_THAT(rollback, HasSubstr("usage: shuttlectl policy rollback NAME --to N\n"));
  std::string explain = HelpText("explain");
  EXPECT_THAT(explain, HasSubstr("--vm VM --kind KIND --object NAME"));
  EXPECT_THAT(explain, HasSubstr("[--object-vm VM] [--program PATH] [--uid UID] [-f FILE]"));

  std::string group = HelpText("vm");
  EXPECT_THAT(group, HasSubstr("vm create"));
  EXPECT_THAT(group, Not(HasSubstr("policy apply")));
}

TEST(ParseTimeoutTest, DurationsAndBareSeconds) {
  EXPECT_EQ(*ParseTimeout("10s"), absl::Seconds(10));
  EXPECT_EQ(*ParseTimeout("5"), absl::Seconds(5));
  EXPECT_EQ(*ParseTimeout("1m30s"), absl::Seconds(90));
  EXPECT_EQ(*ParseTimeout("250ms"), absl::Milliseconds(250));
  EXPECT_THAT(ParseTimeout("0"), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("0")));
  EXPECT_THAT(ParseTimeout("-1s"), Not(IsOk()));
  EXPECT_THAT(ParseTimeout("inf"), Not(IsOk()));
  EXPECT_THAT(ParseTimeout("soon"), Not(IsOk()));
  EXPECT_THAT(ParseTimeout(""), Not(IsOk()));
}

TEST(ParseSinceTest, DurationBackFromNowOrRfc3339) {
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  EXPECT_EQ(*ParseSince("1h", now), now - absl::Hours(1));
  EXPECT_EQ(*ParseSince("2024-05-01T12:00:00Z", now), absl::FromUnixSeconds(1714564800));
  EXPECT_THAT(ParseSince("last tuesday", now), Not(IsOk()));
}

TEST(ParseUntilTest, DurationFromNowOrRfc3339) {
  const absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  EXPECT_EQ(*ParseUntil("2h", now), now + absl::Hours(2));
  EXPECT_EQ(*ParseUntil("2024-05-01T12:00:00Z", now), absl::FromUnixSeconds(1714564800));
  EXPECT_THAT(ParseUntil("-1h", now), Not(IsOk()));
}

}  // namespace
}  // namespace shuttle::cli
