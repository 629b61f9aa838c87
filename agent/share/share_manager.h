// Keeps the bind mounts of FIFOs and POSIX shm files that the policy shares (share_plan.h) in
// step with the policy and the VMs: on its own thread it applies missing binds, removes the ones
// no longer wanted, retries those whose source does not exist yet (with backoff), and remembers
// what it mounted in a state file so that a restarted agent removes what a changed policy no
// longer wants.
#ifndef SHUTTLE_AGENT_SHARE_SHARE_MANAGER_H_
#define SHUTTLE_AGENT_SHARE_SHARE_MANAGER_H_

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/share/share_plan.h"
#include "agent/vm/vm_mounts.h"
#include "common/clock.h"
#include "policy/matcher.h"

namespace shuttle::agent::share {

// The two mount operations the manager needs (VmMounter in production, a fake in tests).
class ShareMounter {
 public:
  virtual ~ShareMounter() = default;
  // Binds spec's source, which must be what `kind` opens (a FIFO for FIFO_OPEN, a regular file
  // for SHM_OPEN): FAILED_PRECONDITION otherwise, so that a rule can't expose other files.
  virtual absl::Status Bind(const BindSpec& spec, v1::InteractionKind kind) = 0;
  virtual absl::Status Unbind(const std::string& vm, const std::string& path) = 0;
};

// Adapts a VmMounter (borrowed; must outlive this). Thread-safe.
class VmShareMounter final : public ShareMounter {
 public:
  explicit VmShareMounter(VmMounter& mounter) : mounter_(mounter) {}
  // Opens the source (OpenInVm, O_PATH), checks its type on that descriptor and binds it
  // (BindFd): no window between the check and the mount.
  absl::Status Bind(const BindSpec& spec, v1::InteractionKind kind) override;
  absl::Status Unbind(const std::string& vm, const std::string& path) override {
    return mounter_.Unbind(vm, path);
  }

 private:
  VmMounter& mounter_;
};

struct ShareManagerOptions {
  // How often the thread looks for new VMs and checks every share (a source that changed, a
  // retry that is due); a policy change wakes it at once.
  absl::Duration poll_interval = absl::Seconds(2);
  // Retry of a share whose source is missing or whose bind failed: doubling up to the maximum.
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Seconds(30);
  // Where the shares that are mounted are listed (one "VM<TAB>PATH" per line), so that the next
  // agent can remove those its policy no longer wants. Empty: not kept.
  std::string state_file;
};

// Thread-safe. Mounts happen only on the manager's thread (Start) or in ReconcileOnce.
class ShareManager {
 public:
  // Lists the names of the VMs that exist.
  using VmLister = std::function<std::vector<std::string>()>;

  // `mounter`, `clock` and `metrics` are borrowed and must outlive the manager. Registers
  // shuttle_agent_shares{state}, shuttle_agent_share_changes_total{op} and
  // shuttle_agent_share_rules_skipped{reason}. Reads the state file (a missing one is empty).
  ShareManager(ShareMounter& mounter, VmLister list_vms, Clock& clock,
               prometheus::Registry& metrics, ShareManagerOptions options = {});
  // Stops the thread; leaves the mounts in place (VMs outlive the agent).
  ~ShareManager();
  ShareManager(const ShareManager&) = delete;
  ShareManager& operator=(const ShareManager&) = delete;

  // The policy to follow from now on. Returns at once (a PolicyHolder observer): the thread
  // does the work.
  void OnPolicy(std::shared_ptr<const policy::CompiledPolicy> policy);

  // Starts the thread (once).
  void Start();
  // Stops and joins the thread. Idempotent.
  void Stop();

  // One pass: plan from the latest policy and VMs, remove, apply, retry what is due, update
  // metrics and the state file. Called by the thread; tests call it directly (with a FakeClock)
  // instead of Start(). Not concurrently with itself.
  void ReconcileOnce();

  enum class State { kActive, kPending, kFailed };
  struct ShareStatus {
    BindSpec bind;
    std::string rule;
    State state = State::kPending;
    std::string last_error;
  };
  // Every share the manager currently tracks (wanted, or mounted and awaiting removal).
  std::vector<ShareStatus> Shares() const;

 private:
  struct Entry {
    BindSpec bind;
    v1::InteractionKind kind = v1::INTERACTION_KIND_UNSPECIFIED;
    std::string rule;  // Empty for a share read from the state file and not (yet) wanted.
    State state = State::kPending;
    bool mounted = false;  // Bind succeeded and no Unbind since.
    bool wanted = false;
    absl::Time next_attempt = absl::InfinitePast();
    absl::Duration backoff = absl::ZeroDuration();
    std::string last_error;
  };
  using Key = std::pair<std::string, std::string>;  // (target VM, target path)

  void Loop();
  void Apply(Entry& entry, absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(entries_mu_);
  void Retry(Entry& entry, absl::Time now, State state, const absl::Status& error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(entries_mu_);
  void LogSkipped(const std::vector<SkippedRule>& skipped)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(entries_mu_);
  void LoadState() ABSL_EXCLUSIVE_LOCKS_REQUIRED(entries_mu_);
  void SaveState() ABSL_EXCLUSIVE_LOCKS_REQUIRED(entries_mu_);
  void UpdateMetrics(const SharePlan& plan) ABSL_EXCLUSIVE_LOCKS_REQUIRED(entries_mu_);

  ShareMounter& mounter_;
  const VmLister list_vms_;
  Clock& clock_;
  const ShareManagerOptions options_;

  prometheus::Family<prometheus::Gauge>& shares_family_;
  prometheus::Gauge& active_gauge_;
  prometheus::Gauge& pending_gauge_;
  prometheus::Gauge& failed_gauge_;
  prometheus::Family<prometheus::Counter>& changes_family_;
  prometheus::Counter& applied_;
  prometheus::Counter& removed_;
  prometheus::Family<prometheus::Gauge>& skipped_family_;

  // Guards what OnPolicy and Stop hand the thread; never held across a mount.
  mutable absl::Mutex mu_;
  std::shared_ptr<const policy::CompiledPolicy> policy_ ABSL_GUARDED_BY(mu_);
  bool dirty_ ABSL_GUARDED_BY(mu_) = false;  // A policy arrived since the last pass.
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool WakeLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || dirty_; }

  // Held by ReconcileOnce for a whole pass (mounts included), and by Shares().
  mutable absl::Mutex entries_mu_;
  std::map<Key, Entry> entries_ ABSL_GUARDED_BY(entries_mu_);
  std::set<std::pair<std::string, std::string>> logged_skips_ ABSL_GUARDED_BY(entries_mu_);
  std::string saved_state_ ABSL_GUARDED_BY(entries_mu_);  // What the state file holds.

  std::thread thread_;
};

}  // namespace shuttle::agent::share

#endif  // SHUTTLE_AGENT_SHARE_SHARE_MANAGER_H_
