#include "controller/service/policy_service.h"

#include "controller/service/unary.h"

namespace shuttle::controller {

grpc::ServerUnaryReactor* PolicyServiceImpl::Apply(grpc::CallbackServerContext* ctx,
                                                   const v1::ApplyRequest* req,
                                                   v1::ApplyResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kWrite, "PolicyService.Apply", resp,
                  [this, req](const Caller& caller) { return registry_.Apply(*req, caller.name); });
}

grpc::ServerUnaryReactor* PolicyServiceImpl::Validate(grpc::CallbackServerContext* ctx,
                                                      const v1::ValidateRequest* req,
                                                      v1::ValidateResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kRead, "PolicyService.Validate", resp,
                  [this, req](const Caller&) -> absl::StatusOr<v1::ValidateResponse> {
                    return registry_.Validate(*req);
                  });
}

grpc::ServerUnaryReactor* PolicyServiceImpl::Get(grpc::CallbackServerContext* ctx,
                                                 const v1::GetPolicyRequest* req,
                                                 v1::GetPolicyResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kRead, "PolicyService.Get", resp,
                  [this, req](const Caller&) { return registry_.Get(*req); });
}

grpc::ServerUnaryReactor* PolicyServiceImpl::List(grpc::CallbackServerContext* ctx,
                                                  const v1::ListPoliciesRequest* req,
                                                  v1::ListPoliciesResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kRead, "PolicyService.List", resp,
                  [this](const Caller&) { return registry_.List(); });
}

grpc::ServerUnaryReactor* PolicyServiceImpl::Delete(grpc::CallbackServerContext* ctx,
                                                    const v1::DeletePolicyRequest* req,
                                                    v1::DeletePolicyResponse* resp) {
  return RunUnary(
      ctx, executor_, authorizer_, Permission::kWrite, "PolicyService.Delete", resp,
      [this, req](const Caller& caller) { return registry_.Delete(*req, caller.name); });
}

grpc::ServerUnaryReactor* PolicyServiceImpl::History(grpc::CallbackServerContext* ctx,
                                                     const v1::PolicyHistoryRequest* req,
                                                     v1::PolicyHistoryResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kRead, "PolicyService.History", resp,
                  [this, req](const Caller&) { return registry_.History(*req); });
}

grpc::ServerUnaryReactor* PolicyServiceImpl::Rollback(grpc::CallbackServerContext* ctx,
                                                      const v1::RollbackRequest* req,
                                                      v1::RollbackResponse* resp) {
  return RunUnary(
      ctx, executor_, authorizer_, Permission::kWrite, "PolicyService.Rollback", resp,
      [this, req](const Caller& caller) { return registry_.Rollback(*req, caller.name); });
}

grpc::ServerUnaryReactor* PolicyServiceImpl::Explain(grpc::CallbackServerContext* ctx,
                                                     const v1::ExplainRequest* req,
                                                     v1::ExplainResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kRead, "PolicyService.Explain", resp,
                  [this, req](const Caller&) { return registry_.Explain(*req); });
}

}  // namespace shuttle::controller
