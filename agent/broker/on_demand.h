// The broker's hook for application dependencies (DESIGN.md "Dependencies"): when a brokered
// connect finds nothing listening in the target VM, a registered service of that VM that would
// serve it may be started on demand (if a `depend` rule lets the caller's VM depend on it), and
// the connect is tried once more when the service is ready. agent/deps implements it; the
// crossing code (agent/broker/crossing.h) calls it.
#ifndef SHUTTLE_AGENT_BROKER_ON_DEMAND_H_
#define SHUTTLE_AGENT_BROKER_ON_DEMAND_H_

#include <sys/types.h>

#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "agent/broker/broker.h"

namespace shuttle::agent::broker {

class OnDemandStarter {
 public:
  using Done = absl::AnyInvocable<void(absl::Status) &&>;
  virtual ~OnDemandStarter() = default;

  // Called after Broker::Open of `request` in `target_vm` (a VM, or "host") for a caller in
  // `subject_vm` (thread `pid`) failed because nothing listens there (ECONNREFUSED, or ENOENT
  // for a unix socket path). Never blocks; calls `done` exactly once, later, from any thread:
  //  - OK: a service registered for `target_vm` whose readiness address is the request's object
  //    is running and ready (it was started now, or was already starting): retry the open once;
  //  - NOT_FOUND: no registered service serves that object (the open's own error stands);
  //  - PERMISSION_DENIED: one does, but no `depend` rule lets `subject_vm` depend on it;
  //  - DEADLINE_EXCEEDED: started but not ready by `deadline`; any other: it failed to start.
  // Thread-safe. Every outcome is counted and the `depend` decision audited by the implementer.
  virtual void StartFor(const std::string& subject_vm, pid_t pid, const std::string& target_vm,
                        const BrokerRequest& request, absl::Time deadline, Done done) = 0;
};

}  // namespace shuttle::agent::broker

#endif  // SHUTTLE_AGENT_BROKER_ON_DEMAND_H_
