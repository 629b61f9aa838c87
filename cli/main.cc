// shuttlectl: the operators' command line for a Shuttle controller (DESIGN.md section 4).
// Everything but argv, the environment and the real streams lives in cli/commands.h.
#include <grpc/support/log.h>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"

namespace {

void DiscardGrpcLog(gpr_log_func_args* /*args*/) {}

}  // namespace

int main(int argc, char** argv) {
  // gRPC's own diagnostics (e.g. "Handshake failed" from its TLS layer) would break the contract
  // of one line on stderr per failure; the call's status carries the same reason. Setting
  // GRPC_VERBOSITY (for debugging) keeps them.
  if (std::getenv("GRPC_VERBOSITY") == nullptr) gpr_set_log_function(DiscardGrpcLog);
  std::vector<std::string> args(argv + 1, argv + argc);
  return shuttle::cli::RunCli(args, std::getenv(shuttle::cli::kControllerEnv), std::cout,
                              std::cerr);
}
