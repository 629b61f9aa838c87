#include "agent/decide/policy_decider.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "agent/broker/injection.h"
#include "driver-shim/abi/shuttle_invoke_abi.h"
#include "google/protobuf/util/time_util.h"
#include "policy/parser.h"

namespace shuttle::agent {
namespace {

constexpr std::string_view kHost = "host";
constexpr size_t kMaxObjectNameForJoin = intercept::kMaxObjectName + 2;

// Indexed by PolicyDecider::FailReason.
constexpr const char* kFailReasonNames[] = {"timeout", "unavailable", "no_controller",
                                            "error",   "overload",    "not_deferrable"};

// Deadline of an Authorize whose rule has none (the parser always fills one in).
constexpr absl::Duration kDefaultAskTimeout = absl::Milliseconds(500);

prometheus::Counter& AskCacheCounter(prometheus::Registry& metrics, const char* result) {
  return prometheus::BuildCounter()
      .Name("shuttle_agent_ask_cache_total")
      .Help("Lookups of the ask cache, by result (hit, miss, expired)")
      .Register(metrics)
      .Add({{"result", result}});
}

// Reads /proc/PID/exe into `buf` (no allocation); empty view if the process is gone.
// The effective uid of `pid` from /proc/PID/status ("Uid: real effective saved fs"); the
// overflow uid 65534 if it can't be read (the process is gone), which no sane rule names.
uint32_t ReadEffectiveUid(pid_t pid) {
  char path[32];
  std::snprintf(path, sizeof(path), "/proc/%d/status", static_cast<int>(pid));
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 65534;
  char buf[2048];
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return 65534;
  buf[n] = '\0';
  const char* line = std::strstr(buf, "\nUid:");
  unsigned real = 0, effective = 0;
  if (line == nullptr || std::sscanf(line + 1, "Uid: %u %u", &real, &effective) != 2) {
    return 65534;
  }
  return effective;
}

std::string_view ReadExe(pid_t pid, char* buf, size_t size) {
  char path[32];
  std::snprintf(path, sizeof(path), "/proc/%d/exe", static_cast<int>(pid));
  ssize_t n = ::readlink(path, buf, size);
  if (n <= 0) return {};
  return std::string_view(buf, static_cast<size_t>(n));
}

// A relative unix socket path made absolute as the policy names paths: the caller's working
// directory (/proc/PID/cwd) joined with `relative`, then ".", ".." and repeated slashes
// resolved lexically (as the kernel would, symlinks aside). Written into `buf` (no
// allocation); an empty view if the caller is gone or the result does not fit.
std::string_view AbsoluteUnixPath(pid_t pid, std::string_view relative, char* buf, size_t size) {
  char link[32];
  std::snprintf(link, sizeof(link), "/proc/%d/cwd", static_cast<int>(pid));
  char joined[PATH_MAX + kMaxObjectNameForJoin];
  ssize_t n = ::readlink(link, joined, PATH_MAX);
  if (n <= 0 || joined[0] != '/' || static_cast<size_t>(n) + 1 + relative.size() > sizeof(joined)) {
    return {};
  }
  size_t len = static_cast<size_t>(n);
  joined[len++] = '/';
  std::memcpy(joined + len, relative.data(), relative.size());
  len += relative.size();
  size_t out = 0;
  for (size_t i = 0; i < len;) {
    while (i < len && joined[i] == '/') ++i;
    size_t end = i;
    while (end < len && joined[end] != '/') ++end;
    const std::string_view part(joined + i, end - i);
    if (part.empty() || part == ".") {
      // Nothing to add.
    } else if (part == "..") {
      while (out > 0 && buf[out - 1] != '/') --out;
      if (out > 0) --out;  // The slash before the dropped component.
    } else {
      if (out + 1 + part.size() > size) return {};
      buf[out++] = '/';
      std::memcpy(buf + out, part.data(), part.size());
      out += part.size();
    }
    i = end;
  }
  if (out == 0) return {};
  return std::string_view(buf, out);
}

// The audited interaction of a decision made in Decide(). The program and uid are filled in
// only if the policy already needed them or `uid` is known (the crossing read the caller's
// credentials); AuditDecision() reads what is missing.
v1::Interaction AuditedInteraction(const intercept::InterceptedCall& call,
                                   const policy::InteractionView& view,
                                   const policy::Verdict& verdict, std::optional<uint32_t> uid) {
  v1::Interaction out;
  out.set_subject_vm(std::string(view.subject_vm));
  out.set_pid(static_cast<uint32_t>(call.pid));
  out.set_kind(view.kind);
  out.set_object_name(std::string(view.object_name));
  // Where the call goes: what the interception knows, else what the deciding rule placed it
  // in (the matcher computed the scope the same way).
  std::string_view object_vm = view.object_vm;
  if (verdict.rule != nullptr && verdict.rule->action == v1::REDIRECT) {
    object_vm = verdict.rule->rule->redirect().vm();
  } else if (object_vm.empty() && verdict.rule != nullptr) {
    object_vm = verdict.rule->object_vm;
  }
  out.set_object_vm(std::string(object_vm));
  if (!view.program.empty()) {
    out.set_program(std::string(view.program));
    out.set_uid(uid.has_value() ? *uid : ReadEffectiveUid(call.pid));
  } else if (uid.has_value()) {
    char exe[PATH_MAX];
    out.set_program(std::string(ReadExe(call.pid, exe, sizeof(exe))));
    out.set_uid(*uid);
  }
  return out;
}

// Where an enforced allow or redirect goes when it leaves the caller's VM or renames the
// object: the redirect's VM and name (each defaulting to the object's), else the object's VM
// (empty: the caller's). nullopt: the caller's own VM under the same name, i.e. continue; that
// is the intra-VM hot path, which must not allocate (an empty optional does not).
std::optional<broker::CrossingTarget> CrossingOf(std::string_view subject_vm,
                                                 std::string_view object_vm,
                                                 std::string_view object_name,
                                                 const v1::RedirectTarget* redirect) {
  std::string_view vm = object_vm;
  std::string_view name = object_name;
  if (redirect != nullptr) {
    if (!redirect->vm().empty()) vm = redirect->vm();
    if (!redirect->name().empty()) name = redirect->name();
  }
  if (vm.empty()) vm = subject_vm;
  if (vm == subject_vm && name == object_name) return std::nullopt;
  broker::CrossingTarget target;
  target.scope = vm == subject_vm      ? v1::INTRA_VM
                 : subject_vm == kHost ? v1::HOST_VM
                 : vm == kHost         ? v1::VM_HOST
                                       : v1::CROSS_VM;
  target.vm = std::string(vm);
  target.name = std::string(name);
  return target;
}

// Puts the controller's answer into the decision the matcher made for the ask rule; `how`
// says where the answer came from, for the audit record.
void ApplyAnswer(const AskAnswer& asked, std::string_view how, v1::Decision* decision) {
  decision->set_verdict(asked.verdict);
  if (asked.verdict == v1::VERDICT_REDIRECT) {
    *decision->mutable_redirect() = asked.redirect;
  } else {
    decision->clear_redirect();
  }
  std::string reason = decision->reason();
  absl::StrAppend(&reason, "; ", absl::string_view(how.data(), how.size()));
  if (!asked.reason.empty()) absl::StrAppend(&reason, ": ", asked.reason);
  decision->set_reason(std::move(reason));
}

}  // namespace

// One intercepted call waiting for an Authorize: what is needed to answer, count and audit it
// once the outcome is known, copied out of the loop's scratch state.
struct PolicyDecider::PendingAsk {
  v1::InteractionKind kind = v1::INTERACTION_KIND_UNSPECIFIED;
  v1::Scope scope = v1::SCOPE_UNSPECIFIED;
  bool enforced = true;
  v1::Verdict fail_verdict = v1::VERDICT_DENY;  // The rule's fail mode's.
  intercept::PendingReplyPtr reply;             // Null: the call did not wait (monitor).
  // The call, for the crossing an allow/redirect answer leads to (set with a crossing only).
  std::optional<broker::CallSnapshot> call;
  v1::Interaction interaction;  // Program and uid filled in (the pid may be gone later).
  v1::Decision decision;        // The matcher's, for the ask rule.
  Steady::time_point start;
};

int DenyErrno(v1::InteractionKind kind) {
  switch (kind) {
    case v1::SIGNAL:
      return EPERM;
    default:
      return EACCES;
  }
}

PolicyDecider::PolicyDecider(const PolicyHolder& holder, prometheus::Registry& metrics)
    : holder_(holder),
      decisions_(prometheus::BuildCounter()
                     .Name("shuttle_agent_decisions_total")
                     .Help("Intercepted interactions decided, by kind, scope and verdict")
                     .Register(metrics)),
      latency_(
          prometheus::BuildHistogram()
              .Name("shuttle_agent_decision_duration_seconds")
              .Help("Time to decide one intercepted interaction locally")
              .Register(metrics)
              .Add({}, prometheus::Histogram::BucketBoundaries{1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6,
                                                               5e-6, 1e-5, 2.5e-5, 1e-4, 1e-3})),
      ask_duration_(
          prometheus::BuildHistogram()
              .Name("shuttle_agent_ask_duration_seconds")
              .Help("Time from sending Authorize to its answer or error")
              .Register(metrics)
              .Add({}, prometheus::Histogram::BucketBoundaries{0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                               0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                                               5})),
      ask_hits_(AskCacheCounter(metrics, "hit")),
      ask_misses_(AskCacheCounter(metrics, "miss")),
      ask_expired_(AskCacheCounter(metrics, "expired")),
      ask_inflight_(prometheus::BuildGauge()
                        .Name("shuttle_agent_ask_inflight")
                        .Help("Authorize calls to the controller in flight")
                        .Register(metrics)
                        .Add({})) {
  auto& fail_mode = prometheus::BuildCounter()
                        .Name("shuttle_agent_fail_mode_decisions_total")
                        .Help(
                            "ask decisions made by the rule's fail mode, by why the "
                            "controller's answer was missing")
                        .Register(metrics);
  for (size_t i = 0; i < fail_mode_.size(); ++i) {
    fail_mode_[i] = &fail_mode.Add({{"reason", kFailReasonNames[i]}});
  }
}

prometheus::Counter& PolicyDecider::DecisionCounter(v1::InteractionKind kind, v1::Scope scope,
                                                    v1::Verdict verdict) {
  size_t index = (static_cast<size_t>(kind) * kScopes + scope) * kVerdicts + verdict;
  std::atomic<prometheus::Counter*>& slot = counters_[index];
  prometheus::Counter* counter = slot.load(std::memory_order_acquire);
  if (counter == nullptr) {
    // Family::Add is thread-safe and returns the same counter for the same labels, so two
    // threads racing here store the same pointer.
    counter = &decisions_.Add({{"kind", std::string(policy::KindName(kind))},
                               {"scope", std::string(policy::ScopeName(scope))},
                               {"verdict", std::string(policy::VerdictName(verdict))}});
    slot.store(counter, std::memory_order_release);
  }
  return *counter;
}

bool PolicyDecider::SubjectMatters(v1::InteractionKind kind) const {
  return holder_.Get()->has_rules_for(kind);
}

intercept::Answer PolicyDecider::Decide(const intercept::InterceptedCall& call) {
  auto start = std::chrono::steady_clock::now();
  std::shared_ptr<const policy::CompiledPolicy> compiled = holder_.Get();

  policy::InteractionView view;
  view.subject_vm = call.subject_vm.empty() ? kHost : call.subject_vm;
  view.kind = call.object->kind;
  view.object_name = call.object->name();
  // The policy names paths absolutely; a relative one (rare) is joined to the caller's cwd.
  char absolute[PATH_MAX];
  if (call.object->relative && view.kind == v1::UNIX_CONNECT) {
    std::string_view path =
        AbsoluteUnixPath(call.pid, view.object_name, absolute, sizeof(absolute));
    if (!path.empty()) view.object_name = path;
  }
  // Invocation across VMs (agent/invoke/): the stand-in's connect to the agent's own socket,
  // bound read-only into every VM, always goes through (the agent decides the invocation
  // itself); a policy's unix-connect rules must neither refuse it nor broker it elsewhere.
  if (view.kind == v1::UNIX_CONNECT && view.object_name == SHUTTLE_INVOKE_SOCKET_PATH) {
    DecisionCounter(view.kind, v1::INTRA_VM, v1::VERDICT_ALLOW).Increment();
    return intercept::Answer::Continue();
  }
  // A signal's object VM: a VM process names only pids of its own PID namespace; a host
  // process's target may live in any VM (a pidfd's number is the target's own namespace's, so
  // only kill/tkill/tgkill targets are looked up). Signals are rare: the lookup is affordable.
  std::optional<std::string> signal_vm;
  if (view.kind == v1::SIGNAL) {
    if (view.subject_vm != kHost) {
      view.object_vm = view.subject_vm;
    } else if (vms_ != nullptr && call.object->target_pid > 0 && call.event != nullptr &&
               call.event->nr != SYS_pidfd_send_signal) {
      signal_vm = vms_->VmOfPid(call.object->target_pid);
      view.object_vm = signal_vm.has_value() ? std::string_view(*signal_vm) : kHost;
    }
  }
  // The executable only matters to program rules, which most policies lack; the readlink (a
  // /proc path walk) was about a tenth of the agent's time per intercepted call.
  char exe[512];
  if (compiled->uses_programs()) view.program = ReadExe(call.pid, exe, sizeof(exe));
  if (compiled->uses_uids()) view.uid = ReadEffectiveUid(call.pid);
  policy::Verdict verdict = compiled->Decide(view);
  if (verdict.NeedsAsk()) return DecideAsk(call, compiled, view, verdict, start);
  return Conclude(call, *compiled, view, verdict, nullptr, start);
}

intercept::Answer PolicyDecider::Conclude(const intercept::InterceptedCall& call,
                                          const policy::CompiledPolicy& compiled,
                                          const policy::InteractionView& view,
                                          const policy::Verdict& verdict, const AskAnswer* asked,
                                          Steady::time_point start) {
  const v1::Verdict effective = asked != nullptr ? asked->verdict : verdict.verdict;
  DecisionCounter(view.kind, verdict.scope, effective).Increment();
  std::optional<uint32_t> audit_uid;
  if (compiled.uses_uids()) audit_uid = view.uid;
  intercept::Answer answer = (verdict.enforced && effective == v1::VERDICT_DENY)
                                 ? intercept::Answer::Fail(DenyErrno(view.kind))
                                 : intercept::Answer::Continue();
  if (crossing_ != nullptr && verdict.enforced && effective != v1::VERDICT_DENY) {
    const std::string_view object_vm = !view.object_vm.empty()   ? view.object_vm
                                       : verdict.rule != nullptr ? verdict.rule->object_vm
                                                                 : std::string_view();
    const v1::RedirectTarget* redirect = nullptr;
    if (effective == v1::VERDICT_REDIRECT) {
      if (asked != nullptr) {
        redirect = &asked->redirect;
      } else if (verdict.rule != nullptr) {
        redirect = &verdict.rule->rule->redirect();
      }
    }
    if (std::optional<broker::CrossingTarget> target =
            CrossingOf(view.subject_vm, object_vm, view.object_name, redirect)) {
      // Read once for both the crossing (it opens as the caller) and the audit record (uid).
      std::optional<broker::Credentials> creds;
      if (absl::StatusOr<broker::Credentials> read = broker::ReadCallerCredentials(call.pid);
          read.ok()) {
        audit_uid = read->uid;
        creds = *std::move(read);
      }
      answer = crossing_->Cross(call, *target, std::move(creds));
    }
  }
  const auto decided = Steady::now();
  latency_.Observe(std::chrono::duration<double>(decided - start).count());
  // Cross-VM, vm-host and host-vm decisions are audited; they are rare next to intra-VM calls,
  // so building the record (and reading /proc for it) here costs little.
  if (audit_ != nullptr && verdict.scope != v1::INTRA_VM) {
    v1::Decision decision = compiled.ToProto(verdict);
    if (asked != nullptr) ApplyAnswer(*asked, "cached", &decision);
    AuditDecision(AuditedInteraction(call, view, verdict, audit_uid), std::move(decision),
                  absl::Now(), absl::FromChrono(decided - start));
  }
  return answer;
}

uint64_t PolicyDecider::Fingerprint(const std::shared_ptr<const policy::CompiledPolicy>& compiled,
                                    const policy::CompiledRule& rule) {
  // Rules are keyed by address, so forget them all when the policy changes. owner_before
  // compares control blocks, which a live weak_ptr keeps from being reused.
  if (fingerprints_of_.owner_before(compiled) || compiled.owner_before(fingerprints_of_)) {
    fingerprints_.clear();
    fingerprints_of_ = compiled;
  }
  auto [it, inserted] = fingerprints_.try_emplace(&rule, 0);
  if (inserted) it->second = AskRuleFingerprint(*rule.policy, *rule.rule);
  return it->second;
}

intercept::Answer PolicyDecider::DecideAsk(
    const intercept::InterceptedCall& call,
    const std::shared_ptr<const policy::CompiledPolicy>& compiled,
    const policy::InteractionView& view, const policy::Verdict& verdict, Steady::time_point start) {
  if (asker_ == nullptr) {
    fail_mode_[static_cast<size_t>(FailReason::kNoController)]->Increment();
    return Conclude(call, *compiled, view, verdict, nullptr, start);
  }
  const policy::CompiledRule& rule = *verdict.rule;
  const AskKey key{view.subject_vm,     view.kind,         view.object_name,
                   rule.policy->name(), rule.rule->name(), Fingerprint(compiled, rule)};
  AskCache::Found found = cache_->Find(key);
  switch (found.lookup) {
    case AskCache::Lookup::kHit:
      ask_hits_.Increment();
      return Conclude(call, *compiled, view, verdict, &found.answer, start);
    case AskCache::Lookup::kMiss:
      ask_misses_.Increment();
      break;
    case AskCache::Lookup::kExpired:
      ask_expired_.Increment();
      break;
  }

  // A miss: rare next to hits, so allocating and reading /proc here is fine.
  auto ask = std::make_unique<PendingAsk>();
  ask->kind = view.kind;
  ask->scope = verdict.scope;
  ask->enforced = verdict.enforced;
  ask->fail_verdict = verdict.verdict;
  ask->start = start;
  ask->interaction =
      AuditedInteraction(call, view, verdict,
                         compiled->uses_uids() ? std::optional<uint32_t>(view.uid) : std::nullopt);
  if (ask->interaction.program().empty()) {
    char exe[PATH_MAX];
    ask->interaction.set_program(std::string(ReadExe(call.pid, exe, sizeof(exe))));
    ask->interaction.set_uid(ReadEffectiveUid(call.pid));
  }
  ask->decision = compiled->ToProto(verdict);
  v1::AuthorizeRequest request;
  *request.mutable_interaction() = ask->interaction;
  request.set_policy(rule.policy->name());
  request.set_rule(rule.rule->name());
  request.set_policy_version(compiled->version());
  const v1::AskParams& params = rule.rule->ask();
  absl::Duration timeout =
      absl::Seconds(params.timeout().seconds()) + absl::Nanoseconds(params.timeout().nanos());
  if (timeout <= absl::ZeroDuration()) timeout = kDefaultAskTimeout;
  const AskLimits limits = AskLimits::FromParams(params);

  if (verdict.enforced) {
    ask->reply = call.Defer();
    if (ask->reply != nullptr && crossing_ != nullptr) ask->call = broker::CallSnapshot::Of(call);
    if (ask->reply == nullptr) {
      // The caller can't wait: the fail mode decides now, and the ask still goes out (unless
      // one is in flight already) so that the answer is cached for the next call.
      AskCache::JoinResult joined = cache_->Join(key, limits, [](const AskOutcome&) {});
      if (joined.joined == AskCache::Joined::kStart) {
        SendAuthorize(std::move(joined.flight), std::move(request), timeout);
      }
      fail_mode_[static_cast<size_t>(FailReason::kNotDeferrable)]->Increment();
      return Conclude(call, *compiled, view, verdict, nullptr, start);
    }
  }
  // Monitor: the call continues now; the outcome is still counted and audited when it comes.
  const bool deferred = ask->reply != nullptr;
  AskCache::JoinResult joined =
      cache_->Join(key, limits, [this, ask = std::move(ask)](const AskOutcome& outcome) mutable {
        FinishAsk(std::move(ask), outcome);
      });
  if (joined.joined == AskCache::Joined::kStart) {
    SendAuthorize(std::move(joined.flight), std::move(request), timeout);
  }
  latency_.Observe(std::chrono::duration<double>(Steady::now() - start).count());
  return deferred ? intercept::Answer::Deferred() : intercept::Answer::Continue();
}

void PolicyDecider::SendAuthorize(AskCache::FlightPtr flight, v1::AuthorizeRequest request,
                                  absl::Duration timeout) {
  ask_inflight_.Increment();
  const Steady::time_point sent = Steady::now();
  asker_->Authorize(
      std::move(request), timeout,
      [this, flight = std::move(flight),
       sent](absl::StatusOr<v1::AuthorizeResponse> result) mutable {
        ask_inflight_.Decrement();
        ask_duration_.Observe(std::chrono::duration<double>(Steady::now() - sent).count());
        cache_->Complete(flight, std::move(result));
      });
}

void PolicyDecider::FinishAsk(std::unique_ptr<PendingAsk> ask, const AskOutcome& outcome) {
  v1::Verdict verdict = ask->fail_verdict;
  switch (outcome.source) {
    case AskOutcome::Source::kController:
      verdict = outcome.answer.verdict;
      ApplyAnswer(outcome.answer, "answered by the controller", &ask->decision);
      break;
    case AskOutcome::Source::kCache:
      verdict = outcome.answer.verdict;
      ApplyAnswer(outcome.answer, outcome.error.ok() ? "cached" : "cached (controller unreachable)",
                  &ask->decision);
      break;
    case AskOutcome::Source::kNone: {
      FailReason reason = FailReason::kError;
      switch (outcome.error.code()) {
        case absl::StatusCode::kDeadlineExceeded:
          reason = FailReason::kTimeout;
          break;
        case absl::StatusCode::kUnavailable:
          reason = FailReason::kUnavailable;
          break;
        case absl::StatusCode::kResourceExhausted:
          reason = FailReason::kOverload;
          break;
        default:
          break;
      }
      fail_mode_[static_cast<size_t>(reason)]->Increment();
      ask->decision.set_reason(absl::StrCat(ask->decision.reason(), "; fail mode decided (",
                                            kFailReasonNames[static_cast<size_t>(reason)],
                                            "): ", outcome.error.message()));
      break;
    }
  }
  const intercept::Answer answer = (ask->enforced && verdict == v1::VERDICT_DENY)
                                       ? intercept::Answer::Fail(DenyErrno(ask->kind))
                                       : intercept::Answer::Continue();
  if (ask->reply != nullptr) {
    std::optional<broker::CrossingTarget> target;
    if (ask->enforced && verdict != v1::VERDICT_DENY && ask->call.has_value()) {
      target = CrossingOf(ask->interaction.subject_vm(), ask->interaction.object_vm(),
                          ask->interaction.object_name(),
                          verdict == v1::VERDICT_REDIRECT ? &ask->decision.redirect() : nullptr);
    }
    if (target.has_value()) {
      crossing_->CrossDeferred(std::move(ask->reply), *std::move(ask->call), *std::move(target));
    } else {
      ask->reply->Finish(answer);
    }
  }
  const auto decided = Steady::now();
  DecisionCounter(ask->kind, ask->scope, verdict).Increment();
  AuditDecision(std::move(ask->interaction), std::move(ask->decision), absl::Now(),
                absl::FromChrono(decided - ask->start));
}

void PolicyDecider::AuditDecision(v1::Interaction interaction, v1::Decision decision,
                                  absl::Time decided_at, absl::Duration latency) const {
  if (audit_ == nullptr || decision.scope() == v1::INTRA_VM) return;
  if (interaction.program().empty() && interaction.pid() != 0) {
    const pid_t pid = static_cast<pid_t>(interaction.pid());
    char exe[PATH_MAX];
    interaction.set_program(std::string(ReadExe(pid, exe, sizeof(exe))));
    interaction.set_uid(ReadEffectiveUid(pid));
  }
  v1::AuditRecord record;
  *record.mutable_time() =
      google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(decided_at));
  *record.mutable_latency() =
      google::protobuf::util::TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(latency));
  *record.mutable_interaction() = std::move(interaction);
  *record.mutable_decision() = std::move(decision);
  audit_->Submit(std::move(record));
}

}  // namespace shuttle::agent
