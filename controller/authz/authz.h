// Who may call what on the controller. Every handler names the permission it needs; the caller's
// role comes from the OU of its verified client certificate (common/tls.h), never from anything
// the caller sends. Roles: admin (read+write), viewer (read), agent (AgentService only).
#ifndef SHUTTLE_CONTROLLER_AUTHZ_AUTHZ_H_
#define SHUTTLE_CONTROLLER_AUTHZ_AUTHZ_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/registry.h"

namespace grpc {
class ServerContextBase;
}  // namespace grpc

namespace shuttle::controller {

enum class Permission {
  kRead,    // Get, List, History, Validate, Explain, queries.
  kWrite,   // Apply, Delete, Rollback, tokens.
  kAgent,   // AgentService calls of an enrolled agent.
  kEnroll,  // Enroll: no certificate yet; the join token is the credential.
};

// The authenticated caller of one RPC.
struct Caller {
  std::string name;  // Certificate CN (host id for agents); "insecure" without TLS.
  std::string role;  // "admin", "viewer", "agent"; empty for kEnroll callers without a cert.
};

// True if `role` grants `permission`.
bool RoleAllows(std::string_view role, Permission permission);

// Thread-safe; immutable after construction.
class Authorizer {
 public:
  // `insecure`: the server has no TLS (--insecure); every caller is treated as admin.
  // Refusals are counted in `metrics` (shuttle_controller_authz_denied_total{reason}).
  Authorizer(bool insecure, prometheus::Registry& metrics);

  // UNAUTHENTICATED without a verified client certificate (unless kEnroll), PERMISSION_DENIED
  // naming role and method when the role does not allow `permission`.
  absl::StatusOr<Caller> Check(const grpc::ServerContextBase& context, Permission permission,
                               std::string_view method) const;

 private:
  bool insecure_;
  prometheus::Family<prometheus::Counter>& denied_;
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_AUTHZ_AUTHZ_H_
