// Tests of the decider's audit hook: every decision that is not intra-VM becomes one audit
// record with the interaction, the decision and its latency; intra-VM calls are not audited.
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "agent/audit/audit_testing.h"
#include "agent/decide/decide_testing.h"
#include "agent/decide/policy_decider.h"
#include "agent/decide/policy_holder.h"
#include "gtest/gtest.h"
#include "policy/parser.h"
#include "prometheus/registry.h"

namespace shuttle::agent {
namespace {

constexpr char kPolicy[] = R"(name: a
rules:
  - name: web-to-db
    subject: { vm: web }
    kind: unix-connect
    object: { vm: db, path: /run/db.sock }
    action: allow
  - name: web-to-host
    subject: { vm: web }
    kind: tcp-connect
    object: { vm: host, address: "127.0.0.1:8080" }
    action: deny
  - name: to-cache
    subject: { vm: web }
    kind: unix-connect
    object: { path: /run/cache.sock }
    action: redirect
    redirect: { vm: cache }
  - name: host-to-db
    subject: { vm: host }
    kind: unix-connect
    object: { vm: db, path: /run/db-admin.sock }
    action: allow
  - name: own-socket
    subject: { vm: web }
    kind: unix-connect
    object: { path: /run/own.sock }
    action: deny
)";

std::string SelfExe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf));
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

class DeciderAuditTest : public ::testing::Test {
 protected:
  DeciderAuditTest() : decider_(holder_, metrics_) {
    auto parsed = policy::ParsePolicyOrStatus(kPolicy, "a.yaml");
    EXPECT_TRUE(parsed.ok()) << parsed.status();
    v1::PolicyBundle bundle;
    bundle.set_version(12);
    *bundle.add_policies() = *parsed;
    auto compiled = policy::CompiledPolicy::Compile(bundle);
    EXPECT_TRUE(compiled.ok()) << compiled.status();
    holder_.Set(*compiled);
    decider_.set_audit_sink(&sink_);
  }

  intercept::Answer Decide(const char* vm, v1::InteractionKind kind, const char* name) {
    return testing::DecideCall(decider_, vm, kind, name);
  }

  PolicyHolder holder_;
  prometheus::Registry metrics_;
  testing::RecordingSink sink_;  // The real sink is the spool.
  PolicyDecider decider_;
};

TEST_F(DeciderAuditTest, CrossVmDecisionBecomesOneCompleteRecord) {
  const absl::Time before = absl::Now();
  EXPECT_TRUE(Decide("web", v1::UNIX_CONNECT, "/run/db.sock").is_continue());
  std::vector<v1::AuditRecord> records = sink_.records();
  ASSERT_EQ(records.size(), 1u);
  const v1::AuditRecord& r = records[0];
  EXPECT_EQ(r.id(), "");  // The sink assigns ids.
  EXPECT_GE(r.time().seconds(), absl::ToUnixSeconds(before));
  EXPECT_LE(r.time().seconds(), absl::ToUnixSeconds(absl::Now()));
  EXPECT_GE(r.latency().seconds(), 0);
  EXPECT_LT(r.latency().seconds(), 10);
  const v1::Interaction& i = r.interaction();
  EXPECT_EQ(i.subject_vm(), "web");
  EXPECT_EQ(i.pid(), static_cast<uint32_t>(::getpid()));
  // The policy has no program or uid rules: they are read for the audit record only.
  EXPECT_EQ(i.program(), SelfExe());
  EXPECT_EQ(i.uid(), ::geteuid());
  EXPECT_EQ(i.kind(), v1::UNIX_CONNECT);
  EXPECT_EQ(i.object_vm(), "db");
  EXPECT_EQ(i.object_name(), "/run/db.sock");
  const v1::Decision& d = r.decision();
  EXPECT_EQ(d.verdict(), v1::VERDICT_ALLOW);
  EXPECT_EQ(d.scope(), v1::CROSS_VM);
  EXPECT_EQ(d.policy(), "a");
  EXPECT_EQ(d.rule(), "web-to-db");
  EXPECT_EQ(d.policy_version(), 12u);
  EXPECT_TRUE(d.enforced());
  EXPECT_FALSE(d.reason().empty());
}

TEST_F(DeciderAuditTest, VmHostRedirectAndHostSubjectsAreAudited) {
  EXPECT_FALSE(Decide("web", v1::TCP_CONNECT, "127.0.0.1:8080").is_continue());
  Decide("web", v1::UNIX_CONNECT, "/run/cache.sock");
  Decide("", v1::UNIX_CONNECT, "/run/db-admin.sock");  // Unknown VM: the host.
  Decide("", v1::UNIX_CONNECT, "/run/anything.sock");  // The host's own object: intra.
  std::vector<v1::AuditRecord> records = sink_.records();
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].decision().scope(), v1::VM_HOST);
  EXPECT_EQ(records[0].decision().verdict(), v1::VERDICT_DENY);
  EXPECT_EQ(records[0].interaction().object_vm(), "host");
  EXPECT_EQ(records[1].decision().scope(), v1::CROSS_VM);
  EXPECT_EQ(records[1].decision().verdict(), v1::VERDICT_REDIRECT);
  EXPECT_EQ(records[1].decision().redirect().vm(), "cache");
  EXPECT_EQ(records[1].interaction().object_vm(), "cache");
  EXPECT_EQ(records[2].decision().scope(), v1::HOST_VM);
  EXPECT_EQ(records[2].interaction().subject_vm(), "host");
  EXPECT_EQ(records[2].interaction().object_vm(), "db");
}

TEST_F(DeciderAuditTest, IntraVmDecisionsAreNotAudited) {
  EXPECT_FALSE(Decide("web", v1::UNIX_CONNECT, "/run/own.sock").is_continue());   // A rule.
  EXPECT_TRUE(Decide("web", v1::UNIX_CONNECT, "/run/other.sock").is_continue());  // Default.
  EXPECT_TRUE(sink_.records().empty());
}

TEST_F(DeciderAuditTest, AuditDecisionKeepsWhatTheCallerKnowsAndSkipsIntraVm) {
  v1::Interaction interaction;
  interaction.set_subject_vm("web");
  interaction.set_pid(static_cast<uint32_t>(::getpid()));
  interaction.set_program("/usr/bin/psql");
  interaction.set_uid(1000);
  interaction.set_kind(v1::UNIX_CONNECT);
  interaction.set_object_vm("db");
  interaction.set_object_name("/run/db.sock");
  v1::Decision decision;
  decision.set_verdict(v1::VERDICT_ALLOW);
  decision.set_scope(v1::CROSS_VM);
  decision.set_rule("ask-db");
  const absl::Time at = absl::FromUnixSeconds(1'700'000'123) + absl::Milliseconds(5);
  decider_.AuditDecision(interaction, decision, at, absl::Milliseconds(42));
  decision.set_scope(v1::INTRA_VM);
  decider_.AuditDecision(interaction, decision, at, absl::Milliseconds(1));

  std::vector<v1::AuditRecord> records = sink_.records();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].interaction().program(), "/usr/bin/psql");
  EXPECT_EQ(records[0].interaction().uid(), 1000u);
  EXPECT_EQ(records[0].decision().rule(), "ask-db");
  EXPECT_EQ(records[0].time().seconds(), 1'700'000'123);
  EXPECT_EQ(records[0].time().nanos(), 5'000'000);
  EXPECT_EQ(records[0].latency().nanos(), 42'000'000);
}

TEST_F(DeciderAuditTest, NoSinkNoRecords) {
  decider_.set_audit_sink(nullptr);
  Decide("web", v1::UNIX_CONNECT, "/run/db.sock");
  EXPECT_TRUE(sink_.records().empty());
}

}  // namespace
}  // namespace shuttle::agent
