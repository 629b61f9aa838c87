// shuttlectl's verbs: each turns a parsed Invocation into calls on the controller and prints
// the result as a table or as protobuf JSON. RunCli is the whole program minus argv and the
// real streams, so that exit codes and the one-line error contract are testable.
#ifndef SHUTTLE_CLI_COMMANDS_H_
#define SHUTTLE_CLI_COMMANDS_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/args.h"

namespace shuttle::cli {

// Exit statuses (also in `shuttlectl --help`).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Runs one parsed, non-help invocation. Results go to `out`; returns the exit status (for
// `run`, the program's), or a failure whose message is the one-line reason (without the
// "shuttlectl: VERB: " prefix).
absl::StatusOr<int> RunCommand(const Invocation& invocation, std::ostream& out);

// Parses `args` (argv without argv[0]), runs the command, and returns the exit status. On a
// failure writes exactly one line, "shuttlectl: REASON", to `err`.
int RunCli(const std::vector<std::string>& args, const char* env_controller, std::ostream& out,
           std::ostream& err);

}  // namespace shuttle::cli

#endif  // SHUTTLE_CLI_COMMANDS_H_
