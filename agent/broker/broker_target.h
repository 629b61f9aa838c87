// Where the broker opens an object: a VM, reached through its init process (the holder of the
// VM's mount, IPC, network, UTS and PID namespaces, see agent/vm/vm_manager.h), or the host,
// reached through the agent's own namespaces.
//
// A target holds a pidfd of the init and nothing else: every operation opens what it needs from
// it at that moment (setns(pidfd, CLONE_NEWNET), /proc/PID/root checked against the pidfd), so a
// target never keeps a dead VM's namespaces or root alive, and a VM that died (or was destroyed
// and re-created under the same name) fails cleanly with UNAVAILABLE instead of reaching a
// recycled pid. Cache one per VM and drop it when the VM is destroyed.
#ifndef SHUTTLE_AGENT_BROKER_BROKER_TARGET_H_
#define SHUTTLE_AGENT_BROKER_BROKER_TARGET_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/intercept/unique_fd.h"

namespace shuttle::agent::broker {

using intercept::UniqueFd;

// Immutable once made; thread-safe (const methods only).
class BrokerTarget {
 public:
  // The name the host target reports.
  static constexpr char kHostName[] = "host";

  // VM `vm_name`, whose init is `init_pid` (agent's PID namespace), through `init_pidfd` (e.g.
  // VmManager::InitPidfd; ownership taken). Checks that the pidfd refers to `init_pid` and that
  // it is alive: INVALID_ARGUMENT for a pidfd of another process, UNAVAILABLE if it is gone.
  static absl::StatusOr<std::shared_ptr<const BrokerTarget>> ForVm(std::string vm_name,
                                                                   pid_t init_pid,
                                                                   UniqueFd init_pidfd);

  // The host: the agent's own network and IPC namespaces and its root. Objects are opened in
  // the namespaces of the thread that created the Broker (the agent's main thread).
  static absl::StatusOr<std::shared_ptr<const BrokerTarget>> Host();

  BrokerTarget(const BrokerTarget&) = delete;
  BrokerTarget& operator=(const BrokerTarget&) = delete;

  const std::string& name() const { return name_; }
  bool is_host() const { return is_host_; }
  pid_t pid() const { return pid_; }
  // The init's pidfd (for setns); owned by the target. -1 for the host.
  int pidfd() const { return pidfd_.get(); }

  // OK while the init lives; UNAVAILABLE naming the VM once it has exited (even if not yet
  // reaped). Always OK for the host.
  absl::Status CheckAlive() const;
  // The UNAVAILABLE error CheckAlive() returns for a gone VM.
  absl::Status GoneError() const;

  // A new O_PATH directory fd (O_CLOEXEC, owned by the caller) of the target's root: the VM
  // init's /proc/PID/root, confirmed to still belong to the init after it was opened (the pid
  // cannot have been recycled in between), or "/" for the host.
  absl::StatusOr<UniqueFd> OpenRoot() const;

 private:
  BrokerTarget(std::string name, bool is_host, pid_t pid, UniqueFd pidfd)
      : name_(std::move(name)), is_host_(is_host), pid_(pid), pidfd_(std::move(pidfd)) {}

  const std::string name_;
  const bool is_host_;
  const pid_t pid_;
  const UniqueFd pidfd_;
};

using BrokerTargetPtr = std::shared_ptr<const BrokerTarget>;

}  // namespace shuttle::agent::broker

#endif  // SHUTTLE_AGENT_BROKER_BROKER_TARGET_H_
