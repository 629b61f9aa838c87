#include "common/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>

#include <chrono>
#include <exception>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace shuttle {
namespace {

constexpr size_t kMaxMethodLabels = 200;
constexpr char kOtherMethod[] = "other";

// State shared by every interceptor one factory creates.
class GrpcMetrics {
 public:
  GrpcMetrics(prometheus::Registry& registry, absl::string_view prefix)
      : requests_(prometheus::BuildCounter()
                      .Name(absl::StrCat(prefix, "_grpc_requests_total"))
                      .Help("gRPC requests handled, by full method name and status code.")
                      .Register(registry)),
        duration_(prometheus::BuildHistogram()
                      .Name(absl::StrCat(prefix, "_grpc_request_duration_seconds"))
                      .Help("Time from a gRPC request's arrival to its status being sent.")
                      .Register(registry)) {}

  // Bounds the label set: the first kMaxMethodLabels methods keep their names.
  std::string MethodLabel(const char* method) {
    std::string name = method != nullptr ? method : "unknown";
    absl::MutexLock lock(&mu_);
    if (methods_.contains(name)) {
      return name;
    }
    if (methods_.size() >= kMaxMethodLabels) {
      return kOtherMethod;
    }
    methods_.insert(name);
    return name;
  }

  prometheus::Histogram& Duration(const std::string& method) {
    return duration_.Add({{"method", method}}, GrpcLatencyBuckets());
  }

  prometheus::Counter& Requests(const std::string& method, grpc::StatusCode code) {
    const std::string code_name(GrpcCodeName(code));
    return requests_.Add({{"method", method}, {"code", code_name}});
  }

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& duration_;
  absl::Mutex mu_;
  absl::flat_hash_set<std::string> methods_ ABSL_GUARDED_BY(mu_);
};

// One per RPC; gRPC runs its hooks one batch at a time, so it needs no lock.
class GrpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  GrpcMetricsInterceptor(GrpcMetrics& metrics, std::string method)
      : metrics_(metrics),
        method_(std::move(method)),
        duration_(metrics.Duration(method_)),
        start_(std::chrono::steady_clock::now()) {}

  ~GrpcMetricsInterceptor() override {
    if (!recorded_) {
      Record(grpc::StatusCode::CANCELLED);
    }
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      Record(methods->GetSendStatus().error_code());
    }
    methods->Proceed();
  }

 private:
  void Record(grpc::StatusCode code) {
    if (recorded_) {
      return;
    }
    recorded_ = true;
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start_;
    duration_.Observe(elapsed.count());
    metrics_.Requests(method_, code).Increment();
  }

  GrpcMetrics& metrics_;
  const std::string method_;
  prometheus::Histogram& duration_;
  const std::chrono::steady_clock::time_point start_;
  bool recorded_ = false;
};

class GrpcMetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  GrpcMetricsInterceptorFactory(prometheus::Registry& registry, absl::string_view prefix)
      : metrics_(registry, prefix) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new GrpcMetricsInterceptor(metrics_, metrics_.MethodLabel(info->method()));
  }

 private:
  GrpcMetrics metrics_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Create(
    const std::string& bind_address, size_t num_threads) {
  const size_t colon = bind_address.rfind(':');
  int requested_port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(bind_address.substr(colon + 1), &requested_port) || requested_port < 0 ||
      requested_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", bind_address, "\" is not HOST:PORT"));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->registry_ = std::make_shared<prometheus::Registry>();
  try {
    // civetweb reports bind failures by throwing from the constructor.
    server->exposer_ = std::make_unique<prometheus::Exposer>(bind_address, num_threads);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("serving metrics on ", bind_address, ": ", e.what()));
  }
  const std::vector<int> ports = server->exposer_->GetListeningPorts();
  if (ports.empty() || ports.front() <= 0) {
    return absl::UnavailableError(
        absl::StrCat("serving metrics on ", bind_address, ": no listening port"));
  }
  server->port_ = ports.front();
  server->address_ = absl::StrCat(bind_address.substr(0, colon), ":", server->port_);
  server->exposer_->RegisterCollectable(server->registry_);
  return server;
}

MetricsServer::~MetricsServer() = default;

void MetricsServer::RegisterCollectable(const std::weak_ptr<prometheus::Collectable>& collectable) {
  exposer_->RegisterCollectable(collectable);
}

const std::vector<double>& GrpcLatencyBuckets() {
  static const auto* const kBuckets =
      new std::vector<double>{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
                              50e-3, 100e-3, 250e-3, 500e-3, 1.0,  2.5,    5.0,  10.0};
  return *kBuckets;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeGrpcMetricsInterceptorFactory(prometheus::Registry& registry, absl::string_view prefix) {
  return std::make_unique<GrpcMetricsInterceptorFactory>(registry, prefix);
}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MakeGrpcMetricsInterceptors(prometheus::Registry& registry, absl::string_view prefix) {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> out;
  out.push_back(MakeGrpcMetricsInterceptorFactory(registry, prefix));
  return out;
}

absl::string_view GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

}  // namespace shuttle
