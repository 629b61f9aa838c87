#include "agent/local/run_in_vm.h"

#include <signal.h>
#include <sys/wait.h>

#include <cerrno>
#include <utility>

#include "common/logging.h"

namespace shuttle::agent {

absl::StatusOr<intercept::LaunchedProcess> RunInVm(VmManager& vms,
                                                   intercept::InterceptionSource& source,
                                                   const std::string& vm,
                                                   intercept::LaunchSpec spec) {
  absl::StatusOr<VmInfo> info = vms.Get(vm);
  if (!info.ok()) return info.status();
  spec.init_pid = info->init_pid;
  absl::StatusOr<intercept::LaunchedProcess> launched = intercept::StartLaunch(spec);
  if (!launched.ok()) return launched.status();

  // The VM's init keeps a duplicate so a restarted agent can take the listener back.
  absl::Status deposited = vms.DepositFd(vm, launched->listener.get());
  if (!deposited.ok()) {
    SHUTTLE_LOG(WARNING) << "vm " << vm << ": could not deposit listener with init (" << deposited
                         << "); the process will not survive an agent restart";
  }
  absl::Status added = source.Add(std::move(launched->listener), vm);
  if (!added.ok()) {
    // Nobody would answer its calls: do not let it run unserved.
    ::kill(launched->launcher_pid, SIGKILL);
    siginfo_t reaped{};
    ::waitid(static_cast<idtype_t>(P_PIDFD), launched->launcher_pidfd.get(), &reaped, WEXITED);
    return added;
  }
  return launched;
}

int WaitLaunched(const intercept::LaunchedProcess& launched) {
  siginfo_t info{};
  while (::waitid(static_cast<idtype_t>(P_PIDFD), launched.launcher_pidfd.get(), &info, WEXITED) !=
         0) {
    if (errno != EINTR) return -1;
  }
  return info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
}

}  // namespace shuttle::agent
