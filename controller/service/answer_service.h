// AnswerService over gRPC: the standing answers to `ask` (answers.proto) for operators and
// automation. Put and Delete need the admin role, List viewer or admin. The rules live in
// controller/authz/answers.h (AnswerAuthority); these handlers only check the caller and run
// the store work on the executor.
#ifndef SHUTTLE_CONTROLLER_SERVICE_ANSWER_SERVICE_H_
#define SHUTTLE_CONTROLLER_SERVICE_ANSWER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include "common/executor.h"
#include "controller/authz/answers.h"
#include "controller/authz/authz.h"
#include "shuttle/v1/answers.grpc.pb.h"

namespace shuttle::controller {

class AnswerServiceImpl final : public v1::AnswerService::CallbackService {
 public:
  // Collaborators are borrowed and must outlive the service.
  AnswerServiceImpl(AnswerAuthority& answers, const Authorizer& authorizer, Executor& executor)
      : answers_(answers), authorizer_(authorizer), executor_(executor) {}

  grpc::ServerUnaryReactor* Put(grpc::CallbackServerContext* ctx, const v1::PutAnswerRequest* req,
                                v1::PutAnswerResponse* resp) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx,
                                 const v1::ListAnswersRequest* req,
                                 v1::ListAnswersResponse* resp) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx,
                                   const v1::DeleteAnswerRequest* req,
                                   v1::DeleteAnswerResponse* resp) override;

 private:
  AnswerAuthority& answers_;
  const Authorizer& authorizer_;
  Executor& executor_;
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_SERVICE_ANSWER_SERVICE_H_
