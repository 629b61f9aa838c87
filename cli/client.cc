#include "cli/client.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/output.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "common/tls.h"

namespace shuttle::cli {
namespace {

// Fails with a reason a person can act on: which file, why, and which flag points elsewhere.
absl::Status CheckReadable(const std::string& path, absl::string_view what,
                           absl::string_view flag) {
  std::ifstream in(path);
  if (in.good()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("cannot read ", what, " ", path, ": ",
                                                    std::strerror(errno), " (set --data-dir to ",
                                                    "the controller's data dir, or ", flag, ")"));
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const GlobalOptions& options) {
  if (options.insecure) return grpc::InsecureChannelCredentials();
  SHUTTLE_RETURN_IF_ERROR(CheckReadable(options.CaPath(), "CA certificate", "--ca"));
  std::string cert;
  std::string key;
  if (!options.no_client_cert) {
    cert = options.CertPath();
    key = options.KeyPath();
    SHUTTLE_RETURN_IF_ERROR(CheckReadable(cert, "client certificate", "--cert"));
    SHUTTLE_RETURN_IF_ERROR(CheckReadable(key, "client key", "--key"));
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      tls::LoadClientCredentials(options.CaPath(), cert, key);
  if (!creds.ok()) {
    return absl::Status(creds.status().code(), OneLine(creds.status().message()));
  }
  return creds;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ControllerClient>> ControllerClient::Create(
    const GlobalOptions& options) {
  SHUTTLE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> creds, Credentials(options));
  grpc::ChannelArguments args;
  if (!options.server_name.empty()) args.SetSslTargetNameOverride(options.server_name);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.controller, creds, args);
  return std::unique_ptr<ControllerClient>(new ControllerClient(options, std::move(channel)));
}

ControllerClient::ControllerClient(const GlobalOptions& options,
                                   std::shared_ptr<grpc::Channel> channel)
    : options_(options),
      channel_(std::move(channel)),
      policy_(v1::PolicyService::NewStub(channel_)),
      fleet_(v1::FleetService::NewStub(channel_)),
      audit_(v1::AuditService::NewStub(channel_)),
      answers_(v1::AnswerService::NewStub(channel_)) {}

std::unique_ptr<grpc::ClientContext> ControllerClient::NewContext(bool streaming) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!streaming) ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  return ctx;
}

absl::Status ControllerClient::CallError(const grpc::Status& status) const {
  return DescribeCallError(status, options_);
}

absl::Status DescribeCallError(const grpc::Status& status, const GlobalOptions& options) {
  absl::Status s = FromGrpcStatus(status);
  if (s.ok()) return s;
  std::string message = OneLine(s.message());
  if (s.code() == absl::StatusCode::kUnimplemented && message.empty()) {
    message = "not implemented yet by the controller";
  }
  std::string line = absl::StrCat(absl::StatusCodeToString(s.code()), ": ", message);
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
      line = absl::StrCat("cannot reach controller at ", options.controller, ": ", line);
      // gRPC reports TLS failures as transport errors; say what usually causes them.
      if (absl::StrContains(message, "certificate verify failed")) {
        absl::StrAppend(&line, " (the controller's certificate is not signed by ", options.CaPath(),
                        " or does not name the host dialled; see --ca, ", "--server-name)");
      } else if (!options.insecure && absl::StrContains(message, "Socket closed")) {
        absl::StrAppend(&line, " (the controller closed the connection: it accepts only client ",
                        "certificates signed by its CA; see --cert, --key, --data-dir)");
      }
      break;
    case absl::StatusCode::kDeadlineExceeded:
      line = absl::StrCat("controller at ", options.controller, " did not answer within ",
                          absl::FormatDuration(options.timeout), ": ", line);
      break;
    default:
      break;
  }
  return absl::Status(s.code(), line);
}

}  // namespace shuttle::cli
