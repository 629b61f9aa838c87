#include "controller/service/fleet_service.h"

#include <openssl/rand.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "controller/service/agent_service.h"
#include "controller/service/unary.h"
#include "google/protobuf/util/time_util.h"

namespace shuttle::controller {

using ::google::protobuf::util::TimeUtil;

std::string NewJoinToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    SHUTTLE_LOG(ERROR) << "RAND_bytes failed";
    std::abort();  // A CSPRNG failure is a broken invariant of the process.
  }
  return absl::StrCat(kJoinTokenPrefix, absl::BytesToHexString(absl::string_view(
                                            reinterpret_cast<const char*>(bytes), sizeof(bytes))));
}

grpc::ServerUnaryReactor* FleetServiceImpl::ListHosts(grpc::CallbackServerContext* ctx,
                                                      const v1::ListHostsRequest* /*req*/,
                                                      v1::ListHostsResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kRead, "FleetService.ListHosts", resp,
                  [this](const Caller&) -> absl::StatusOr<v1::ListHostsResponse> {
                    v1::ListHostsResponse out;
                    for (v1::HostStatus& h : push_.ListHosts()) *out.add_hosts() = std::move(h);
                    return out;
                  });
}

grpc::ServerUnaryReactor* FleetServiceImpl::GetHost(grpc::CallbackServerContext* ctx,
                                                    const v1::GetHostRequest* req,
                                                    v1::GetHostResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kRead, "FleetService.GetHost", resp,
                  [this, req](const Caller&) -> absl::StatusOr<v1::GetHostResponse> {
                    SHUTTLE_ASSIGN_OR_RETURN(v1::HostStatus host, push_.GetHost(req->host_id()));
                    v1::GetHostResponse out;
                    *out.mutable_host() = std::move(host);
                    return out;
                  });
}

absl::StatusOr<v1::CreateTokenResponse> FleetServiceImpl::DoCreateToken(
    const v1::CreateTokenRequest& request) {
  absl::Duration ttl = kDefaultTokenTtl;
  if (request.has_ttl()) {
    ttl = absl::Seconds(request.ttl().seconds()) + absl::Nanoseconds(request.ttl().nanos());
    if (ttl <= absl::ZeroDuration() || ttl > kMaxTokenTtl) {
      return absl::InvalidArgumentError(absl::StrCat("token ttl must be in (0, ",
                                                     absl::FormatDuration(kMaxTokenTtl), "], not ",
                                                     absl::FormatDuration(ttl)));
    }
  }
  if (!request.host_id().empty()) SHUTTLE_RETURN_IF_ERROR(ValidateHostId(request.host_id()));
  const std::string token = NewJoinToken();
  JoinToken stored;
  stored.secret_sha256 = JoinTokenHash(token);
  stored.host_id = request.host_id();
  stored.created = clock_.Now();
  stored.expires = stored.created + ttl;
  SHUTTLE_RETURN_IF_ERROR(store_.CreateJoinToken(stored));
  v1::CreateTokenResponse response;
  response.set_token(token);
  *response.mutable_expires() =
      TimeUtil::MicrosecondsToTimestamp(absl::ToUnixMicros(stored.expires));
  return response;
}

grpc::ServerUnaryReactor* FleetServiceImpl::CreateToken(grpc::CallbackServerContext* ctx,
                                                        const v1::CreateTokenRequest* req,
                                                        v1::CreateTokenResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kWrite, "FleetService.CreateToken", resp,
                  [this, req](const Caller& caller) {
                    absl::StatusOr<v1::CreateTokenResponse> result = DoCreateToken(*req);
                    if (result.ok()) {
                      SHUTTLE_LOG(INFO) << caller.name << " created a join token"
                                        << (req->host_id().empty() ? std::string()
                                                                   : " for host " + req->host_id());
                    }
                    return result;
                  });
}

}  // namespace shuttle::controller
