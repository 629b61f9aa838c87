// The agent's side of driver-shim/linux/launch.c: starts `shuttle-launch` with the caller's
// stdio and one end of a control socket, and runs the handshake that hands the agent the
// launched process's seccomp listener:
//   launcher child -> HELLO (+ SCM_CREDENTIALS: its pid in the agent's PID namespace)
//   launcher child -> LISTENER (its listener's fd number); the agent takes the fd with
//                     pidfd_getfd and answers ACK; the child then drops privileges and execs.
// The caller then hands the listener to InterceptionSource::Add and a duplicate to the VM init
// (VmManager::DepositFd), and waits for the launcher (launcher_pidfd) for the exit status.
#ifndef SHUTTLE_AGENT_INTERCEPT_LAUNCHER_H_
#define SHUTTLE_AGENT_INTERCEPT_LAUNCHER_H_

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/intercept/unique_fd.h"

namespace shuttle::agent::intercept {

struct LaunchSpec {
  std::string launcher_path;  // The shuttle-launch binary.
  pid_t init_pid = 0;         // The VM's init, agent's PID namespace.
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;      // Supplementary groups; empty: none.
  std::string cwd;                // In the VM; empty: "/".
  std::vector<std::string> argv;  // CMD ARGS...; argv[0] is looked up in the VM's PATH.
  // The program's environment ("K=V"); nullopt: the agent's own.
  std::optional<std::vector<std::string>> env;
  // Become fds 0, 1, 2 of the launcher (and the program). Not owned; duplicated.
  int stdin_fd = 0;
  int stdout_fd = 1;
  int stderr_fd = 2;
  absl::Duration timeout = absl::Seconds(10);  // For the whole handshake.
};

struct LaunchedProcess {
  pid_t launcher_pid = -1;  // The agent's child; ends as the program did (exit code, or killed
                            // by the same signal: WaitLaunched() reports that as 128+sig).
  UniqueFd launcher_pidfd;  // pidfd of the launcher: poll for exit, waitid(P_PIDFD).
  pid_t process_pid = -1;   // The program (after exec), agent's PID namespace.
  UniqueFd listener;        // The program's seccomp listener (O_CLOEXEC).
};

// Starts the launch and completes the handshake within spec.timeout. On any failure the
// launcher is killed and reaped, and the error names the step (and the launcher's exit status
// when it exited on its own; its one-line reason went to spec.stderr_fd). Thread-safe (uses
// posix_spawn: safe in a multi-threaded agent). The caller must reap launcher_pid.
absl::StatusOr<LaunchedProcess> StartLaunch(const LaunchSpec& spec);

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_LAUNCHER_H_
