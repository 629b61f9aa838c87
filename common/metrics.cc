#include "common/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>

#include <array>
#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace shuttle {
namespace {

constexpr size_t kMaxMethodLabels = 200;
constexpr char kOtherMethod[] = "other";
// grpc::StatusCode values 0 (OK) .. 16 (UNAUTHENTICATED).
constexpr size_t kStatusCodes = 17;

// The metrics of one method, resolved once: the per-call path does no label lookup, no
// allocation and takes no family lock (prometheus-cpp's Family::Add builds a label map and
// locks the family on every call, which was a visible part of a small RPC's cost).
struct MethodMetrics {
  std::string label;
  prometheus::Histogram* duration = nullptr;
  // Indexed by grpc::StatusCode (0..16); resolved on the first call that ends with that code.
  std::array<std::atomic<prometheus::Counter*>, kStatusCodes> requests{};
};

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

  // The metrics of `method`. The first kMaxMethodLabels methods keep their names; later ones
  // share the label "other" (bounds the label set). The result lives as long as this object.
  MethodMetrics& ForMethod(const char* method) {
    const absl::string_view name = method != nullptr ? method : "unknown";
    {
      absl::ReaderMutexLock lock(&mu_);
      auto it = methods_.find(name);
      if (it != methods_.end()) return *it->second;
    }
    absl::MutexLock lock(&mu_);
    auto it = methods_.find(name);
    if (it != methods_.end()) return *it->second;
    std::string label = methods_.size() < kMaxMethodLabels ? std::string(name) : kOtherMethod;
    auto metrics = std::make_unique<MethodMetrics>();
    metrics->duration = &duration_.Add({{"method", label}}, GrpcLatencyBuckets());
    metrics->label = std::move(label);
    MethodMetrics& out = *metrics;
    methods_.emplace(std::string(name), std::move(metrics));
    return out;
  }

  prometheus::Counter& Requests(MethodMetrics& method, grpc::StatusCode code) {
    const size_t index = static_cast<size_t>(code);
    if (index >= kStatusCodes) {
      return requests_.Add({{"method", method.label}, {"code", std::string(GrpcCodeName(code))}});
    }
    prometheus::Counter* counter = method.requests[index].load(std::memory_order_acquire);
    if (counter == nullptr) {
      // Family::Add returns the same counter for the same labels, so a race here is harmless.
      counter =
          &requests_.Add({{"method", method.label}, {"code", std::string(GrpcCodeName(code))}});
      method.requests[index].store(counter, std::memory_order_release);
    }
    return *counter;
  }

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& duration_;
  absl::Mutex mu_;
  // Keyed by the method's full name (gRPC hands registered methods' names as static strings,
  // but unregistered ones are per call, so the key is the text). Values never move or go.
  absl::flat_hash_map<std::string, std::unique_ptr<MethodMetrics>> methods_ ABSL_GUARDED_BY(mu_);
};

// One per RPC; gRPC runs its hooks one batch at a time, so it needs no lock.
class GrpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit GrpcMetricsInterceptor(GrpcMetrics& metrics, MethodMetrics& method)
      : metrics_(metrics), method_(method), start_(std::chrono::steady_clock::now()) {}

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
    method_.duration->Observe(elapsed.count());
    metrics_.Requests(method_, code).Increment();
  }

  GrpcMetrics& metrics_;
  MethodMetrics& method_;
  const std::chrono::steady_clock::time_point start_;
  bool recorded_ = false;
};

class GrpcMetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  GrpcMetricsInterceptorFactory(std::shared_ptr<GrpcMetrics> metrics,
                                absl::flat_hash_set<std::string> skipped)
      : metrics_(std::move(metrics)), skipped_(std::move(skipped)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    // No interceptor at all (nullptr) lets gRPC skip its interception machinery for the call.
    if (!skipped_.empty() && info->method() != nullptr &&
        skipped_.contains(absl::string_view(info->method()))) {
      return nullptr;
    }
    return new GrpcMetricsInterceptor(*metrics_, metrics_->ForMethod(info->method()));
  }

 private:
  const std::shared_ptr<GrpcMetrics> metrics_;
  const absl::flat_hash_set<std::string> skipped_;
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

struct GrpcMetricsAccess {
  static GrpcCallRecorder Make(std::shared_ptr<GrpcMetrics> metrics, MethodMetrics& method) {
    GrpcCallRecorder recorder;
    recorder.method_ = &method;
    recorder.state_ = std::move(metrics);
    return recorder;
  }
  static void Record(const GrpcCallRecorder& recorder, grpc::StatusCode code, double seconds) {
    if (recorder.method_ == nullptr) return;
    auto& metrics = *static_cast<GrpcMetrics*>(recorder.state_.get());
    auto& method = *static_cast<MethodMetrics*>(recorder.method_);
    method.duration->Observe(seconds);
    metrics.Requests(method, code).Increment();
  }
};

void GrpcCallRecorder::Record(grpc::StatusCode code, double seconds) const {
  GrpcMetricsAccess::Record(*this, code, seconds);
}

GrpcMetricsSetup MakeGrpcMetrics(prometheus::Registry& registry,
                                 const std::vector<std::string>& self_recorded,
                                 absl::string_view prefix) {
  auto metrics = std::make_shared<GrpcMetrics>(registry, prefix);
  GrpcMetricsSetup setup;
  absl::flat_hash_set<std::string> skipped;
  for (const std::string& method : self_recorded) {
    skipped.insert(method);
    setup.recorders.push_back(GrpcMetricsAccess::Make(metrics, metrics->ForMethod(method.c_str())));
  }
  setup.interceptors.push_back(
      std::make_unique<GrpcMetricsInterceptorFactory>(metrics, std::move(skipped)));
  return setup;
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeGrpcMetricsInterceptorFactory(prometheus::Registry& registry, absl::string_view prefix) {
  return std::make_unique<GrpcMetricsInterceptorFactory>(
      std::make_shared<GrpcMetrics>(registry, prefix), absl::flat_hash_set<std::string>());
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
