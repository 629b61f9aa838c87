// Starting services on demand (DESIGN.md "Dependencies"; agent/broker/on_demand.h): when a
// brokered connect finds nothing listening in a VM, the registered service of that VM whose
// readiness address the connect aims at is started there (if a `depend` rule lets the caller's
// VM depend on it), and the callers wait until it accepts connections.
//
// Life of one start: StartFor() looks the service up (ServiceRegistry::FindServing), decides
// kind `depend` (subject: the caller's VM, program and uid; object: the service's VM and name)
// with the current compiled policy and audits the decision (PolicyDecider::AuditDecision). If
// allowed and the service is not running, a supervisor thread of its own launches it with
// RunInVm (so it runs in its VM under the interception filter, with its output appended to
// <log_dir>/<vm>.<name>.log), then probes the readiness address through the Broker (a connect
// from inside the VM, short deadlines, bounded backoff) until it accepts, the service exits, or
// its start timeout passes (it is then stopped with SIGTERM). Callers that arrive meanwhile wait
// for the same start; each is answered when the service is ready or when its own deadline
// passes (checked between probes; during the launch handshake itself, at most 10 s, callers
// wait for it to end). The supervisor then waits for the service to exit, reaps it and logs its
// status; a later connect may start it again. A running service whose connect was refused anyway is
// probed again (not started twice).
#ifndef SHUTTLE_AGENT_DEPS_SERVICE_STARTER_H_
#define SHUTTLE_AGENT_DEPS_SERVICE_STARTER_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/broker/broker.h"
#include "agent/broker/on_demand.h"
#include "agent/decide/policy_decider.h"
#include "agent/decide/policy_holder.h"
#include "agent/deps/service_registry.h"
#include "agent/intercept/interception.h"
#include "agent/vm/vm_manager.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace shuttle::agent::deps {

struct ServiceStarterOptions {
  std::string launcher_path;  // shuttle-launch.
  // Services' stdout and stderr are appended to <log_dir>/<vm>.<name>.log (created 0700 if
  // absent); empty: /dev/null.
  std::string log_dir;
  // Readiness probes: the first retry after this, doubling up to probe_max.
  absl::Duration probe_min = absl::Milliseconds(5);
  absl::Duration probe_max = absl::Milliseconds(200);
  // Each probe connect gives up after this (a listener with a full backlog may not accept).
  absl::Duration probe_timeout = absl::Seconds(1);
};

// Thread-safe. Collaborators are borrowed and must outlive the starter. Metrics:
// shuttle_agent_service_starts_total{vm,service,result} (result: ready, not_ready (start
// timeout), exited (before ready), failed (could not launch)),
// shuttle_agent_on_demand_total{result} (each StartFor: ok, not_found, denied, deadline,
// failed), shuttle_agent_services_running (service processes alive).
class ServiceStarter final : public broker::OnDemandStarter {
 public:
  ServiceStarter(ServiceStarterOptions options, ServiceRegistry& registry, VmManager& vms,
                 intercept::InterceptionSource& source, broker::Broker& broker,
                 const PolicyHolder& policy, const PolicyDecider& decider,
                 prometheus::Registry& metrics);
  // Stop()s.
  ~ServiceStarter() override;
  ServiceStarter(const ServiceStarter&) = delete;
  ServiceStarter& operator=(const ServiceStarter&) = delete;

  // Fails every caller still waiting with UNAVAILABLE and joins the supervisor threads (at most
  // one readiness probe's time); later StartFor() calls answer UNAVAILABLE at once and never
  // touch the broker, so the broker may be destroyed after this returns. Services keep running
  // (they belong to their VM); a later agent starts them again only once they have exited.
  // Idempotent.
  void Stop();

  // See OnDemandStarter. Reads /proc/PID (the caller's program and uid) and the policy; never
  // waits for a start.
  void StartFor(const std::string& subject_vm, pid_t pid, const std::string& target_vm,
                const broker::BrokerRequest& request, absl::Time deadline, Done done) override;

 private:
  struct Waiter {
    absl::Time deadline;
    Done done;
  };
  using Key = std::pair<std::string, std::string>;  // (vm, service name)
  struct Instance;
  using Finished = std::vector<std::pair<Done, absl::Status>>;

  // Thread of one run of a service: launch, probe, wait for exit.
  void Supervise(std::shared_ptr<Instance> instance, v1::LocalService service,
                 std::thread previous);
  // Probes until ready, exit, stop or `until`; returns true when ready. `pidfd`: the launcher's.
  bool Probe(Instance& instance, const v1::LocalService& service,
             const broker::BrokerTargetPtr& target, int pidfd, absl::Time until);
  // Removes the waiters whose deadline passed (or all, with `status`); collects their answers.
  void ExpireLocked(Instance& instance, absl::Time now, Finished& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailAllLocked(Instance& instance, const absl::Status& status, Finished& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish(const Instance& instance) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Answer(Finished finished);
  void CountStart(const v1::LocalService& service, const char* result);

  const ServiceStarterOptions options_;
  ServiceRegistry& registry_;
  VmManager& vms_;
  intercept::InterceptionSource& source_;
  broker::Broker& broker_;
  const PolicyHolder& policy_;
  const PolicyDecider& decider_;
  prometheus::Family<prometheus::Counter>& starts_;
  prometheus::Family<prometheus::Counter>& outcomes_;
  prometheus::Gauge& running_;

  absl::Mutex mu_;
  std::map<Key, std::shared_ptr<Instance>> instances_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace shuttle::agent::deps

#endif  // SHUTTLE_AGENT_DEPS_SERVICE_STARTER_H_
