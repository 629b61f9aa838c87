#include "agent/invoke/standins.h"

#include <algorithm>
#include <vector>

#include "agent/invoke/invoke_plan.h"
#include "common/logging.h"
#include "prometheus/family.h"

namespace shuttle::agent::invoke {
namespace {

prometheus::Family<prometheus::Gauge>& StandInFamily(prometheus::Registry& metrics) {
  return prometheus::BuildGauge()
      .Name("shuttle_agent_invoke_mounts")
      .Help(
          "Invocation mounts in the VMs (the socket directory and the stand-ins over placed "
          "programs), by state: active, or pending (wanted but failing; retried)")
      .Register(metrics);
}

// A mount that should be in place: its host source and the rule that wants it ("" for the
// socket directory).
struct Wanted {
  std::string source;
  std::string rule;
};

}  // namespace

StandInManager::StandInManager(StandInOptions options, VmManager& vms, VmMounter& mounter,
                               prometheus::Registry& metrics)
    : options_(std::move(options)),
      vms_(vms),
      mounter_(mounter),
      active_(StandInFamily(metrics).Add({{"state", "active"}})),
      pending_(StandInFamily(metrics).Add({{"state", "pending"}})) {}

StandInManager::~StandInManager() { Stop(); }

void StandInManager::OnPolicy(std::shared_ptr<const policy::CompiledPolicy> compiled) {
  absl::MutexLock lock(&mu_);
  policy_ = std::move(compiled);
  dirty_ = true;
}

void StandInManager::Start() {
  thread_ = std::thread([this] { Run(); });
}

void StandInManager::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void StandInManager::Run() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || dirty_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), options_.poll_interval);
      if (stop_) return;
      dirty_ = false;
    }
    ReconcileNow();
  }
}

size_t StandInManager::ReconcileNow() {
  std::shared_ptr<const policy::CompiledPolicy> compiled;
  {
    absl::MutexLock lock(&mu_);
    compiled = policy_;
  }
  std::vector<std::string> vm_names;
  absl::flat_hash_map<std::string, pid_t> inits;
  for (const VmInfo& vm : vms_.List()) {
    vm_names.push_back(vm.name);
    inits[vm.name] = vm.init_pid;
  }

  absl::MutexLock lock(&reconcile_mu_);
  // What is wanted now.
  absl::flat_hash_map<Key, Wanted> wanted;
  for (const std::string& vm : vm_names) wanted[{vm, kVmSocketDir}] = {options_.socket_dir, ""};
  if (compiled != nullptr) {
    for (const Placement& p : PlanPlacements(*compiled, vm_names)) {
      wanted[{p.caller_vm, p.program}] = {options_.stand_in_binary, p.rule};
    }
  }
  // Remove what is no longer wanted (a VM that is gone took its mounts with it).
  for (auto it = mounts_.begin(); it != mounts_.end();) {
    auto next = std::next(it);
    const auto& [key, mount] = *it;
    if (!wanted.contains(key)) {
      auto vm = inits.find(key.first);
      if (mount.bound && vm != inits.end() && vm->second == mount.vm_init) {
        absl::Status removed = mounter_.Unbind(key.first, key.second);
        if (!removed.ok()) {
          SHUTTLE_LOG(WARNING) << "invoke: VM " << key.first << ": removing the stand-in over "
                               << key.second << ": " << removed;
        } else {
          SHUTTLE_LOG(INFO) << "invoke: VM " << key.first << ": stand-in over " << key.second
                            << " removed (no rule places it any more)";
        }
      }
      mounts_.erase(it);
    }
    it = next;
  }
  // Make what is missing (and retry what failed).
  size_t active = 0;
  size_t pending = 0;
  for (auto& [key, want] : wanted) {
    Mount& mount = mounts_[key];
    const pid_t init = inits[key.first];
    if (mount.bound && mount.source == want.source && mount.vm_init == init) {
      ++active;
      continue;
    }
    mount.source = want.source;
    mount.rule = want.rule;
    BindSpec spec{kHostVm, want.source, key.first, key.second, /*read_only=*/true};
    absl::Status bound = mounter_.Bind(spec);
    mount.bound = bound.ok();
    mount.vm_init = init;
    if (bound.ok()) {
      ++active;
      mount.last_error.clear();
      if (!want.rule.empty()) {
        SHUTTLE_LOG(INFO) << "invoke: VM " << key.first << ": " << key.second
                          << " now runs in another VM (rule " << want.rule << ")";
      }
      continue;
    }
    ++pending;
    std::string error(bound.message());
    if (error != mount.last_error) {
      SHUTTLE_LOG(WARNING) << "invoke: VM " << key.first << ": binding " << want.source << " at "
                           << key.second << " failed (retried): " << bound;
      mount.last_error = std::move(error);
    }
  }
  active_.Set(static_cast<double>(active));
  pending_.Set(static_cast<double>(pending));
  return pending;
}

}  // namespace shuttle::agent::invoke
