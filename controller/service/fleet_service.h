// FleetService over gRPC: the host table (from the PushManager's memory, backed by the store)
// and join tokens (CreateToken). Reads need viewer or admin; CreateToken needs admin.
#ifndef SHUTTLE_CONTROLLER_SERVICE_FLEET_SERVICE_H_
#define SHUTTLE_CONTROLLER_SERVICE_FLEET_SERVICE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/executor.h"
#include "controller/authz/authz.h"
#include "controller/push/push_manager.h"
#include "controller/store/store.h"
#include "shuttle/v1/fleet.grpc.pb.h"

namespace shuttle::controller {

// Join tokens: "sjt_" + 64 lowercase hex digits (32 random bytes).
inline constexpr char kJoinTokenPrefix[] = "sjt_";
inline constexpr absl::Duration kDefaultTokenTtl = absl::Hours(1);
inline constexpr absl::Duration kMaxTokenTtl = absl::Hours(24 * 30);

// A new random join token string. Thread-safe.
std::string NewJoinToken();

class FleetServiceImpl final : public v1::FleetService::CallbackService {
 public:
  // Collaborators are borrowed and must outlive the service.
  FleetServiceImpl(Store& store, PushManager& push, const Authorizer& authorizer,
                   Executor& executor, Clock& clock)
      : store_(store), push_(push), authorizer_(authorizer), executor_(executor), clock_(clock) {}

  grpc::ServerUnaryReactor* ListHosts(grpc::CallbackServerContext* ctx,
                                      const v1::ListHostsRequest* req,
                                      v1::ListHostsResponse* resp) override;
  grpc::ServerUnaryReactor* GetHost(grpc::CallbackServerContext* ctx, const v1::GetHostRequest* req,
                                    v1::GetHostResponse* resp) override;
  grpc::ServerUnaryReactor* CreateToken(grpc::CallbackServerContext* ctx,
                                        const v1::CreateTokenRequest* req,
                                        v1::CreateTokenResponse* resp) override;

 private:
  absl::StatusOr<v1::CreateTokenResponse> DoCreateToken(const v1::CreateTokenRequest& request);

  Store& store_;
  PushManager& push_;
  const Authorizer& authorizer_;
  Executor& executor_;
  Clock& clock_;
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_SERVICE_FLEET_SERVICE_H_
