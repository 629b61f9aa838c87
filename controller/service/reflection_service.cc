#include "controller/service/reflection_service.h"

#include <google/protobuf/descriptor.pb.h>

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace shuttle::controller {
namespace {

namespace pb = google::protobuf;
using grpc::reflection::v1alpha::FileDescriptorResponse;
using grpc::reflection::v1alpha::ServerReflectionRequest;
using grpc::reflection::v1alpha::ServerReflectionResponse;

// Appends `file` and then, depth first, the files it imports, each once (`seen`): a client
// needs every dependency to build the file's descriptors.
void AddFileAndDependencies(const pb::FileDescriptor* file,
                            absl::flat_hash_set<const pb::FileDescriptor*>& seen,
                            FileDescriptorResponse& out) {
  if (!seen.insert(file).second) return;
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out.add_file_descriptor_proto());
  for (int i = 0; i < file->dependency_count(); ++i) {
    AddFileAndDependencies(file->dependency(i), seen, out);
  }
}

absl::Status AnswerFile(const pb::FileDescriptor* file, ServerReflectionResponse& response) {
  absl::flat_hash_set<const pb::FileDescriptor*> seen;
  AddFileAndDependencies(file, seen, *response.mutable_file_descriptor_response());
  return absl::OkStatus();
}

// Reads the server one message at a time and writes one answer per request, so at most one
// operation is in flight and the reactions never overlap.
class InfoReactor final
    : public grpc::ServerBidiReactor<ServerReflectionRequest, ServerReflectionResponse> {
 public:
  explicit InfoReactor(const ReflectionServiceImpl& service) : service_(service) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // The client half-closed, or the call is cancelled: nothing more to answer.
      Finish(grpc::Status::OK);
      return;
    }
    response_ = service_.Answer(request_);
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {  // The call is broken (cancelled, or the client went away).
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "reflection response not sent"));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  const ReflectionServiceImpl& service_;
  ServerReflectionRequest request_;
  ServerReflectionResponse response_;
};

}  // namespace

ReflectionServiceImpl::ReflectionServiceImpl(std::vector<std::string> service_names,
                                             const pb::DescriptorPool* pool)
    : service_names_(std::move(service_names)), pool_(*pool) {}

grpc::ServerBidiReactor<ServerReflectionRequest, ServerReflectionResponse>*
ReflectionServiceImpl::ServerReflectionInfo(grpc::CallbackServerContext* /*ctx*/) {
  return new InfoReactor(*this);
}

ServerReflectionResponse ReflectionServiceImpl::Answer(
    const ServerReflectionRequest& request) const {
  ServerReflectionResponse response;
  response.set_valid_host(request.host());
  *response.mutable_original_request() = request;
  if (absl::Status status = Fill(request, response); !status.ok()) {
    // Replaces whatever part of an answer Fill made (one oneof).
    auto& error = *response.mutable_error_response();
    error.set_error_code(static_cast<int>(status.code()));  // Same numbers as grpc::StatusCode.
    error.set_error_message(std::string(status.message()));
  }
  return response;
}

absl::Status ReflectionServiceImpl::Fill(const ServerReflectionRequest& request,
                                         ServerReflectionResponse& response) const {
  switch (request.message_request_case()) {
    case ServerReflectionRequest::kFileByFilename: {
      const pb::FileDescriptor* file = pool_.FindFileByName(request.file_by_filename());
      if (file == nullptr) {
        return absl::NotFoundError(
            absl::StrCat("file \"", request.file_by_filename(), "\" not found"));
      }
      return AnswerFile(file, response);
    }
    case ServerReflectionRequest::kFileContainingSymbol: {
      const pb::FileDescriptor* file =
          pool_.FindFileContainingSymbol(request.file_containing_symbol());
      if (file == nullptr) {
        return absl::NotFoundError(
            absl::StrCat("symbol \"", request.file_containing_symbol(), "\" not found"));
      }
      return AnswerFile(file, response);
    }
    case ServerReflectionRequest::kFileContainingExtension: {
      const auto& wanted = request.file_containing_extension();
      const pb::Descriptor* type = pool_.FindMessageTypeByName(wanted.containing_type());
      if (type == nullptr) {
        return absl::NotFoundError(
            absl::StrCat("message type \"", wanted.containing_type(), "\" not found"));
      }
      const pb::FieldDescriptor* extension =
          pool_.FindExtensionByNumber(type, wanted.extension_number());
      if (extension == nullptr) {
        return absl::NotFoundError(absl::StrCat("extension ", wanted.extension_number(), " of \"",
                                                wanted.containing_type(), "\" not found"));
      }
      return AnswerFile(extension->file(), response);
    }
    case ServerReflectionRequest::kAllExtensionNumbersOfType: {
      const pb::Descriptor* type =
          pool_.FindMessageTypeByName(request.all_extension_numbers_of_type());
      if (type == nullptr) {
        return absl::NotFoundError(absl::StrCat(
            "message type \"", request.all_extension_numbers_of_type(), "\" not found"));
      }
      std::vector<const pb::FieldDescriptor*> extensions;
      pool_.FindAllExtensions(type, &extensions);
      auto& out = *response.mutable_all_extension_numbers_response();
      out.set_base_type_name(type->full_name());
      for (const pb::FieldDescriptor* extension : extensions) {
        out.add_extension_number(extension->number());
      }
      std::sort(out.mutable_extension_number()->begin(), out.mutable_extension_number()->end());
      return absl::OkStatus();
    }
    case ServerReflectionRequest::kListServices: {
      auto& out = *response.mutable_list_services_response();
      for (const std::string& name : service_names_) out.add_service()->set_name(name);
      return absl::OkStatus();
    }
    case ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
      break;
  }
  // A field this version of the protocol does not know arrives as an unknown field.
  if (!request.GetReflection()->GetUnknownFields(request).empty()) {
    return absl::UnimplementedError(
        "reflection request of a kind this server does not know (an unknown field is set)");
  }
  return absl::InvalidArgumentError(
      "reflection request sets none of file_by_filename, file_containing_symbol, "
      "file_containing_extension, all_extension_numbers_of_type, list_services");
}

}  // namespace shuttle::controller
