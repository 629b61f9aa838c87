#include "cli/commands.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "cli/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "shuttle/v1/answers.grpc.pb.h"
#include "shuttle/v1/audit.grpc.pb.h"
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

// One audit record with every column set.
v1::AuditRecord CannedRecord() {
  v1::AuditRecord r;
  r.set_id("web-1/b/1");
  r.mutable_time()->set_seconds(1714564800);
  r.set_host_id("web-1");
  v1::Interaction* i = r.mutable_interaction();
  i->set_subject_vm("web");
  i->set_pid(4242);
  i->set_program("/usr/bin/psql");
  i->set_kind(v1::UNIX_CONNECT);
  i->set_object_vm("db");
  i->set_object_name("/run/db.sock");
  v1::Decision* d = r.mutable_decision();
  d->set_verdict(v1::VERDICT_DENY);
  d->set_enforced(true);
  d->set_policy("webapp");
  d->set_rule("ask-db");
  d->set_policy_version(7);
  r.mutable_latency()->set_nanos(35'000);
  return r;
}

// An AuditService with one canned record. Follow sends it, then waits for the client to cancel.
class FakeAuditService final : public v1::AuditService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Query(grpc::CallbackServerContext* ctx,
                                  const v1::QueryAuditRequest* request,
                                  v1::QueryAuditResponse* response) override {
    last_query = *request;
    *response->add_records() = CannedRecord();
    response->set_next_page_token("more");
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerWriteReactor<v1::AuditRecord>* Follow(grpc::CallbackServerContext*,
                                                    const v1::FollowAuditRequest*) override {
    return new Streamer(&follow_sent);
  }

  v1::QueryAuditRequest last_query;
  absl::Notification follow_sent;  // The followed record went out.

 private:
  class Streamer final : public grpc::ServerWriteReactor<v1::AuditRecord> {
   public:
    explicit Streamer(absl::Notification* sent) : sent_(sent), record_(CannedRecord()) {
      StartWrite(&record_);
    }
    void OnWriteDone(bool) override { sent_->Notify(); }
    void OnCancel() override { Finish(grpc::Status::CANCELLED); }
    void OnDone() override { delete this; }

   private:
    absl::Notification* sent_;
    v1::AuditRecord record_;
  };
};

// An AnswerService that keeps the last Put and answers with canned answers.
class FakeAnswerService final : public v1::AnswerService::Service {
 public:
  grpc::Status Put(grpc::ServerContext*, const v1::PutAnswerRequest* request,
                   v1::PutAnswerResponse* response) override {
    last_put = *request;
    *response->mutable_answer() = request->answer();
    response->mutable_answer()->set_id("ans-1");
    response->mutable_answer()->set_author("admin");
    return grpc::Status::OK;
  }
  grpc::Status List(grpc::ServerContext*, const v1::ListAnswersRequest*,
                    v1::ListAnswersResponse* response) override {
    v1::StandingAnswer* a = response->add_answers();
    a->set_id("ans-1");
    a->set_subject_vm("web");
    a->set_kind(v1::UNIX_CONNECT);
    a->set_object_vm("*");
    a->set_object("/run/*");
    a->set_verdict(v1::VERDICT_ALLOW);
    a->mutable_ttl()->set_seconds(120);
    a->set_note("INC-1");
    a->set_author("admin");
    a->mutable_created()->set_seconds(1714564800);
    return grpc::Status::OK;
  }
  grpc::Status Delete(grpc::ServerContext*, const v1::DeleteAnswerRequest* request,
                      v1::DeleteAnswerResponse* response) override {
    if (request->id() != "ans-1") {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          "standing answer \"" + request->id() + "\" not found");
    }
    response->mutable_answer()->set_id("ans-1");
    return grpc::Status::OK;
  }

  v1::PutAnswerRequest last_put;
};

class FakeControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    builder.RegisterService(&audit_);
    builder.RegisterService(&answers_);
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
  FakeAuditService audit_;
  FakeAnswerService answers_;
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

TEST_F(FakeControllerTest, AuditPrintsEveryColumnAndSendsTheFilter) {
  Result r =
      RunAgainstFake({"audit", "--vm", "web", "--host", "web-1", "--since", "2024-05-01T12:00:00Z",
                      "--verdict", "deny", "--kind", "unix-connect", "--limit", "5"});
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "TIME                  HOST   VM   PID   PROGRAM        KIND          OBJECT           "
            "VERDICT  ENFORCED  RULE           VERSION  LATENCY\n"
            "2024-05-01T12:00:00Z  web-1  web  4242  /usr/bin/psql  unix-connect  db:/run/db.sock  "
            "deny     yes       webapp/ask-db  7        35us\n"
            "(more records: narrow the query with --since or raise --limit)\n");
  const v1::QueryAuditRequest& q = audit_.last_query;
  EXPECT_EQ(q.filter().vm(), "web");
  EXPECT_EQ(q.filter().host_id(), "web-1");
  EXPECT_EQ(q.filter().since().seconds(), 1714564800);
  EXPECT_EQ(q.filter().verdict(), v1::VERDICT_DENY);
  EXPECT_EQ(q.filter().kind(), v1::UNIX_CONNECT);
  EXPECT_EQ(q.limit(), 5u);

  Result json = RunAgainstFake({"audit", "-o", "json"});
  EXPECT_EQ(json.exit_code, kExitOk) << json.err;
  EXPECT_THAT(json.out, HasSubstr("\"nextPageToken\": \"more\""));
  EXPECT_EQ(audit_.last_query.limit(), 100u);
}

TEST_F(FakeControllerTest, FollowPrintsUntilInterruptedThenExitsZero) {
  std::thread interrupter([this] {
    // The handler is installed before the call starts, so once the server has sent a record
    // Ctrl-C is caught.
    if (audit_.follow_sent.WaitForNotificationWithTimeout(absl::Seconds(30))) raise(SIGINT);
  });
  Result r = RunAgainstFake({"audit", "--follow"});
  interrupter.join();
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_THAT(r.err, IsEmpty());
  EXPECT_THAT(r.out, StartsWith("TIME  HOST  VM  PID  PROGRAM  KIND  OBJECT  VERDICT  ENFORCED  "
                                "RULE  VERSION  LATENCY\n"));
  // After the interrupt SIGINT has its old meaning again.
  struct sigaction current {};
  ASSERT_EQ(sigaction(SIGINT, nullptr, &current), 0);
  EXPECT_EQ(current.sa_handler, SIG_DFL);
}

TEST_F(FakeControllerTest, AnswerSetSendsTheAnswer) {
  Result r = RunAgainstFake({"answer", "set", "--vm", "web", "--kind", "unix-connect", "--object",
                             "/run/*", "--object-vm", "db", "--verdict", "allow", "--ttl", "2m",
                             "--expires", "2030-01-01T00:00:00Z", "--note", "INC-1"});
  EXPECT_EQ(r.exit_code, kExitOk) << r.err;
  EXPECT_EQ(r.out,
            "added answer ans-1: web unix-connect db:/run/* -> allow (ttl 2m, expires "
            "2030-01-01T00:00:00Z)\n");
  const v1::StandingAnswer& a = answers_.last_put.answer();
  EXPECT_EQ(a.id(), "");
  EXPECT_EQ(a.subject_vm(), "web");
  EXPECT_EQ(a.kind(), v1::UNIX_CONNECT);
  EXPECT_EQ(a.object_vm(), "db");
  EXPECT_EQ(a.object(), "/run/*");
  EXPECT_EQ(a.verdict(), v1::VERDICT_ALLOW);
  EXPECT_EQ(a.ttl().seconds(), 120);
  EXPECT_EQ(a.expires().seconds(), 1893456000);
  EXPECT_EQ(a.note(), "INC-1");

  Result redirect = RunAgainstFake({"answer", "set", "--vm", "web", "--kind", "signal", "--object",
                                    "1", "--verdict", "redirect"});
  EXPECT_EQ(redirect.exit_code, kExitFailure);
  ExpectOneErrorLine(redirect);
  EXPECT_THAT(redirect.err, HasSubstr("answer set: --verdict must be allow or deny"));
  EXPECT_EQ(answers_.last_put.answer().kind(), v1::UNIX_CONNECT);  // Nothing was sent.
}

TEST_F(FakeControllerTest, AnswerListAndRemove) {
  Result ls = RunAgainstFake({"answer", "ls"});
  EXPECT_EQ(ls.exit_code, kExitOk) << ls.err;
  EXPECT_EQ(ls.out,
            "ID     VM   KIND          OBJECT    VERDICT  TTL  EXPIRES  AUTHOR  CREATED          "
            "     NOTE\n"
            "ans-1  web  unix-connect  *:/run/*  allow    2m   never    admin   "
            "2024-05-01T12:00:00Z  INC-1\n");
  Result json = RunAgainstFake({"answer", "ls", "-o", "json"});
  EXPECT_THAT(json.out, HasSubstr("\"verdict\": \"VERDICT_ALLOW\""));
  Result rm = RunAgainstFake({"answer", "rm", "ans-1"});
  EXPECT_EQ(rm.exit_code, kExitOk) << rm.err;
  EXPECT_EQ(rm.out, "removed answer ans-1\n");
  Result missing = RunAgainstFake({"answer", "rm", "nope"});
  EXPECT_EQ(missing.exit_code, kExitFailure);
  ExpectOneErrorLine(missing);
  EXPECT_THAT(missing.err, HasSubstr("answer rm: NOT_FOUND: standing answer \"nope\" not found"));
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
