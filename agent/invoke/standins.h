// Keeps the mounts that make invocation across VMs work in step with the policy and the VMs:
// in every VM, the agent's invocation socket directory at /run/shuttle (read-only), and over
// each program the policy places in another VM (invoke_plan.h PlanPlacements), the stand-in
// binary shuttle-invoke (read-only), so that running the program under its normal path, by any
// caller, reaches the agent. Mounts are made and removed on the manager's own thread, after a
// policy change (PolicyHolder observer) and on a periodic look at the VMs (new VMs get theirs,
// failed mounts are retried).
#ifndef SHUTTLE_AGENT_INVOKE_STANDINS_H_
#define SHUTTLE_AGENT_INVOKE_STANDINS_H_

#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/vm/vm_manager.h"
#include "agent/vm/vm_mounts.h"
#include "policy/matcher.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

namespace shuttle::agent::invoke {

// Where the invocation socket lives inside every VM (driver-shim/abi/shuttle_invoke_abi.h says
// the same to the stand-in).
inline constexpr char kVmSocketDir[] = "/run/shuttle";

struct StandInOptions {
  std::string stand_in_binary;  // Host path of shuttle-invoke.
  std::string socket_dir;       // Host directory holding invoke.sock, bound at /run/shuttle.
  absl::Duration poll_interval = absl::Seconds(2);  // Look at the VMs this often.
};

// Thread-safe. Start() once; Stop() (or the destructor) joins the thread and leaves the mounts
// in place (the VMs outlive the agent; a restarted agent takes them over: Bind is idempotent).
class StandInManager {
 public:
  // `vms`, `mounter` and `metrics` are borrowed and must outlive the manager.
  StandInManager(StandInOptions options, VmManager& vms, VmMounter& mounter,
                 prometheus::Registry& metrics);
  ~StandInManager();
  StandInManager(const StandInManager&) = delete;
  StandInManager& operator=(const StandInManager&) = delete;

  // The PolicyHolder observer: records the snapshot and wakes the thread; returns at once.
  void OnPolicy(std::shared_ptr<const policy::CompiledPolicy> compiled);

  void Start();
  void Stop();

  // Brings the mounts in line with the current policy and VMs now, on the calling thread
  // (tests; the thread does the same). Returns the number of wanted mounts not in place.
  size_t ReconcileNow();

 private:
  struct Mount {
    std::string source;  // Host path.
    bool bound = false;
    pid_t vm_init = 0;  // The VM's init when bound: a VM re-created under the same name differs.
    std::string rule;   // The placing rule, for logs ("" for the socket directory).
    std::string last_error;  // Logged once per distinct error.
  };
  using Key = std::pair<std::string, std::string>;  // (VM, path in the VM).

  void Run();

  const StandInOptions options_;
  VmManager& vms_;
  VmMounter& mounter_;
  prometheus::Gauge& active_;
  prometheus::Gauge& pending_;

  absl::Mutex mu_;
  std::shared_ptr<const policy::CompiledPolicy> policy_ ABSL_GUARDED_BY(mu_);
  bool dirty_ ABSL_GUARDED_BY(mu_) = true;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex reconcile_mu_;  // One reconciliation at a time.
  absl::flat_hash_map<Key, Mount> mounts_ ABSL_GUARDED_BY(reconcile_mu_);

  std::thread thread_;
};

}  // namespace shuttle::agent::invoke

#endif  // SHUTTLE_AGENT_INVOKE_STANDINS_H_
