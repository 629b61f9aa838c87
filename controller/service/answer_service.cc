#include "controller/service/answer_service.h"

#include "controller/service/unary.h"

namespace shuttle::controller {

grpc::ServerUnaryReactor* AnswerServiceImpl::Put(grpc::CallbackServerContext* ctx,
                                                 const v1::PutAnswerRequest* req,
                                                 v1::PutAnswerResponse* resp) {
  return RunUnary(
      ctx, executor_, authorizer_, Permission::kWrite, "AnswerService.Put", resp,
      [this, req](const Caller& caller) { return answers_.Put(req->answer(), caller.name); });
}

grpc::ServerUnaryReactor* AnswerServiceImpl::List(grpc::CallbackServerContext* ctx,
                                                  const v1::ListAnswersRequest* /*req*/,
                                                  v1::ListAnswersResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kRead, "AnswerService.List", resp,
                  [this](const Caller&) { return answers_.List(); });
}

grpc::ServerUnaryReactor* AnswerServiceImpl::Delete(grpc::CallbackServerContext* ctx,
                                                    const v1::DeleteAnswerRequest* req,
                                                    v1::DeleteAnswerResponse* resp) {
  return RunUnary(ctx, executor_, authorizer_, Permission::kWrite, "AnswerService.Delete", resp,
                  [this, req](const Caller&) { return answers_.Delete(req->id()); });
}

}  // namespace shuttle::controller
