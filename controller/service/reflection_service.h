// gRPC server reflection (grpc.reflection.v1alpha) with the callback API, so that grpcurl and
// similar tools can list the controller's services and describe their messages. It replaces
// gRPC's reflection plugin, a synchronous service: any synchronous service makes the server run
// sync polling threads beside the callback services, which cost the controller about a third of
// its Authorize throughput with 1,000 agents connected (bench/fleet_sim.cc).
#ifndef SHUTTLE_CONTROLLER_SERVICE_REFLECTION_SERVICE_H_
#define SHUTTLE_CONTROLLER_SERVICE_REFLECTION_SERVICE_H_

#include <google/protobuf/descriptor.h>
#include <grpcpp/grpcpp.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace shuttle::controller {

class ReflectionServiceImpl final
    : public grpc::reflection::v1alpha::ServerReflection::CallbackService {
 public:
  // `service_names`: the full names answered to list_services, in this order; the server's
  // registered services, this one included. `pool` answers every other request (each file comes
  // with its transitive dependencies); it is borrowed and must outlive the service. The default,
  // the generated pool, holds the files compiled into the binary. Thread-safe: nothing changes
  // after construction.
  explicit ReflectionServiceImpl(std::vector<std::string> service_names,
                                 const google::protobuf::DescriptorPool* pool =
                                     google::protobuf::DescriptorPool::generated_pool());

  // One response per request, in order, until the client half-closes (then OK). A request that
  // cannot be answered (an unknown name, no request set) gets a response with error_response
  // and the stream goes on. Answers are computed on the gRPC thread: lookups in the pool only.
  grpc::ServerBidiReactor<grpc::reflection::v1alpha::ServerReflectionRequest,
                          grpc::reflection::v1alpha::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* ctx) override;

  // The response to one request: valid_host and original_request copied, then the answer or an
  // error_response. Thread-safe.
  grpc::reflection::v1alpha::ServerReflectionResponse Answer(
      const grpc::reflection::v1alpha::ServerReflectionRequest& request) const;

 private:
  // Fills the oneof message_response of `response`; the error says what was not found.
  absl::Status Fill(const grpc::reflection::v1alpha::ServerReflectionRequest& request,
                    grpc::reflection::v1alpha::ServerReflectionResponse& response) const;

  const std::vector<std::string> service_names_;
  const google::protobuf::DescriptorPool& pool_;
};

}  // namespace shuttle::controller

#endif  // SHUTTLE_CONTROLLER_SERVICE_REFLECTION_SERVICE_H_
