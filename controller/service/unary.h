// The one shape every unary handler has: check the caller's permission on the gRPC thread, run
// the (possibly blocking) work on the executor, finish the reactor with the converted status.
// Keeps handlers one statement long (STYLE.md, "Services are thin").
#ifndef SHUTTLE_CONTROLLER_SERVICE_UNARY_H_
#define SHUTTLE_CONTROLLER_SERVICE_UNARY_H_

#include <grpcpp/grpcpp.h>

#include <utility>

#include "absl/status/statusor.h"
#include "common/executor.h"
#include "common/grpc_status.h"
#include "controller/authz/authz.h"

namespace shuttle::controller {

// `work(const Caller&)` returns absl::StatusOr<Response>. `response` stays valid until the
// reactor finishes (gRPC guarantees it), so the executor may fill it.
template <typename Response, typename Work>
grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context, Executor& executor,
                                   const Authorizer& authorizer, Permission permission,
                                   const char* method, Response* response, Work work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = authorizer.Check(*context, permission, method);
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  executor.Run([reactor, response, work = std::move(work), caller = *std::move(caller)]() mutable {
    absl::StatusOr<Response> result = work(caller);
    if (result.ok()) *response = *std::move(result);
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_SERVICE_UNARY_H_
