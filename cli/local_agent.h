// shuttlectl verbs served by the local agent over its unix socket (proto/shuttle/v1/local.proto):
// `vm create|ls|rm`, `run` and `service add|ls|rm`. `run` hands this process's stdin/stdout/stderr
// to the agent as descriptors, forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT to the program, and exits
// with its status.
#ifndef SHUTTLE_CLI_LOCAL_AGENT_H_
#define SHUTTLE_CLI_LOCAL_AGENT_H_

#include <ostream>

#include "absl/status/statusor.h"
#include "cli/args.h"

namespace shuttle::cli {

inline constexpr char kDefaultAgentSocket[] = "/run/shuttle/agent.sock";
inline constexpr char kAgentSocketEnv[] = "SHUTTLE_AGENT_SOCKET";

// Runs a local-agent verb; returns the exit status to use (the program's, for `run`).
absl::StatusOr<int> RunLocalAgentVerb(const Invocation& invocation, std::ostream& out);

}  // namespace shuttle::cli

#endif  // SHUTTLE_CLI_LOCAL_AGENT_H_
