// After an agent restart: makes every thread that is asleep in a seccomp user-notify wait issue
// its syscall again, so the new agent decides it. This covers the calls no journal can: one the
// dead agent had received (SECCOMP_IOCTL_NOTIF_RECV) but not yet noted when it was killed,
// whose notification id died with it and which would otherwise wait forever.
//
// How: PTRACE_SEIZE + PTRACE_INTERRUPT + PTRACE_DETACH. No signal is sent and the program sees
// nothing; the interrupted wait returns -ERESTARTSYS, and on resuming the kernel restarts the
// syscall, which notifies the (new) listener again.
#ifndef SHUTTLE_AGENT_INTERCEPT_RESTART_RECOVERY_H_
#define SHUTTLE_AGENT_INTERCEPT_RESTART_RECOVERY_H_

#include <sys/types.h>

#include <functional>

namespace shuttle::agent::intercept {

struct RestartRecoveryStats {
  int scanned_threads = 0;
  int restarted = 0;  // Threads interrupted out of a seccomp wait.
  int failed = 0;     // Seen waiting but could not be interrupted (logged).
};

// Scans /proc for threads of processes for which `in_scope(pid)` is true (the agent passes
// "is in one of my VMs") that are waiting in seccomp, and restarts their syscalls. Call it once
// the listeners are being served again. Not thread-safe with itself; bounded by the number of
// threads.
RestartRecoveryStats RestartSeccompWaiters(const std::function<bool(pid_t)>& in_scope);

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_RESTART_RECOVERY_H_
