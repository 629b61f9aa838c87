// Mounts that make one file or directory of one VM (or of the host) visible in another VM, at
// a path of that VM's choosing: the static sharing of the broker (a FIFO node or a POSIX shm
// file shared by the policy, DESIGN.md "Broker"), the agent's own per-VM directory
// (/run/shuttle inside a VM: the invocation socket), the stand-in of a program that a rule
// places in another VM, and the files whose names an invocation hands over (name transfer).
//
// Safety: a source path is resolved inside its VM's root (openat2 RESOLVE_IN_ROOT |
// RESOLVE_NO_MAGICLINKS from the VM init's root), so `..` and symlinks cannot reach outside
// it; BindFd takes a descriptor the caller already resolved (no race between the check and the
// mount). A target path is created inside the target VM's root the same way (missing parents as
// directories 0755, the mount point as an empty file or directory matching the source). The
// mount happens in the target VM's mount namespace only (which is rprivate), never on the host.
//
// Mechanics: a short-lived single-threaded child process (a multi-threaded agent can't setns()
// into a mount namespace) enters the source VM's mount namespace, clones the source as a
// detached mount (open_tree OPEN_TREE_CLONE), makes it read-only if asked (mount_setattr),
// enters the target VM's mount namespace and attaches it (move_mount). Errors name the VM, the
// path, the step and the errno.
#ifndef SHUTTLE_AGENT_VM_VM_MOUNTS_H_
#define SHUTTLE_AGENT_VM_VM_MOUNTS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/vm/vm_manager.h"

namespace shuttle::agent {

// The VM name that means the host in the specs below.
inline constexpr char kHostVm[] = "host";

struct BindSpec {
  std::string source_vm;    // A VM, or kHostVm.
  std::string source_path;  // Absolute, as seen in source_vm.
  std::string target_vm;    // A VM (never the host: the host's mount table is not touched).
  std::string target_path;  // Absolute, as seen in target_vm.
  bool read_only = true;
};

// Thread-safe; Bind, BindFd and Unbind are serialised (so that two calls on one mount point
// cannot interleave) and each forks one or two children and waits for them (tens of
// milliseconds at most): never call on the notification loop.
class VmMounter {
 public:
  // `vms` is borrowed and must outlive the mounter.
  explicit VmMounter(VmManager& vms) : vms_(vms) {}

  // Binds spec.source_path of spec.source_vm onto spec.target_path in spec.target_vm. If the
  // same source is already mounted there with the same read-only flag, returns OK without a
  // second mount (idempotent); if something else is mounted there, it is replaced.
  // NOT_FOUND: the source does not exist (or a VM does not); PERMISSION_DENIED: the path would
  // leave its VM's root; FAILED_PRECONDITION: e.g. a directory where a file is needed.
  absl::Status Bind(const BindSpec& spec);

  // Binds what `source_fd` refers to (an O_PATH or regular descriptor opened in `source_vm`'s
  // namespace, e.g. through OpenInVm; not owned) onto `target_path` in `target_vm`.
  absl::Status BindFd(const std::string& source_vm, int source_fd, const std::string& target_vm,
                      const std::string& target_path, bool read_only);

  // Unmounts what is mounted on `target_path` in `target_vm` (lazily: MNT_DETACH, so open files
  // keep working) and removes the mount point if Bind created it (an empty file or directory
  // that Bind marked with the xattr trusted.shuttle.mount-point, so this holds across agent
  // restarts; on a file system without xattrs the empty mount point stays).
  // OK if nothing is mounted there (idempotent); NOT_FOUND only for an unknown VM.
  // INVALID_ARGUMENT for the host, "/" or a path with "..".
  absl::Status Unbind(const std::string& target_vm, const std::string& target_path);

  // Opens `path` as seen in `vm` (or kHostVm), resolved inside its root with `..` and symlinks
  // unable to leave it, with `flags` (O_PATH, O_RDONLY, ... ; O_CLOEXEC is added). Returns the
  // descriptor (owned by the caller). Does not fork (openat2 from /proc/INIT/root).
  absl::StatusOr<int> OpenInVm(const std::string& vm, const std::string& path, int flags);

 private:
  VmManager& vms_;
  absl::Mutex mu_;  // Held while a mount point is checked, created, mounted or unmounted.
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_VM_VM_MOUNTS_H_
