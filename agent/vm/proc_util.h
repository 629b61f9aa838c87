// Small Linux process helpers for the VM manager: pidfds, /proc/PID/stat start times, namespace
// inodes, waiting for a process to die without sleeping, and removing a directory tree without
// following symlinks or crossing mounts. Internal to agent/vm; every function is thread-safe.
#ifndef SHUTTLE_AGENT_VM_PROC_UTIL_H_
#define SHUTTLE_AGENT_VM_PROC_UTIL_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "agent/vm/vm_manager.h"

namespace shuttle::agent::vm_internal {

// absl::ErrnoToStatus with the message "what: strerror(err)".
absl::Status ErrnoError(int err, absl::string_view what);

// A pidfd (O_CLOEXEC by kernel default) for `pid`; NOT_FOUND if there is no such process.
absl::StatusOr<int> PidfdOpen(pid_t pid);
// NOT_FOUND if the process is gone.
absl::Status PidfdSendSignal(int pidfd, int sig);
// A copy of the process's fd `target_fd` in this process (O_CLOEXEC); NOT_FOUND if that fd
// is not open.
absl::StatusOr<int> PidfdGetfd(int pidfd, int target_fd);
// True once the process has exited (pidfd readable) within `timeout`; never sleeps blindly.
bool WaitPidfdExit(int pidfd, absl::Duration timeout);
// Reaps the process if it is our child and has exited; otherwise does nothing.
void ReapIfChild(int pidfd);

// Field 22 (starttime) of /proc/PID/stat.
absl::StatusOr<uint64_t> ReadStartTime(pid_t pid);
// st_ino of /proc/PID/ns/KIND (mnt, net, ipc, uts, pid).
absl::StatusOr<uint64_t> NsInode(pid_t pid, const char* kind);
absl::StatusOr<VmNamespaces> ReadNamespaces(pid_t pid);

// Every process (thread-group leader) listed in /proc.
std::vector<pid_t> ListPids();

// Removes `path` and everything below it; OK if it does not exist. Never follows symlinks and
// refuses to descend into another file system (a mount on the host under a VM dir is a bug).
absl::Status RemoveTree(const std::string& path);

}  // namespace shuttle::agent::vm_internal

#endif  // SHUTTLE_AGENT_VM_PROC_UTIL_H_
