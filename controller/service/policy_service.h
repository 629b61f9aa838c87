// PolicyService over gRPC: thin handlers that check the caller's role and delegate to
// PolicyRegistry on the executor. Reads need viewer or admin; changes need admin.
#ifndef SHUTTLE_CONTROLLER_SERVICE_POLICY_SERVICE_H_
#define SHUTTLE_CONTROLLER_SERVICE_POLICY_SERVICE_H_

#include "common/executor.h"
#include "controller/authz/authz.h"
#include "controller/registry/policy_registry.h"
#include "shuttle/v1/policy.grpc.pb.h"

namespace shuttle::controller {

class PolicyServiceImpl final : public v1::PolicyService::CallbackService {
 public:
  // All collaborators are borrowed and must outlive the service.
  PolicyServiceImpl(PolicyRegistry& registry, const Authorizer& authorizer, Executor& executor)
      : registry_(registry), authorizer_(authorizer), executor_(executor) {}

  grpc::ServerUnaryReactor* Apply(grpc::CallbackServerContext* ctx, const v1::ApplyRequest* req,
                                  v1::ApplyResponse* resp) override;
  grpc::ServerUnaryReactor* Validate(grpc::CallbackServerContext* ctx,
                                     const v1::ValidateRequest* req,
                                     v1::ValidateResponse* resp) override;
  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx, const v1::GetPolicyRequest* req,
                                v1::GetPolicyResponse* resp) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx,
                                 const v1::ListPoliciesRequest* req,
                                 v1::ListPoliciesResponse* resp) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const v1::DeletePolicyRequest* req,
                                   v1::DeletePolicyResponse* resp) override;
  grpc::ServerUnaryReactor* History(grpc::CallbackServerContext* ctx,
                                    const v1::PolicyHistoryRequest* req,
                                    v1::PolicyHistoryResponse* resp) override;
  grpc::ServerUnaryReactor* Rollback(grpc::CallbackServerContext* ctx,
                                     const v1::RollbackRequest* req,
                                     v1::RollbackResponse* resp) override;
  grpc::ServerUnaryReactor* Explain(grpc::CallbackServerContext* ctx, const v1::ExplainRequest* req,
                                    v1::ExplainResponse* resp) override;

 private:
  PolicyRegistry& registry_;
  const Authorizer& authorizer_;
  Executor& executor_;
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_SERVICE_POLICY_SERVICE_H_
