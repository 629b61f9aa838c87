// The agent's VM manager: creates, lists, re-adopts and destroys the host's OS-level VMs. A VM
// is a set of kernel namespaces (mount, IPC, network with its loopback up, UTS named after the VM,
// PID) held by a small per-VM init (driver-shim/linux/vm_init.c, pid 1 of the VM); its root is
// an overlay of the host root with a per-VM upper dir, with private /tmp, /run, /dev, /dev/shm.
//
// Inside a VM: / is overlay(lower = the host root file system, upper = state_dir/NAME/upper), so
// other host mounts (/proc, /sys, /dev, /boot, ...) are not seen through it; /proc is the VM's
// own, /sys a fresh read-only sysfs of the VM's network namespace, /dev a small tmpfs with the
// usual character devices, a new devpts instance, a private /dev/shm and the VM's own mqueue fs
// (the host's /dev is not bound in: that would let a VM create FIFOs every VM and the host see).
// All of it lives only in the VM's mount namespace, which is rprivate, so the host's mount table
// never changes, and killing the init (pid 1 of the VM's PID namespace) releases everything.
#ifndef SHUTTLE_AGENT_VM_VM_MANAGER_H_
#define SHUTTLE_AGENT_VM_VM_MANAGER_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace shuttle::agent {

// Inode numbers of a VM's namespaces: st_ino of /proc/INIT/ns/{mnt,net,ipc,uts,pid}.
struct VmNamespaces {
  uint64_t mnt = 0;
  uint64_t net = 0;
  uint64_t ipc = 0;
  uint64_t uts = 0;
  uint64_t pid = 0;
  friend bool operator==(const VmNamespaces&, const VmNamespaces&) = default;
};

struct VmInfo {
  std::string name;
  pid_t init_pid = 0;  // In the agent's (the host's) PID namespace.
  VmNamespaces ns;
  std::string upper_dir;  // Where the VM's writes to its root land (on the host).
  absl::Time created;
};

struct VmManagerOptions {
  // Per-VM directories live here: NAME/{upper,work,merged,state,init.log}. Created if absent.
  // Inside every VM this directory is hidden under an empty read-only tmpfs. Must be an absolute
  // path without ',', ':' or whitespace (it becomes part of the overlay mount options).
  std::string state_dir;
  // Path to the shuttle-vm-init binary.
  std::string init_binary;
  // More host directories to cover inside every VM with an empty read-only tmpfs, e.g. the
  // agent's whole data dir (absolute paths, at most 8; ones a VM cannot see anyway, such as
  // those under /tmp or /run, are skipped).
  std::vector<std::string> hidden_paths;
  // How long Create waits for the init to build the VM, and Destroy for it to die.
  absl::Duration setup_timeout = absl::Seconds(20);
  absl::Duration destroy_timeout = absl::Seconds(20);
};

// Thread-safe. One VmManager per state_dir at a time (Open locks it against other managers in
// this and other processes). VMs outlive the manager, and a manager opened later (in this or
// another process) re-adopts them: it never needs to be the inits' parent (it reaps an init only
// when it happens to be its parent). Errors name the VM, the path and the errno.
class VmManager {
 public:
  // Creates state_dir if needed, locks it, and scans it: a VM whose init is alive (same pid,
  // same start time, same namespaces as recorded) is adopted; the remains of any other (a dead
  // init, a half-created VM) are removed and logged.
  static absl::StatusOr<std::unique_ptr<VmManager>> Open(VmManagerOptions options);

  // Leaves every VM running.
  ~VmManager();
  VmManager(const VmManager&) = delete;
  VmManager& operator=(const VmManager&) = delete;

  // Creates and starts VM `name` ([a-z0-9][a-z0-9-]{0,30}, not "host"). INVALID_ARGUMENT for a
  // bad name, ALREADY_EXISTS if present (or being created); on any failure nothing is left.
  absl::StatusOr<VmInfo> Create(const std::string& name);

  // Kills the VM's init (and with it every process of its PID namespace, plus any process that
  // joined only some of its namespaces), waits for it through a pidfd (bounded by
  // destroy_timeout), and removes its directories. NOT_FOUND if absent.
  absl::Status Destroy(const std::string& name);

  // Every VM, sorted by name.
  std::vector<VmInfo> List() const;

  // `callback` runs after each Create or Destroy that changed the set of VMs, on the thread
  // that made the change, with no lock held (it may call List()). Replaces any earlier one.
  void set_on_change(std::function<void()> callback);
  absl::StatusOr<VmInfo> Get(const std::string& name) const;

  // The VM `pid` belongs to, decided by the kernel: the inodes of /proc/PID/ns/{mnt,pid}
  // looked up among the VMs'. A process that shares a VM's mount namespace belongs to that VM
  // even if it has not (yet) joined its PID namespace, and vice versa. nullopt: the host (or
  // the process is gone). Two stat()s and a hash lookup under a reader lock.
  std::optional<std::string> VmOfPid(pid_t pid) const;

  // Hands VM `name`'s init a duplicate of `fd` (a seccomp listener) to keep until the fd
  // reports POLLHUP, so that a restarted agent can take it back (ReclaimFds). Waits for the
  // init's acknowledgement (bounded). Does not take ownership of `fd`. RESOURCE_EXHAUSTED when
  // the init already holds its maximum (4096).
  absl::Status DepositFd(const std::string& name, int fd);

  // New descriptors (O_CLOEXEC, owned by the caller) for every seccomp listener the init holds
  // ("anon_inode:seccomp notify" in /proc/INIT/fd), taken with pidfd_getfd.
  absl::StatusOr<std::vector<int>> ReclaimFds(const std::string& name);

  // A new pidfd (O_CLOEXEC) for the VM's init, e.g. for setns(); owned by the caller.
  absl::StatusOr<int> InitPidfd(const std::string& name) const;

 private:
  struct Vm;

  VmManager(VmManagerOptions options, int lock_fd);
  absl::Status Adopt();
  absl::StatusOr<std::shared_ptr<Vm>> Find(const std::string& name) const;
  absl::StatusOr<std::shared_ptr<Vm>> Start(const std::string& name);
  void IndexLocked(const Vm& vm) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnindexLocked(const Vm& vm) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string VmDir(const std::string& name) const;

  const VmManagerOptions options_;
  const int lock_fd_;  // Holds a POSIX write lock on state_dir/.lock while this manager lives.

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Vm>> vms_ ABSL_GUARDED_BY(mu_);
  // Names being created or destroyed: no second Create/Destroy may start meanwhile.
  absl::flat_hash_set<std::string> busy_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::string> by_mnt_ns_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::string> by_pid_ns_ ABSL_GUARDED_BY(mu_);
  std::function<void()> on_change_ ABSL_GUARDED_BY(mu_);
};

// Whether `name` is a valid VM name; the error says why not.
absl::Status ValidateVmName(const std::string& name);

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_VM_VM_MANAGER_H_
