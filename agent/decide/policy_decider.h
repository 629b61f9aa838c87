// The agent's Decider (agent/intercept/interception.h): applies the current compiled policy to
// each intercepted call, counts it (shuttle_agent_decisions_total{kind,scope,verdict} and a
// latency histogram) and turns the verdict into an answer for the kernel.
//
// What each verdict does: deny -> the call fails with an errno that says so (EACCES; EPERM for
// signals); allow and redirect whose target is the caller's own VM under the same name ->
// continue (the intra-VM hot path: no allocation); allow and redirect that go to another VM,
// the host, or another name -> the crossing (set_crossing(), agent/broker/crossing.h), which
// opens the object in the target and hands the caller the descriptor; without a crossing
// (tests) -> continue, which reaches the object of that name in the caller's own VM. A
// not-enforced decision (monitor mode, audit_only) -> continue, whatever its verdict.
// Signals: a VM process names only pids of its own VM, so its signals' object VM is its own;
// a host process's target is looked up (set_vm_resolver()) so host-vm rules decide it.
//
// `ask` (EnableAsk(); docs/architecture.md, "Life of an ask"): the answer comes from the
// AskCache if it holds one for (subject VM, kind, object, asking rule); otherwise the call is
// deferred (InterceptedCall::Defer(); the loop goes on serving others), one Authorize per key
// goes to the controller (Asker) with the rule's timeout as deadline, and its answer finishes
// every call waiting for it (deny -> errno, allow/redirect -> continue) and is cached. When no
// answer comes (timeout, no connection, an error, too many asks in flight, or no controller at
// all: a standalone agent) the rule's fail mode decides, counted in
// shuttle_agent_fail_mode_decisions_total{reason}. A not-enforced ask rule (monitor) asks too,
// but its call continues at once. A call that can't be deferred (a part of a multi-part
// sendmmsg) is decided by the fail mode on a miss, and the ask still goes out so that the
// answer is cached for the next call. shuttle_agent_decisions_total counts the final verdict
// (for a deferred call, when its answer arrives).
// The caller's executable (/proc/PID/exe) is read only when the policy has program rules, or
// when a decision is audited (every decision whose scope is not intra-vm, given an AuditSink).
#ifndef SHUTTLE_AGENT_DECIDE_POLICY_DECIDER_H_
#define SHUTTLE_AGENT_DECIDE_POLICY_DECIDER_H_

#include <array>
#include <atomic>

#include <chrono>
#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "agent/audit/audit_sink.h"
#include "agent/broker/crossing.h"
#include "agent/decide/ask_cache.h"
#include "agent/decide/ask_client.h"
#include "agent/decide/policy_holder.h"
#include "agent/intercept/interception.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace shuttle::agent {

// The errno a denied call of `kind` fails with.
int DenyErrno(v1::InteractionKind kind);

// Decide() is called only from the notification loop thread (Decider contract); the answers
// of asks complete on the asker's threads, which touch only thread-safe parts (metrics, the
// cache, the audit sink, the pending replies).
class PolicyDecider final : public intercept::Decider {
 public:
  // `holder` is borrowed and must outlive the decider; families go into `metrics`.
  PolicyDecider(const PolicyHolder& holder, prometheus::Registry& metrics);

  intercept::Answer Decide(const intercept::InterceptedCall& call) override;
  // Whether the current policy has any rule of `kind` (CompiledPolicy::has_rules_for).
  bool SubjectMatters(v1::InteractionKind kind) const override;

  // Sends `ask` rules to the controller through `asker`, with answers cached in `cache` (both
  // borrowed). Without it (a standalone agent) every ask is decided by its rule's fail mode
  // (reason "no_controller"). Call before the notification loop runs. Both must outlive the
  // decider, and the asker must have completed every call (GrpcAsker::Shutdown()) before the
  // decider or the cache is destroyed.
  void EnableAsk(Asker& asker, AskCache& cache) {
    asker_ = &asker;
    cache_ = &cache;
  }

  // Where audit records go (agent/audit/spool.h); borrowed, may be null (no auditing). Set it
  // before the notification loop runs; the sink must outlive every Decide()/AuditDecision().
  void set_audit_sink(AuditSink* sink) { audit_ = sink; }

  // Where enforced allow/redirect verdicts that leave the caller's VM (or rename the object)
  // go, including `ask` answers that arrive later; borrowed, may be null (continue instead).
  // Set it before the notification loop runs; it must outlive the decider's calls.
  void set_crossing(broker::Crossing* crossing) { crossing_ = crossing; }

  // Resolves the VM of a host process's signal target (object VM of a `signal`); borrowed, may
  // be null (the object VM stays unknown). Set before the loop runs.
  void set_vm_resolver(const intercept::VmResolver* vms) { vms_ = vms; }

  // Hands the audit record of one decision to the sink: Decide() calls it for the decisions it
  // makes, and the `ask` path calls it when a deferred answer completes. No-op without a sink
  // or when decision.scope() is INTRA_VM (those are not audited). `interaction` is what the
  // caller knows (subject_vm, pid, kind, object_vm, object_name; subject_vm "host" for host
  // processes); if its program is empty, program and uid are read from /proc/PID (the
  // subject is still waiting in its syscall, so the pid is its own). `decided_at` is when the
  // verdict was reached (wall clock), `latency` the time from interception to verdict (for an
  // `ask`, including the controller's answer). Thread-safe; never blocks (Submit() does not).
  void AuditDecision(v1::Interaction interaction, v1::Decision decision, absl::Time decided_at,
                     absl::Duration latency) const;

 private:
  static constexpr int kKinds = v1::InteractionKind_ARRAYSIZE;
  static constexpr int kScopes = v1::Scope_ARRAYSIZE;
  static constexpr int kVerdicts = v1::Verdict_ARRAYSIZE;
  using Steady = std::chrono::steady_clock;
  // Why a rule's fail mode decided an ask (the `reason` label).
  enum class FailReason : uint8_t {
    kTimeout,        // DEADLINE_EXCEEDED: no answer within the rule's timeout.
    kUnavailable,    // UNAVAILABLE: no connection to the controller.
    kNoController,   // A standalone agent: nobody to ask.
    kError,          // The controller answered with an error or without a verdict.
    kOverload,       // Too many asks in flight (AskCacheOptions::max_inflight).
    kNotDeferrable,  // The call could not wait (a part of a multi-part sendmmsg).
    kCount,
  };
  struct PendingAsk;

  prometheus::Counter& DecisionCounter(v1::InteractionKind kind, v1::Scope scope,
                                       v1::Verdict verdict);
  // Counts, answers and audits a decision made now; `asked` is the controller's cached answer
  // (null: the matcher's verdict, which for an ask rule is its fail mode's).
  intercept::Answer Conclude(const intercept::InterceptedCall& call,
                             const policy::CompiledPolicy& compiled,
                             const policy::InteractionView& view, const policy::Verdict& verdict,
                             const AskAnswer* asked, Steady::time_point start);
  intercept::Answer DecideAsk(const intercept::InterceptedCall& call,
                              const std::shared_ptr<const policy::CompiledPolicy>& compiled,
                              const policy::InteractionView& view, const policy::Verdict& verdict,
                              Steady::time_point start);
  // Sends the Authorize of a new flight; its completion completes the flight in the cache.
  void SendAuthorize(AskCache::FlightPtr flight, v1::AuthorizeRequest request,
                     absl::Duration timeout);
  // Any thread: the outcome of the Authorize that `ask` waited for.
  void FinishAsk(std::unique_ptr<PendingAsk> ask, const AskOutcome& outcome);
  uint64_t Fingerprint(const std::shared_ptr<const policy::CompiledPolicy>& compiled,
                       const policy::CompiledRule& rule);

  const PolicyHolder& holder_;
  prometheus::Family<prometheus::Counter>& decisions_;
  prometheus::Histogram& latency_;
  std::array<prometheus::Counter*, static_cast<size_t>(FailReason::kCount)> fail_mode_{};
  prometheus::Histogram& ask_duration_;
  prometheus::Counter& ask_hits_;
  prometheus::Counter& ask_misses_;
  prometheus::Counter& ask_expired_;
  prometheus::Gauge& ask_inflight_;
  AuditSink* audit_ = nullptr;                  // Not owned.
  broker::Crossing* crossing_ = nullptr;        // Not owned; null: continue.
  const intercept::VmResolver* vms_ = nullptr;  // Not owned.
  Asker* asker_ = nullptr;                      // Not owned; null: no controller.
  AskCache* cache_ = nullptr;                   // Not owned; set with asker_.
  // Counters resolved on first use, so the hot path does no label lookup; atomic because asks
  // complete on other threads (a relaxed load costs what a plain one does).
  std::array<std::atomic<prometheus::Counter*>, kKinds * kScopes * kVerdicts> counters_{};
  // Fingerprints of the ask rules of one compiled policy (loop thread only).
  std::weak_ptr<const policy::CompiledPolicy> fingerprints_of_;
  absl::flat_hash_map<const policy::CompiledRule*, uint64_t> fingerprints_;
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_DECIDE_POLICY_DECIDER_H_
