#include "controller/authz/authz.h"

#include <grpcpp/server_context.h>

#include <string>

#include "common/tls.h"

namespace shuttle::controller {

bool RoleAllows(std::string_view role, Permission permission) {
  switch (permission) {
    case Permission::kRead:
      return role == "admin" || role == "viewer";
    case Permission::kWrite:
      return role == "admin";
    case Permission::kAgent:
      return role == "agent";
    case Permission::kEnroll:
      return true;
  }
  return false;
}

Authorizer::Authorizer(bool insecure, prometheus::Registry& metrics)
    : insecure_(insecure),
      denied_(prometheus::BuildCounter()
                  .Name("shuttle_controller_authz_denied_total")
                  .Help("Calls refused by authorization, by reason")
                  .Register(metrics)) {}

absl::StatusOr<Caller> Authorizer::Check(const grpc::ServerContextBase& context,
                                         Permission permission, std::string_view method) const {
  if (insecure_) return Caller{"insecure", "admin"};
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  absl::StatusOr<tls::PeerIdentity> peer =
      auth ? tls::PeerIdentityFromAuthContext(*auth)
           : absl::StatusOr<tls::PeerIdentity>(absl::UnauthenticatedError("no TLS session"));
  if (!peer.ok()) {
    if (permission == Permission::kEnroll) return Caller{};
    denied_.Add({{"reason", "unauthenticated"}}).Increment();
    return absl::UnauthenticatedError(
        std::string(method) + ": a client certificate from the controller CA is required (" +
        std::string(peer.status().message()) + ")");
  }
  if (!RoleAllows(peer->role, permission)) {
    denied_.Add({{"reason", "role"}}).Increment();
    return absl::PermissionDeniedError("role " + (peer->role.empty() ? "(none)" : peer->role) +
                                       " of " + peer->common_name + " may not call " +
                                       std::string(method));
  }
  return Caller{peer->common_name, peer->role};
}

}  // namespace shuttle::controller
