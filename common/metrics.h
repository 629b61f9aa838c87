// Prometheus plumbing shared by the controller and the agent: the HTTP /metrics endpoint that
// owns the process's metric registry, and a gRPC server interceptor that counts every RPC by
// method and status code and records its latency.
//
//   SHUTTLE_ASSIGN_OR_RETURN(auto metrics, MetricsServer::Create("127.0.0.1:9464"));
//   builder.experimental().SetInterceptorCreators(
//       MakeGrpcMetricsInterceptors(metrics->registry(), "shuttle"));
#ifndef SHUTTLE_COMMON_METRICS_H_
#define SHUTTLE_COMMON_METRICS_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/collectable.h>
#include <prometheus/registry.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prometheus {
class Exposer;
}  // namespace prometheus

namespace shuttle {

// Serves GET /metrics (Prometheus text format) from a registry it owns, on its own threads.
// Components add their families to registry(); the registry, and so every metric reference
// taken from it, lives as long as the MetricsServer. Thread-safe.
class MetricsServer {
 public:
  // Listens on `bind_address`, "HOST:PORT" ("127.0.0.1:9464"; port 0 picks a free port, see
  // port()). UNAVAILABLE naming the address if it can't be bound (in use, bad address).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Create(const std::string& bind_address,
                                                               size_t num_threads = 2);
  // Stops serving. Once it has served a request this takes up to ~2 s (civetweb's stop polls).
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  prometheus::Registry& registry() { return *registry_; }
  std::shared_ptr<prometheus::Registry> shared_registry() { return registry_; }

  // Serves another collectable on /metrics too (e.g. a registry owned elsewhere). The server
  // holds it weakly: it stops being served when its last owner lets go.
  void RegisterCollectable(const std::weak_ptr<prometheus::Collectable>& collectable);

  // The port actually bound (useful with port 0).
  int port() const { return port_; }
  // The address to scrape: the host of `bind_address` with port().
  const std::string& address() const { return address_; }

 private:
  MetricsServer() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  std::string address_;
};

// Buckets of the RPC latency histogram, in seconds: 50us to 10s.
const std::vector<double>& GrpcLatencyBuckets();

// Adds to `registry`, and returns a server interceptor factory that maintains:
//   <prefix>_grpc_requests_total{method,code}         counter, one per finished RPC
//   <prefix>_grpc_request_duration_seconds{method}    histogram, from the call's arrival to its
//                                                     status being sent
// `method` is the full gRPC method ("/shuttle.v1.PolicyService/Apply"); after 200 distinct
// methods, further ones are counted as "other" so a client calling made-up methods can't grow
// the registry. `code` is the canonical name of the status sent ("OK", "NOT_FOUND", ...); an RPC
// torn down without one (e.g. the server shutting down mid-call) counts as "CANCELLED".
// `registry` must outlive the factory and every server it is installed in. Thread-safe.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
MakeGrpcMetricsInterceptorFactory(prometheus::Registry& registry,
                                  absl::string_view prefix = "shuttle");

// The same factory as the one-element vector ServerBuilder::experimental()
// .SetInterceptorCreators() takes.
std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MakeGrpcMetricsInterceptors(prometheus::Registry& registry, absl::string_view prefix = "shuttle");

// Records the per-RPC metrics above for one method whose handler records them itself, because
// the method is left out of the interceptor (see MakeGrpcMetrics). Cheap: the method's metrics
// are resolved once, so Record() does no lookup and no allocation. Copyable; thread-safe.
class GrpcCallRecorder {
 public:
  GrpcCallRecorder() = default;  // Records nothing.
  // One finished call: its status code and the seconds from its arrival to its status.
  void Record(grpc::StatusCode code, double seconds) const;

 private:
  friend struct GrpcMetricsAccess;
  std::shared_ptr<void> state_;  // Keeps the shared metrics state alive.
  void* method_ = nullptr;
};

struct GrpcMetricsSetup {
  // For ServerBuilder::experimental().SetInterceptorCreators().
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  // One per method of `self_recorded`, in that order.
  std::vector<GrpcCallRecorder> recorders;
};

// Like MakeGrpcMetricsInterceptors, except that the methods named in `self_recorded` (full
// names, "/shuttle.v1.AgentService/Authorize") get no interceptor: their handlers record the
// same metrics through the returned recorders. For hot, tiny methods: gRPC 1.51's interception
// machinery costs a unary call about 20 us of server CPU, as much as the rest of a small call
// (measured with shuttle_bench_fleet: Authorize 50 us/call with it, 30 without).
GrpcMetricsSetup MakeGrpcMetrics(prometheus::Registry& registry,
                                 const std::vector<std::string>& self_recorded,
                                 absl::string_view prefix = "shuttle");

// Canonical name of a gRPC status code ("OK", "INVALID_ARGUMENT", ...); "UNKNOWN" for values
// outside the enum.
absl::string_view GrpcCodeName(grpc::StatusCode code);

}  // namespace shuttle

#endif  // SHUTTLE_COMMON_METRICS_H_
