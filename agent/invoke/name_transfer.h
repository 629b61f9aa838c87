// Resource name transfer (issue 5): when an invocation across VMs hands a program file names
// (arguments, values of passed environment variables) that exist in the caller's VM A, each one
// the policy lets through is made visible in the target VM B under a fresh path, and the name
// is replaced by that path. Only what was named becomes visible: the name is resolved once
// inside A's root (VmMounter::OpenInVm: `..` and symlinks can't leave it), the descriptor it
// resolved to is what gets bound (BindFd: a rename racing with the check changes nothing), and
// only regular files and directories are handed over (never a socket, FIFO or device: those
// would open channels the policy decides elsewhere; never the VM's root directory, which would
// be all of it). The binds go when the invocation ends.
#ifndef SHUTTLE_AGENT_INVOKE_NAME_TRANSFER_H_
#define SHUTTLE_AGENT_INVOKE_NAME_TRANSFER_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/vm/vm_mounts.h"

namespace shuttle::agent::invoke {

// `value` made absolute against `cwd` (absolute) and lexically normalised ("." and empty
// components dropped, ".." kept: OpenInVm resolves it inside the VM's root). nullopt for an
// empty value or one with a NUL, or longer than PATH_MAX. Pure.
std::optional<std::string> AbsoluteName(const std::string& cwd, const std::string& value);

// The last component of an absolute path, as the name of the bound copy ("root" for "/",
// and for "..", which names a directory whose own name is not known here). Pure.
std::string LeafName(const std::string& absolute);

// One name handed over.
struct Transferred {
  std::string caller_path;  // Absolute, in the caller's VM.
  std::string target_path;  // Where the target VM sees it.
  bool writable = false;
};

// The binds of one invocation. Not thread-safe (one invocation's worker uses it); the
// destructor removes every bind it made.
class NameTransfer {
 public:
  // `mounter` is borrowed. The bound names go under `target_dir` in `target_vm` (a fresh
  // directory per invocation, e.g. /run/shuttle-xfer/ID).
  NameTransfer(VmMounter& mounter, std::string caller_vm, std::string target_vm,
               std::string target_dir);
  ~NameTransfer();
  NameTransfer(const NameTransfer&) = delete;
  NameTransfer& operator=(const NameTransfer&) = delete;

  // Resolves `value` (relative to `cwd`) in the caller's VM. nullopt when it names no regular
  // file or directory there (the value stays as it is).
  std::optional<std::string> Resolve(const std::string& cwd, const std::string& value) const;

  // Binds the caller's `caller_path` (as Resolve returned it; resolved again, and bound from
  // that descriptor) into the target VM at TARGET_DIR/INDEX/LEAF (`index` keeps names with the
  // same leaf apart), read-only unless `writable`. Returns what was bound; errors name the path
  // and the step.
  absl::StatusOr<Transferred> Bind(const std::string& caller_path, int index, bool writable);

  const std::vector<Transferred>& transferred() const { return transferred_; }

 private:
  // An O_PATH descriptor of `absolute` in the caller's VM if it is a regular file or directory.
  absl::StatusOr<int> OpenEligible(const std::string& absolute) const;

  VmMounter& mounter_;
  const std::string caller_vm_;
  const std::string target_vm_;
  const std::string target_dir_;
  std::vector<Transferred> transferred_;
};

}  // namespace shuttle::agent::invoke

#endif  // SHUTTLE_AGENT_INVOKE_NAME_TRANSFER_H_
