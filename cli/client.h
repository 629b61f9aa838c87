// shuttlectl's connection to the controller: mTLS credentials from the controller's PKI
// directory (or --ca/--cert/--key), one channel, the v1 stubs, per-call deadlines, and RPC
// failures turned into one-line reasons that name the controller's address.
#ifndef SHUTTLE_CLI_CLIENT_H_
#define SHUTTLE_CLI_CLIENT_H_

#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/args.h"
#include "shuttle/v1/answers.grpc.pb.h"
#include "shuttle/v1/audit.grpc.pb.h"
#include "shuttle/v1/fleet.grpc.pb.h"
#include "shuttle/v1/policy.grpc.pb.h"

namespace shuttle::cli {

// One channel to one controller. Not thread-safe (shuttlectl makes one call at a time).
class ControllerClient {
 public:
  // Reads the credentials (FAILED_PRECONDITION naming the missing file and the flag that
  // overrides it) and creates the channel; connects lazily, on the first call.
  static absl::StatusOr<std::unique_ptr<ControllerClient>> Create(const GlobalOptions& options);

  v1::PolicyService::Stub& policy() { return *policy_; }
  v1::FleetService::Stub& fleet() { return *fleet_; }
  v1::AuditService::Stub& audit() { return *audit_; }
  v1::AnswerService::Stub& answers() { return *answers_; }

  // A context for one call, with the --timeout deadline (none when `streaming`).
  std::unique_ptr<grpc::ClientContext> NewContext(bool streaming = false) const;

  // The failure of a call as one line, keeping its code: "PERMISSION_DENIED: ...", or for an
  // unreachable controller "cannot reach controller at ADDR: UNAVAILABLE: ...".
  absl::Status CallError(const grpc::Status& status) const;

 private:
  ControllerClient(const GlobalOptions& options, std::shared_ptr<grpc::Channel> channel);

  GlobalOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::PolicyService::Stub> policy_;
  std::unique_ptr<v1::FleetService::Stub> fleet_;
  std::unique_ptr<v1::AuditService::Stub> audit_;
  std::unique_ptr<v1::AnswerService::Stub> answers_;
};

// The one-line reason for a failed call made with `options` (exposed for tests). When the
// transport failed during the TLS handshake it adds a hint at the likely cause.
absl::Status DescribeCallError(const grpc::Status& status, const GlobalOptions& options);

}  // namespace shuttle::cli

#endif  // SHUTTLE_CLI_CLIENT_H_
