#include "agent/decide/policy_decider.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "policy/parser.h"

namespace shuttle::agent {
namespace {

constexpr std::string_view kHost = "host";

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

}  // namespace

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
      fail_mode_(prometheus::BuildCounter()
                     .Name("shuttle_agent_fail_mode_decisions_total")
                     .Help("ask decisions made by the rule's fail mode (controller not asked)")
                     .Register(metrics)
                     .Add({})) {}

prometheus::Counter& PolicyDecider::DecisionCounter(v1::InteractionKind kind, v1::Scope scope,
                                                    v1::Verdict verdict) {
  size_t index = (static_cast<size_t>(kind) * kScopes + scope) * kVerdicts + verdict;
  prometheus::Counter*& slot = counters_[index];
  if (slot == nullptr) {
    slot = &decisions_.Add({{"kind", std::string(policy::KindName(kind))},
                            {"scope", std::string(policy::ScopeName(scope))},
                            {"verdict", std::string(policy::VerdictName(verdict))}});
  }
  return *slot;
}

intercept::Answer PolicyDecider::Decide(const intercept::InterceptedCall& call) {
  auto start = std::chrono::steady_clock::now();
  std::shared_ptr<const policy::CompiledPolicy> compiled = holder_.Get();

  policy::InteractionView view;
  view.subject_vm = call.subject_vm.empty() ? kHost : call.subject_vm;
  view.kind = call.object->kind;
  view.object_name = call.object->name();
  // The executable only matters to program rules, which most policies lack; the readlink (a
  // /proc path walk) was about a tenth of the agent's time per intercepted call.
  char exe[512];
  if (compiled->uses_programs()) view.program = ReadExe(call.pid, exe, sizeof(exe));
  if (compiled->uses_uids()) view.uid = ReadEffectiveUid(call.pid);
  policy::Verdict verdict = compiled->Decide(view);

  // No controller to ask until issue 4: for an `ask` winner the matcher's verdict is already
  // what the rule's fail mode decides (closed by default).
  if (verdict.NeedsAsk()) fail_mode_.Increment();
  const v1::Verdict effective = verdict.verdict;
  DecisionCounter(view.kind, verdict.scope, effective).Increment();
  intercept::Answer answer = (verdict.enforced && effective == v1::VERDICT_DENY)
                                 ? intercept::Answer::Fail(DenyErrno(view.kind))
                                 : intercept::Answer::Continue();
  latency_.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return answer;
}

}  // namespace shuttle::agent
