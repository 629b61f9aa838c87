#include "cli/commands.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "shuttle/v1/policy.grpc.pb.h"

namespace shuttle::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::StartsWith;

struct Result {
  int exit_code;
  std::string out;
  std::string err;
};

Result RunShuttlectl(const std::vector<std::string>& args) {
  std::ostringstream out;
  std::ostringstream err;
  int code = RunCli(args, nullptr, out, err);
  return {code, out.str(), err.str()};
}

// The contract for failures: exactly one line, "shuttlectl: ...".
void ExpectOneErrorLine(const Result& r) {
  EXPECT_THAT(r.err, StartsWith("shuttlectl: "));
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
}

TEST(RunCliTest, HelpGoesToStdoutAndSucceeds) {
  Result r = RunShuttlectl({"--help"});
  EXPECT_EQ(r.exit_code, kExitOk);
  EXPECT_THAT(r.out, StartsWith("usage: shuttlectl COMMAND"));
  EXPECT_THAT(r.err, IsEmpty());
  Result verb = RunShuttlectl({"policy", "rollback", "-h"});
  EXPECT_EQ(verb.exit_code, kExitOk);
  EXPECT_THAT(verb.out, HasSubstr("--to N"));
}

TEST(RunCliTest, UsageErrorExitsTwoWithOneLine) {
  Result r = RunShuttlectl({"policy", "apply"});
  EXPECT_EQ(r.exit_code, kExitUsage);
  ExpectOneErrorLine(r);
  EXPECT_THAT(r.err, HasSubstr("policy apply: missing -f FILE"));
  EXPECT_THAT(r.out, IsEmpty());
  Result none = RunShuttlectl({});
  EXPECT_EQ(none.exit_code, kExitUsage);
  ExpectOneErrorLine(none);
}

TEST(RunCliTest, LocalAgentVerbsWithoutAnAgentSayWhichSocket) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--agent-socket", "/nonexistent/agent.sock", "vm", "create", "web"},
           {"--agent-socket", "/nonexistent/agent.sock", "vm", "ls"},
           {"--agent-socket", "/nonexistent/agent.sock", "vm", "rm", "web"}}) {
    Result r = RunShuttlectl(args);
    EXPECT_EQ(r.exit_code, kExitFailure);
    ExpectOneErrorLine(r);
    EXPECT_THAT(r.err, HasSubstr("/nonexistent/agent.sock"));
    EXPECT_THAT(r.err, HasSubstr("is shuttle-agent running?"));
    EXPECT_THAT(r.out, IsEmpty());
  }
}

TEST(RunCliTest, MissingPkiNamesTheFileAndTheFlag) {
  Result r = RunShuttlectl({"--data-dir", "/nonexistent/shuttle", "policy", "ls"});
  EXPECT_EQ(r.exit_code, kExitFailure);
  ExpectOneErrorLine(r);
  EXPECT_THAT(r.err, HasSubstr("shuttlectl: policy ls: cannot read CA certificate "
                               "/nonexistent/shuttle/pki/ca.pem"));
  EXPECT_THAT(r.err, HasSubstr("--ca"));
}

TEST(RunCliTest, MissingPolicyFile) {
  Result r = RunShuttlectl({"--insecure", "policy", "apply", "-f", "/nonexistent/web.yaml"});
  EXPECT_EQ(r.exit_code, kExitFailure);
  ExpectOneErrorLine(r);
  EXPECT_THAT(r.err, HasSubstr("cannot read /nonexistent/web.yaml"));
}

// A loopback port that refuses connections: bound (so nobody else takes it) but not listening.
class RefusingPort {
 public:
  RefusingPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port_ = ntohs(addr.sin_port);
  }
  ~RefusingPort() { close(fd_); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(RunCliTest, ConnectionRefusedNamesTheAddress) {
  RefusingPort port;
  Result r = RunShuttlectl({"--insecure", "--controller", port.address(), "policy", "ls"});
  EXPECT_EQ(r.exit_code, kExitFailure);
  ExpectOneErrorLine(r);
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat("shuttlectl: policy ls: cannot reach controller at ",
                                            port.address(), ": UNAVAILABLE")));
}

GlobalOptions OptionsFor(const std::string& address, absl::Duration timeout) {
  GlobalOptions options;
  options.controller = address;
  options.data_dir = "/d";
  options.timeout = timeout;
  return options;
}

TEST(DescribeCallErrorTest, KeepsTheCodeOnOneLine) {
  const GlobalOptions options = OptionsFor("a:1", absl::Seconds(3));
  absl::Status denied = DescribeCallError(
      grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "role viewer may not call Apply"), options);
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(), "PERMISSION_DENIED: role viewer may not call Apply");

  absl::Status late = DescribeCallError(
      grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded"), options);
  EXPECT_EQ(late.message(),
            "controller at a:1 did not answer within 3s: DEADLINE_EXCEEDED: Deadline Exceeded");

  absl::Status unimplemented =
      DescribeCallError(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, ""), options);
  EXPECT_EQ(unimplemented.message(), "UNIMPLEMENTED: not implemented yet by the controller");

  absl::Status invalid = DescribeCallError(
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "f:1:1: a: x\nf:2:1: b: y\n"), options);
  EXPECT_EQ(invalid.message(), "INVALID_ARGUMENT: f:1:1: a: x; f:2:1: b: y");

  EXPECT_TRUE(DescribeCallError(grpc::Status::OK, options).ok());
}

TEST(DescribeCallErrorTest, HintsAtTlsCauses) {
  const GlobalOptions options = OptionsFor("a:1", absl::Seconds(3));
  absl::Status refused = DescribeCallError(
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "ipv4:a:1: Connection refused"), options);
  EXPECT_EQ(refused.message(),
            "cannot reach controller at a:1: UNAVAILABLE: ipv4:a:1: Connection refused");
  absl::Status server =
      DescribeCallError(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                     "Ssl handshake failed: certificate verify failed"),
                        options);
  EXPECT_THAT(server.message(), HasSubstr("not signed by /d/pki/ca.pem"));
  absl::Status client = DescribeCallError(
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "ipv4:a:1: Socket closed"), options);
  EXPECT_THAT(client.message(), HasSubstr("accepts only client certificates signed by its CA"));
}

// A PolicyService that answers with canned responses, to check what the verbs print.
class FakePolicyService final : public v1::PolicyService::Service {
 public:
  grpc::Status Apply(grpc::ServerContext*, const v1::ApplyRequest* request,
                     v1::ApplyResponse* response) override {
    if (request->source().find("bad") != std::string::npos) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat(request->filename(), ":2:3: name: must not be empty\n",
                                       request->filename(), ":5:7: rules[0].kinds: unknown"));
    }
    response->mutable_revision()->set_name("web");
    response->mutable_revision()->set_revision(2);
    response->mutable_revision()->set_fleet_version(7);
    return grpc::Status::OK;
  }
  grpc::Status Validate(grpc::ServerContext*, const v1::ValidateRequest* request,
                        v1::ValidateResponse* response) override {
    v1::ValidationError* error = response->add_errors();
    error->set_file(request->filename());
    error->set_line(4);
    error->set_column(9);
    error->set_field("rules[0].action");
    error->set_message("unknown action 'permit'");
    response->set_valid(false);
    return grpc::Status::OK;
  }
  grpc::Status List(grpc::ServerContext*, const v1::ListPoliciesRequest*,
                    v1::ListPoliciesResponse* response) override {
    v1::PolicyRevision* rev = response->add_policies();
    rev->set_name("webapp");
    rev->set_revision(12);
    rev->set_author("admin");
    rev->mutable_created()->set_seconds(1714564800);
    rev->mutable_policy()->add_rules();
    rev->mutable_policy()->add_rules();
    response->set_fleet_version(40);
    return grpc::Status::OK;
  }
  grpc::Status Explain(grpc::ServerContext*, const v1::ExplainRequest* request,
                       v1::ExplainResponse* response) override {
    last_explain = *request;
    v1::Decision* d = response->mutable_decision();
    d->set_verdict(v1::VERDICT_ALLOW);
    d->set_scope(v1::CROSS_VM);
    d->set_policy("webapp");
    d->set_rule("web-to-db");
    d->set_policy_version(40);
    d->set_enforced(true);
    response->mutable_winner()->mutable_location()->set_file("webapp.yaml");
    response->mutable_winner()->mutable_location()->set_line(10);
    response->mutable_winner()->mutable_location()->set_column(5);
    v1::LosingRule* loser = response->add_losers();
    loser->set_policy("baseline");
    loser->set_rule("no-cross");
    loser->set_action(v1::DENY);
    loser->set_why("less specific: names only the VM, winner names the program");
    return grpc::Status::OK;
  }

  v1::ExplainRequest last_explain;
};

class FakeControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override { server_->Shutdown(); }

  Result RunAgainstFake(std::vector<std::string> args) {
    args.insert(args.begin(), {"--insecure", "--controller", absl::StrCat("127.0.0.1:", port_)});
    return RunShuttlectl(args);
  }

  FakePolicyService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(FakeControllerTest, ListPrintsATable) {
  Result r = RunAgainstFake({"policy", "ls"});
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "NAME    REVISION  MODE     RULES  HOSTS  UPDATED               AUTHOR\n"
            "webapp  12        enforce  2      *      2024-05-01T12:00:00Z  admin\n"
            "fleet version: 40\n");
}

TEST_F(FakeControllerTest, ValidatePrintsEveryErrorAndFails) {
  Result r = RunAgainstFake({"policy", "validate", "-f", "/dev/null"});
  EXPECT_EQ(r.exit_code, kExitFailure);
  EXPECT_EQ(r.out, "/dev/null:4:9: rules[0].action: unknown action 'permit'\n");
  ExpectOneErrorLine(r);
  EXPECT_THAT(r.err, HasSubstr("shuttlectl: policy validate: /dev/null: invalid, 1 error"));

  Result json = RunAgainstFake({"policy", "validate", "-f", "/dev/null", "-o", "json"});
  EXPECT_EQ(json.exit_code, kExitFailure);
  EXPECT_THAT(json.out, HasSubstr("\"valid\": false"));
}

TEST_F(FakeControllerTest, ApplyListsValidationErrorsThenFails) {
  char path[] = "/tmp/shuttlectl_test_XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "bad: yes\n", 9), 9);
  close(fd);
  Result r = RunAgainstFake({"policy", "apply", "-f", path});
  unlink(path);
  EXPECT_EQ(r.exit_code, kExitFailure);
  std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_EQ(lines[0], absl::StrCat(path, ":2:3: name: must not be empty"));
  ExpectOneErrorLine(r);
  EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT: "));
  EXPECT_THAT(r.err, HasSubstr("2 errors (listed above); nothing was applied"));

  Result good = RunAgainstFake({"policy", "apply", "-f", "/dev/null"});
  EXPECT_EQ(good.exit_code, kExitOk) << good.err;
  EXPECT_EQ(good.out, "applied policy web: revision 2, fleet version 7\n");
}

TEST_F(FakeControllerTest, ExplainSendsTheInteractionAndShowsWinnerAndLosers) {
  Result r =
      RunAgainstFake({"explain", "--vm", "web", "--program", "/usr/bin/app", "--uid", "33",
                      "--kind", "unix-connect", "--object", "/run/db.sock", "--object-vm", "db"});
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  const v1::Interaction& i = service_.last_explain.interaction();
  EXPECT_EQ(i.subject_vm(), "web");
  EXPECT_EQ(i.program(), "/usr/bin/app");
  EXPECT_EQ(i.uid(), 33u);
  EXPECT_EQ(i.kind(), v1::UNIX_CONNECT);
  EXPECT_EQ(i.object_name(), "/run/db.sock");
  EXPECT_EQ(i.object_vm(), "db");
  EXPECT_THAT(service_.last_explain.candidate_source(), IsEmpty());
  EXPECT_EQ(r.out,
            "verdict:         allow\n"
            "scope:           cross-vm\n"
            "decided by:      webapp/web-to-db (webapp.yaml:10:5)\n"
            "enforced:        yes\n"
            "policy version:  40\n"
            "losing rules:\n"
            "POLICY    RULE      ACTION  WHY\n"
            "baseline  no-cross  deny    less specific: names only the VM, winner names the "
            "program\n");
}

TEST_F(FakeControllerTest, UnimplementedServiceIsAOneLineFailure) {
  Result r = RunAgainstFake({"hosts"});
  EXPECT_EQ(r.exit_code, kExitFailure);
  ExpectOneErrorLine(r);
  EXPECT_THAT(r.err, HasSubstr("shuttlectl: hosts: UNIMPLEMENTED"));
  EXPECT_THAT(r.out, IsEmpty());
}

}  // namespace
}  // namespace shuttle::cli
