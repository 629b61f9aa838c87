#include "agent/client/enroll.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "agent/vm/vm_state.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "shuttle/v1/agent.grpc.pb.h"

namespace shuttle::agent {
namespace {

absl::Status EnrollError(const EnrollOptions& options, absl::StatusCode code,
                         absl::string_view why) {
  // One line, whatever the controller or OpenSSL put in the reason.
  std::string reason = absl::StrReplaceAll(why, {{"\n", "; "}});
  return absl::Status(code, absl::StrCat("enrollment with controller ", options.controller_address,
                                         " failed: ", reason));
}

absl::Status MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create directory ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

AgentPkiPaths AgentPki(const std::string& data_dir) {
  AgentPkiPaths paths;
  paths.dir = data_dir + "/pki";
  paths.cert = paths.dir + "/agent.pem";
  paths.key = paths.dir + "/agent.key";
  paths.ca = paths.dir + "/ca.pem";
  return paths;
}

bool HasAgentCredentials(const AgentPkiPaths& paths) {
  return ::access(paths.cert.c_str(), F_OK) == 0 && ::access(paths.key.c_str(), F_OK) == 0 &&
         ::access(paths.ca.c_str(), F_OK) == 0;
}

absl::Status Enroll(const EnrollOptions& options, const AgentPkiPaths& paths) {
  if (options.join_token.empty()) {
    return EnrollError(options, absl::StatusCode::kInvalidArgument, "empty join token");
  }
  if (!options.credentials) {
    return EnrollError(options, absl::StatusCode::kInvalidArgument, "no channel credentials");
  }
  absl::StatusOr<tls::CsrAndKey> csr = tls::CreateCsr(options.host_id);
  if (!csr.ok()) {
    return EnrollError(options, csr.status().code(),
                       absl::StrCat("host id '", options.host_id, "': ", csr.status().message()));
  }

  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(options.controller_address, options.credentials);
  std::unique_ptr<v1::AgentService::Stub> stub = v1::AgentService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.timeout));
  v1::EnrollRequest request;
  request.set_join_token(options.join_token);
  request.set_host_id(options.host_id);
  request.set_csr_pem(csr->csr_pem);
  v1::EnrollResponse response;
  grpc::Status rpc = stub->Enroll(&ctx, request, &response);
  if (!rpc.ok()) {
    absl::Status status = FromGrpcStatus(rpc);
    return EnrollError(
        options, status.code(),
        absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message()));
  }

  // Check what came back before writing anything: a certificate that does not chain to the CA
  // or names another host would only fail later, at every connection, less clearly.
  const std::string& cert = response.certificate_pem();
  const std::string& ca = response.ca_pem();
  if (cert.empty() || ca.empty()) {
    return EnrollError(options, absl::StatusCode::kInternal,
                       "the controller returned no certificate or no CA");
  }
  absl::Status verified = tls::VerifyCert(ca, cert, tls::CertPurpose::kClient);
  if (!verified.ok()) {
    return EnrollError(options, verified.code(),
                       absl::StrCat("returned certificate: ", verified.message()));
  }
  absl::StatusOr<tls::PeerIdentity> identity = tls::IdentityFromCertPem(cert);
  if (!identity.ok()) {
    return EnrollError(options, identity.status().code(),
                       absl::StrCat("returned certificate: ", identity.status().message()));
  }
  if (identity->common_name != options.host_id) {
    return EnrollError(options, absl::StatusCode::kPermissionDenied,
                       absl::StrCat("returned certificate names host '", identity->common_name,
                                    "', not '", options.host_id, "'"));
  }

  SHUTTLE_RETURN_IF_ERROR(MakeDir(paths.dir));
  SHUTTLE_RETURN_IF_ERROR(WriteFileAtomically(paths.key, csr->key_pem));
  SHUTTLE_RETURN_IF_ERROR(WriteFileAtomically(paths.cert, cert));
  SHUTTLE_RETURN_IF_ERROR(WriteFileAtomically(paths.ca, ca));
  return absl::OkStatus();
}

}  // namespace shuttle::agent
