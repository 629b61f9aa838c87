// ReflectionServiceImpl over a real gRPC server and channel on loopback, driven by a generated
// ServerReflection stub as grpcurl drives it: list the services, fetch files with their
// dependencies and rebuild them into a fresh pool, errors, several requests on one stream.
#include "controller/service/reflection_service.h"

#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/text_format.h>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "shuttle/v1/agent.pb.h"

namespace shuttle::controller {
namespace {

namespace pb = google::protobuf;
using grpc::reflection::v1alpha::ServerReflection;
using grpc::reflection::v1alpha::ServerReflectionRequest;
using grpc::reflection::v1alpha::ServerReflectionResponse;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsSupersetOf;

const std::vector<std::string> kServices = {
    "shuttle.v1.AgentService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
};

ServerReflectionRequest ListServices() {
  ServerReflectionRequest req;
  req.set_list_services("*");
  return req;
}

ServerReflectionRequest FileContainingSymbol(const std::string& symbol) {
  ServerReflectionRequest req;
  req.set_file_containing_symbol(symbol);
  return req;
}

ServerReflectionRequest FileByFilename(const std::string& name) {
  ServerReflectionRequest req;
  req.set_file_by_filename(name);
  return req;
}

// The files of a file_descriptor_response, parsed, in the order sent; fails the test if one
// does not parse.
std::vector<pb::FileDescriptorProto> Files(const ServerReflectionResponse& resp) {
  std::vector<pb::FileDescriptorProto> files;
  for (const std::string& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
    pb::FileDescriptorProto& file = files.emplace_back();
    EXPECT_TRUE(file.ParseFromString(bytes)) << "unparseable FileDescriptorProto";
  }
  return files;
}

std::vector<std::string> Names(const std::vector<pb::FileDescriptorProto>& files) {
  std::vector<std::string> names;
  for (const pb::FileDescriptorProto& file : files) names.push_back(file.name());
  return names;
}

// Builds `name` into `pool` after its dependencies, as a client does with what it received.
// Fails the test if a dependency was not sent or a file does not build.
void BuildInOrder(const std::string& name,
                  const absl::flat_hash_map<std::string, pb::FileDescriptorProto>& by_name,
                  pb::DescriptorPool& pool) {
  if (pool.FindFileByName(name) != nullptr) return;
  auto it = by_name.find(name);
  ASSERT_NE(it, by_name.end()) << "dependency " << name << " was not sent";
  for (const std::string& dependency : it->second.dependency()) {
    BuildInOrder(dependency, by_name, pool);
  }
  ASSERT_NE(pool.BuildFile(it->second), nullptr) << "cannot build " << name;
}

// A fresh pool built from every file of the response (each must be sent once).
std::unique_ptr<pb::DescriptorPool> BuildPool(const std::vector<pb::FileDescriptorProto>& files) {
  absl::flat_hash_map<std::string, pb::FileDescriptorProto> by_name;
  for (const pb::FileDescriptorProto& file : files) {
    EXPECT_TRUE(by_name.emplace(file.name(), file).second) << file.name() << " sent twice";
  }
  auto pool = std::make_unique<pb::DescriptorPool>();
  for (const pb::FileDescriptorProto& file : files) BuildInOrder(file.name(), by_name, *pool);
  return pool;
}

class ReflectionServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(pb::DescriptorPool::generated_pool()); }
  // Before a derived fixture's pool goes.
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  // Starts the server with a reflection service answering from `pool`.
  void Start(const pb::DescriptorPool* pool) {
    service_ = std::make_unique<ReflectionServiceImpl>(kServices, pool);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    stub_ = ServerReflection::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  // Sends `requests` on one stream, half-closes, and returns every response; the stream must
  // end OK.
  std::vector<ServerReflectionResponse> Exchange(
      const std::vector<ServerReflectionRequest>& requests) {
    grpc::ClientContext ctx;
    auto stream = stub_->ServerReflectionInfo(&ctx);
    for (const ServerReflectionRequest& req : requests) EXPECT_TRUE(stream->Write(req));
    EXPECT_TRUE(stream->WritesDone());
    std::vector<ServerReflectionResponse> responses;
    ServerReflectionResponse resp;
    while (stream->Read(&resp)) responses.push_back(resp);
    grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
    return responses;
  }

  // One request on its own stream; fails the test unless exactly one response comes back.
  ServerReflectionResponse Ask(const ServerReflectionRequest& req) {
    std::vector<ServerReflectionResponse> responses = Exchange({req});
    EXPECT_EQ(responses.size(), 1u);
    return responses.empty() ? ServerReflectionResponse() : responses.front();
  }

  std::unique_ptr<ReflectionServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<ServerReflection::Stub> stub_;
};

TEST_F(ReflectionServiceTest, ListServicesReturnsExactlyTheConfiguredNames) {
  ServerReflectionResponse resp = Ask(ListServices());
  ASSERT_TRUE(resp.has_list_services_response()) << resp.DebugString();
  std::vector<std::string> names;
  for (const auto& service : resp.list_services_response().service()) {
    names.push_back(service.name());
  }
  EXPECT_EQ(names, kServices);
}

TEST_F(ReflectionServiceTest, FileContainingServiceComesWithItsDependenciesAndBuilds) {
  ServerReflectionResponse resp = Ask(FileContainingSymbol("shuttle.v1.AgentService"));
  ASSERT_TRUE(resp.has_file_descriptor_response()) << resp.DebugString();
  std::vector<pb::FileDescriptorProto> files = Files(resp);
  ASSERT_FALSE(files.empty());
  EXPECT_EQ(files.front().name(), "shuttle/v1/agent.proto");
  EXPECT_THAT(Names(files),
              IsSupersetOf({"shuttle/v1/types.proto", "google/protobuf/duration.proto",
                            "google/protobuf/timestamp.proto"}));

  std::unique_ptr<pb::DescriptorPool> pool = BuildPool(files);
  const pb::ServiceDescriptor* service = pool->FindServiceByName("shuttle.v1.AgentService");
  ASSERT_NE(service, nullptr);
  const pb::MethodDescriptor* authorize = service->FindMethodByName("Authorize");
  ASSERT_NE(authorize, nullptr);
  EXPECT_EQ(authorize->input_type()->full_name(), "shuttle.v1.AuthorizeRequest");
  // The rebuilt type is the compiled one, field for field.
  pb::DescriptorProto rebuilt, compiled;
  authorize->input_type()->CopyTo(&rebuilt);
  v1::AuthorizeRequest::descriptor()->CopyTo(&compiled);
  EXPECT_EQ(rebuilt.SerializeAsString(), compiled.SerializeAsString());
}

TEST_F(ReflectionServiceTest, FileContainingMethodOrMessageIsItsFile) {
  std::vector<ServerReflectionResponse> responses =
      Exchange({FileContainingSymbol("shuttle.v1.AgentService.Authorize"),
                FileContainingSymbol(v1::AuthorizeRequest::descriptor()->full_name()),
                FileContainingSymbol("shuttle.v1.Verdict")});
  ASSERT_EQ(responses.size(), 3u);
  EXPECT_EQ(Names(Files(responses[0])).front(), "shuttle/v1/agent.proto");
  EXPECT_EQ(Names(Files(responses[1])).front(), "shuttle/v1/agent.proto");
  EXPECT_EQ(Names(Files(responses[2])).front(), "shuttle/v1/types.proto");
}

TEST_F(ReflectionServiceTest, FileByFilename) {
  ServerReflectionResponse resp = Ask(FileByFilename("shuttle/v1/types.proto"));
  std::vector<pb::FileDescriptorProto> files = Files(resp);
  ASSERT_FALSE(files.empty()) << resp.DebugString();
  EXPECT_EQ(files.front().name(), "shuttle/v1/types.proto");
  EXPECT_EQ(files.front().package(), "shuttle.v1");
  std::unique_ptr<pb::DescriptorPool> pool = BuildPool(files);
  EXPECT_NE(pool->FindEnumTypeByName("shuttle.v1.Verdict"), nullptr);
}

TEST_F(ReflectionServiceTest, ReflectionDescribesItselfUnderTheNameClientsExpect) {
  ServerReflectionResponse resp =
      Ask(FileContainingSymbol("grpc.reflection.v1alpha.ServerReflection"));
  std::vector<pb::FileDescriptorProto> files = Files(resp);
  ASSERT_EQ(files.size(), 1u) << resp.DebugString();  // It imports nothing.
  EXPECT_EQ(files.front().name(), "grpc/reflection/v1alpha/reflection.proto");
  std::unique_ptr<pb::DescriptorPool> pool = BuildPool(files);
  const pb::MethodDescriptor* info =
      pool->FindMethodByName("grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo");
  ASSERT_NE(info, nullptr);
  EXPECT_TRUE(info->client_streaming());
  EXPECT_TRUE(info->server_streaming());
}

TEST_F(ReflectionServiceTest, UnknownNamesAreNotFoundNamingThem) {
  std::vector<ServerReflectionResponse> responses = Exchange(
      {FileContainingSymbol("shuttle.v1.NoSuchService"), FileByFilename("shuttle/v1/nope.proto"),
       FileContainingSymbol("grpc.health.v1.Health")});
  ASSERT_EQ(responses.size(), 3u);
  EXPECT_EQ(responses[0].error_response().error_code(), 5);
  EXPECT_THAT(responses[0].error_response().error_message(), HasSubstr("shuttle.v1.NoSuchService"));
  EXPECT_EQ(responses[1].error_response().error_code(), 5);
  EXPECT_THAT(responses[1].error_response().error_message(), HasSubstr("shuttle/v1/nope.proto"));
  // Listed (gRPC serves it) but gRPC's health service has no protobuf descriptor to give.
  EXPECT_EQ(responses[2].error_response().error_code(), 5);
}

TEST_F(ReflectionServiceTest, EmptyOrUnknownRequestIsAnErrorAndTheStreamGoesOn) {
  ServerReflectionRequest unknown;
  unknown.GetReflection()->MutableUnknownFields(&unknown)->AddVarint(99, 1);
  std::vector<ServerReflectionResponse> responses =
      Exchange({ServerReflectionRequest(), unknown, ListServices()});
  ASSERT_EQ(responses.size(), 3u);
  EXPECT_EQ(responses[0].error_response().error_code(), 3);  // INVALID_ARGUMENT
  EXPECT_THAT(responses[0].error_response().error_message(), HasSubstr("sets none of"));
  EXPECT_EQ(responses[1].error_response().error_code(), 12);  // UNIMPLEMENTED
  EXPECT_TRUE(responses[2].has_list_services_response());
}

TEST_F(ReflectionServiceTest, SeveralRequestsOnOneStreamAreAnsweredInOrder) {
  ServerReflectionRequest with_host = ListServices();
  with_host.set_host("controller.example:7443");
  const std::vector<ServerReflectionRequest> requests = {
      with_host,
      FileContainingSymbol("shuttle.v1.AgentService"),
      FileContainingSymbol("shuttle.v1.Missing"),
      FileByFilename("shuttle/v1/types.proto"),
      ListServices(),
  };
  std::vector<ServerReflectionResponse> responses = Exchange(requests);
  ASSERT_EQ(responses.size(), requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(responses[i].original_request().SerializeAsString(), requests[i].SerializeAsString())
        << "response " << i << " answers another request";
  }
  EXPECT_EQ(responses[0].valid_host(), "controller.example:7443");
  EXPECT_TRUE(responses[0].has_list_services_response());
  EXPECT_EQ(Names(Files(responses[1])).front(), "shuttle/v1/agent.proto");
  EXPECT_EQ(responses[2].error_response().error_code(), 5);
  EXPECT_EQ(Names(Files(responses[3])).front(), "shuttle/v1/types.proto");
  EXPECT_TRUE(responses[4].has_list_services_response());
}

TEST_F(ReflectionServiceTest, StreamWithNoRequestEndsOk) { EXPECT_TRUE(Exchange({}).empty()); }

// Extensions: nothing in the binary declares one, so the service answers from a pool of its own.
constexpr char kBaseFile[] = R"pb(
  name: "test/base.proto"
  package: "test"
  syntax: "proto2"
  message_type {
    name: "Base"
    extension_range { start: 100 end: 200 }
  }
)pb";
constexpr char kExtensionFile[] = R"pb(
  name: "test/ext.proto"
  package: "test"
  syntax: "proto2"
  dependency: "test/base.proto"
  extension { name: "b" number: 150 label: LABEL_OPTIONAL type: TYPE_INT32 extendee: ".test.Base" }
  extension { name: "a" number: 101 label: LABEL_OPTIONAL type: TYPE_STRING extendee: ".test.Base" }
)pb";

class ReflectionExtensionTest : public ReflectionServiceTest {
 protected:
  void SetUp() override {
    for (const char* text : {kBaseFile, kExtensionFile}) {
      pb::FileDescriptorProto file;
      ASSERT_TRUE(pb::TextFormat::ParseFromString(text, &file)) << text;
      ASSERT_NE(pool_.BuildFile(file), nullptr) << file.name();
    }
    Start(&pool_);
  }

  pb::DescriptorPool pool_;
};

TEST_F(ReflectionExtensionTest, FileContainingExtensionAndAllExtensionNumbers) {
  ServerReflectionRequest by_extension;
  by_extension.mutable_file_containing_extension()->set_containing_type("test.Base");
  by_extension.mutable_file_containing_extension()->set_extension_number(150);
  ServerReflectionRequest numbers;
  numbers.set_all_extension_numbers_of_type("test.Base");
  std::vector<ServerReflectionResponse> responses = Exchange({by_extension, numbers});
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_THAT(Names(Files(responses[0])), ElementsAre("test/ext.proto", "test/base.proto"));
  EXPECT_EQ(responses[1].all_extension_numbers_response().base_type_name(), "test.Base");
  EXPECT_THAT(responses[1].all_extension_numbers_response().extension_number(),
              ElementsAre(101, 150));
}

TEST_F(ReflectionExtensionTest, UnknownExtensionOrTypeIsNotFound) {
  ServerReflectionRequest no_extension;
  no_extension.mutable_file_containing_extension()->set_containing_type("test.Base");
  no_extension.mutable_file_containing_extension()->set_extension_number(120);
  ServerReflectionRequest no_type;
  no_type.set_all_extension_numbers_of_type("test.Nope");
  std::vector<ServerReflectionResponse> responses = Exchange({no_extension, no_type});
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(responses[0].error_response().error_code(), 5);
  EXPECT_THAT(responses[0].error_response().error_message(), HasSubstr("extension 120"));
  EXPECT_EQ(responses[1].error_response().error_code(), 5);
  EXPECT_THAT(responses[1].error_response().error_message(), HasSubstr("test.Nope"));
}

}  // namespace
}  // namespace shuttle::controller
