// Starting a program inside a VM the way every agent component must: through shuttle-launch
// (so the program runs under the interception filter), with its seccomp listener served by the
// agent's InterceptionSource and a duplicate deposited with the VM's init (so the program
// survives an agent restart). Used by `shuttlectl run` (local_server.cc), by invocation across
// VMs (agent/invoke) and by services started on demand (agent/deps).
#ifndef SHUTTLE_AGENT_LOCAL_RUN_IN_VM_H_
#define SHUTTLE_AGENT_LOCAL_RUN_IN_VM_H_

#include <sys/types.h>

#include <string>

#include "absl/status/statusor.h"
#include "agent/intercept/interception.h"
#include "agent/intercept/launcher.h"
#include "agent/vm/vm_manager.h"

namespace shuttle::agent {

// Launches `spec` in VM `vm` (spec.init_pid is filled in from the VM manager), hands the
// listener to `source` and a duplicate to the VM's init. On failure nothing is left running
// (the launcher is killed and reaped) and the error names the step. On success the caller owns
// the launcher: it must reap launcher_pid (waitid on launcher_pidfd), whose exit status is the
// program's (128+N when killed by signal N). `launched.listener` is empty on success (the
// source owns it). Thread-safe (collaborators are).
absl::StatusOr<intercept::LaunchedProcess> RunInVm(VmManager& vms,
                                                   intercept::InterceptionSource& source,
                                                   const std::string& vm,
                                                   intercept::LaunchSpec spec);

// Waits for the launcher of `launched` to exit and returns the program's status as a shell
// shows it: the exit code, or 128+N when it was killed by signal N. Blocks; -1 on a waitid error.
int WaitLaunched(const intercept::LaunchedProcess& launched);

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_LOCAL_RUN_IN_VM_H_
