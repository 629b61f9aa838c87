// The agent's Decider (agent/intercept/interception.h): applies the current compiled policy to
// each intercepted call, counts it (shuttle_agent_decisions_total{kind,scope,verdict} and a
// latency histogram) and turns the verdict into an answer for the kernel.
//
// What each verdict does today (issue 3): deny -> the call fails with an errno that says so
// (EACCES; EPERM for signals); allow and redirect -> continue, which reaches the object of that
// name in the caller's own VM (the kernel's isolation still holds; brokering the descriptor from
// the target VM is issue 5); a not-enforced decision (monitor mode, audit_only) -> continue.
// `ask` has no controller to ask yet (issue 4), so its rule's fail mode decides.
// The caller's executable (/proc/PID/exe) is read only when the policy has program rules.
#ifndef SHUTTLE_AGENT_DECIDE_POLICY_DECIDER_H_
#define SHUTTLE_AGENT_DECIDE_POLICY_DECIDER_H_

#include <array>
#include <atomic>

#include "agent/decide/policy_holder.h"
#include "agent/intercept/interception.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace shuttle::agent {

// The errno a denied call of `kind` fails with.
int DenyErrno(v1::InteractionKind kind);

// Called only from the notification loop thread (Decider contract); metrics are thread-safe.
class PolicyDecider final : public intercept::Decider {
 public:
  // `holder` is borrowed and must outlive the decider; families go into `metrics`.
  PolicyDecider(const PolicyHolder& holder, prometheus::Registry& metrics);

  intercept::Answer Decide(const intercept::InterceptedCall& call) override;

 private:
  static constexpr int kKinds = v1::InteractionKind_ARRAYSIZE;
  static constexpr int kScopes = v1::Scope_ARRAYSIZE;
  static constexpr int kVerdicts = v1::Verdict_ARRAYSIZE;
  prometheus::Counter& DecisionCounter(v1::InteractionKind kind, v1::Scope scope,
                                       v1::Verdict verdict);

  const PolicyHolder& holder_;
  prometheus::Family<prometheus::Counter>& decisions_;
  prometheus::Histogram& latency_;
  prometheus::Counter& fail_mode_;
  // Counters resolved on first use, so the hot path does no label lookup.
  std::array<prometheus::Counter*, kKinds * kScopes * kVerdicts> counters_{};
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_DECIDE_POLICY_DECIDER_H_
