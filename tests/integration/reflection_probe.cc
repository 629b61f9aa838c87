// A minimal server reflection client for cli_controller_test.sh: asks a running
// shuttle-controller, over TLS with the controller's CA and no client certificate (as
// `grpcurl -cacert` would), for its services and for the file declaring each symbol given, all
// on one stream. Prints
//   service NAME          for list_services, in the order answered
//   file SYMBOL FILENAME  for file_containing_symbol: the file, then its dependencies
// Exits 1 with one line on stderr if the call fails or a request gets an error_response.
//
//   usage: reflection_probe HOST:PORT CA_PEM [SYMBOL...]
#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "common/tls.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace {

using grpc::reflection::v1alpha::ServerReflection;
using grpc::reflection::v1alpha::ServerReflectionRequest;
using grpc::reflection::v1alpha::ServerReflectionResponse;

int Fail(const std::string& message) {
  std::cerr << "reflection_probe: " << message << "\n";
  return 1;
}

// Prints one response; false (after a line on stderr) for an error_response or the unexpected.
bool Print(const ServerReflectionResponse& resp) {
  const ServerReflectionRequest& req = resp.original_request();
  if (resp.has_error_response()) {
    Fail("error " + std::to_string(resp.error_response().error_code()) + ": " +
         resp.error_response().error_message());
    return false;
  }
  if (req.has_list_services() && resp.has_list_services_response()) {
    for (const auto& service : resp.list_services_response().service()) {
      std::cout << "service " << service.name() << "\n";
    }
    return true;
  }
  if (req.has_file_containing_symbol() && resp.has_file_descriptor_response()) {
    for (const std::string& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      if (!file.ParseFromString(bytes)) {
        Fail("unparseable FileDescriptorProto for " + req.file_containing_symbol());
        return false;
      }
      std::cout << "file " << req.file_containing_symbol() << " " << file.name() << "\n";
    }
    return true;
  }
  Fail("response does not answer its request: " + resp.ShortDebugString());
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return Fail("usage: reflection_probe HOST:PORT CA_PEM [SYMBOL...]");
  auto credentials = shuttle::tls::LoadClientCredentials(argv[2], "", "");
  if (!credentials.ok()) return Fail(credentials.status().ToString());
  auto stub = ServerReflection::NewStub(grpc::CreateChannel(argv[1], *credentials));

  std::vector<ServerReflectionRequest> requests(1);
  requests[0].set_list_services("");
  for (int i = 3; i < argc; ++i) requests.emplace_back().set_file_containing_symbol(argv[i]);

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub->ServerReflectionInfo(&ctx);
  for (const ServerReflectionRequest& req : requests) {
    if (!stream->Write(req)) break;  // Finish says why.
  }
  stream->WritesDone();
  bool ok = true;
  size_t answered = 0;
  ServerReflectionResponse resp;
  while (stream->Read(&resp)) {
    ++answered;
    ok = Print(resp) && ok;
  }
  grpc::Status status = stream->Finish();
  if (!status.ok()) {
    return Fail("ServerReflectionInfo: " + std::to_string(status.error_code()) + ": " +
                status.error_message());
  }
  if (answered != requests.size()) {
    return Fail(std::to_string(answered) + " responses to " + std::to_string(requests.size()) +
                " requests");
  }
  return ok ? 0 : 1;
}
