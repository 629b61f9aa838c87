#include "agent/decide/policy_decider.h"

#include <errno.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "agent/decide/decide_testing.h"
#include "agent/decide/policy_holder.h"
#include "gtest/gtest.h"
#include "policy/parser.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace shuttle::agent {
namespace {

constexpr char kPolicy[] = R"(name: t
rules:
  - name: deny-web-agent-sock
    subject: { vm: web }
    kind: unix-connect
    object: { path: /run/agent.sock }
    action: deny
  - name: watch-tcp
    subject: { vm: web }
    kind: tcp-connect
    object: { address: "127.0.0.1:9999" }
    action: deny
    audit_only: true
  - name: ask-db
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/db.sock }
    action: ask
    ask: { fail: closed }
)";

std::shared_ptr<const policy::CompiledPolicy> Compile(const char* yaml) {
  auto parsed = policy::ParsePolicyOrStatus(yaml, "t.yaml");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  v1::PolicyBundle bundle;
  bundle.set_version(7);
  *bundle.add_policies() = *parsed;
  auto compiled = policy::CompiledPolicy::Compile(bundle);
  EXPECT_TRUE(compiled.ok()) << compiled.status();
  return *compiled;
}

class PolicyDeciderTest : public ::testing::Test {
 protected:
  PolicyDeciderTest() : decider_(holder_, metrics_) { holder_.Set(Compile(kPolicy)); }

  intercept::Answer Decide(const char* vm, v1::InteractionKind kind, const char* name) {
    return testing::DecideCall(decider_, vm, kind, name);
  }

  std::string Scrape() { return prometheus::TextSerializer().Serialize(metrics_.Collect()); }

  PolicyHolder holder_;
  prometheus::Registry metrics_;
  PolicyDecider decider_;
};

TEST_F(PolicyDeciderTest, DeniedCallFailsWithEacces) {
  intercept::Answer answer = Decide("web", v1::UNIX_CONNECT, "/run/agent.sock");
  EXPECT_EQ(answer.error, EACCES);
  EXPECT_NE(Scrape().find("shuttle_agent_decisions_total{kind=\"unix-connect\",scope=\"intra-vm\","
                          "verdict=\"deny\"} 1"),
            std::string::npos)
      << Scrape();
}

TEST_F(PolicyDeciderTest, UnmatchedCallContinuesAsIntraVm) {
  EXPECT_TRUE(Decide("web", v1::UNIX_CONNECT, "/run/other.sock").is_continue());
  EXPECT_TRUE(Decide("db", v1::UNIX_CONNECT, "/run/agent.sock").is_continue());
  EXPECT_NE(Scrape().find("scope=\"intra-vm\",verdict=\"allow\"} 2"), std::string::npos)
      << Scrape();
}

TEST_F(PolicyDeciderTest, AuditOnlyDenyIsCountedButNotEnforced) {
  EXPECT_TRUE(Decide("web", v1::TCP_CONNECT, "127.0.0.1:9999").is_continue());
  EXPECT_NE(Scrape().find("kind=\"tcp-connect\",scope=\"intra-vm\",verdict=\"deny\"} 1"),
            std::string::npos)
      << Scrape();
}

TEST_F(PolicyDeciderTest, AskWithoutControllerUsesFailMode) {
  EXPECT_EQ(Decide("web", v1::UNIX_CONNECT, "/run/db.sock").error, EACCES);
  EXPECT_NE(Scrape().find("shuttle_agent_fail_mode_decisions_total{reason=\"no_controller\"} 1"),
            std::string::npos)
      << Scrape();
}

TEST_F(PolicyDeciderTest, HostProcessesAreTheHostSubject) {
  // An empty subject VM (the resolver does not know the pid) is the host, never a VM.
  EXPECT_TRUE(Decide("", v1::UNIX_CONNECT, "/run/agent.sock").is_continue());
}

TEST_F(PolicyDeciderTest, SwappedPolicyAppliesToTheNextCall) {
  EXPECT_EQ(Decide("web", v1::UNIX_CONNECT, "/run/agent.sock").error, EACCES);
  holder_.Set(PolicyHolder().Get());  // The empty policy.
  EXPECT_TRUE(Decide("web", v1::UNIX_CONNECT, "/run/agent.sock").is_continue());
}

// With program rules in the policy the decider finds the caller's executable (here: this test's
// own binary, as the call comes from getpid()).
TEST_F(PolicyDeciderTest, ProgramRulesSeeTheCallersExecutable) {
  char self[512];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  ASSERT_GT(n, 0);
  self[n] = '\0';
  std::string yaml = R"(name: programs
rules:
  - name: this-binary
    subject: { vm: web, program: "SELF" }
    kind: unix-connect
    object: { path: /run/mine.sock }
    action: deny
  - name: another-binary
    subject: { vm: web, program: /usr/bin/not-this-one }
    kind: unix-connect
    object: { path: /run/theirs.sock }
    action: deny
)";
  yaml.replace(yaml.find("SELF"), 4, self);
  holder_.Set(Compile(yaml.c_str()));
  EXPECT_EQ(Decide("web", v1::UNIX_CONNECT, "/run/mine.sock").error, EACCES);
  EXPECT_TRUE(Decide("web", v1::UNIX_CONNECT, "/run/theirs.sock").is_continue());
}

TEST_F(PolicyDeciderTest, UidRulesSeeTheCallersEffectiveUid) {
  // The test's own process is the caller: its effective uid must select the rule.
  std::string yaml = R"(name: uids
rules:
  - name: my-uid
    subject: { vm: web, uid: MINE }
    kind: unix-connect
    object: { path: /run/mine.sock }
    action: deny
  - name: other-uid
    subject: { vm: web, uid: OTHER }
    kind: unix-connect
    object: { path: /run/theirs.sock }
    action: deny
)";
  yaml.replace(yaml.find("MINE"), 4, std::to_string(geteuid()));
  yaml.replace(yaml.find("OTHER"), 5, std::to_string(geteuid() + 4242));
  holder_.Set(Compile(yaml.c_str()));
  EXPECT_EQ(Decide("web", v1::UNIX_CONNECT, "/run/mine.sock").error, EACCES);
  EXPECT_TRUE(Decide("web", v1::UNIX_CONNECT, "/run/theirs.sock").is_continue());
}

TEST(DenyErrno, SignalsGetEperm) {
  EXPECT_EQ(DenyErrno(v1::SIGNAL), EPERM);
  EXPECT_EQ(DenyErrno(v1::UNIX_CONNECT), EACCES);
  EXPECT_EQ(DenyErrno(v1::MQ_OPEN), EACCES);
}

}  // namespace
}  // namespace shuttle::agent
