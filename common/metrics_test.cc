#include "common/metrics.h"

#include <arpa/inet.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/support/byte_buffer.h>
#include <netinet/in.h>
#include <prometheus/counter.h>
#include <prometheus/metric_family.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

// ---- Helpers ---------------------------------------------------------------------------------

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) {
      close(fd_);
    }
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// A plain HTTP/1.0 GET over a socket: returns the whole response, status line included.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) {
    return absl::ErrnoToStatus(errno, "socket");
  }
  timeval timeout{};
  timeout.tv_sec = 20;
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  const sockaddr_in addr = Loopback(port);
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::ErrnoToStatus(errno, "connect");
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      return absl::ErrnoToStatus(errno, "send");
    }
    sent += static_cast<size_t>(n);
  }
  std::string response;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0) {
      return absl::ErrnoToStatus(errno, "recv");
    }
    if (n == 0) {
      break;
    }
    response.append(buf, static_cast<size_t>(n));
  }
  return response;
}

// Echoes the request on any method, except methods ending in "/Fail", which get NOT_FOUND.
class EchoService final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new Reactor(absl::EndsWith(ctx->method(), "/Fail"));
  }

 private:
  class Reactor final : public grpc::ServerGenericBidiReactor {
   public:
    explicit Reactor(bool fail) : fail_(fail) { StartRead(&message_); }
    void OnReadDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request"));
      } else if (fail_) {
        Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "no such thing"));
      } else {
        StartWriteAndFinish(&message_, grpc::WriteOptions(), grpc::Status::OK);
      }
    }
    void OnDone() override { delete this; }

   private:
    const bool fail_;
    grpc::ByteBuffer message_;
  };
};

class GrpcServerWithMetrics {
 public:
  // Methods in `self_recorded` get no interceptor (MakeGrpcMetrics); their recorders land in
  // recorders().
  GrpcServerWithMetrics(prometheus::Registry& registry, absl::string_view prefix,
                        const std::vector<std::string>& self_recorded = {}) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterCallbackGenericService(&service_);
    if (self_recorded.empty()) {
      builder.experimental().SetInterceptorCreators(MakeGrpcMetricsInterceptors(registry, prefix));
    } else {
      GrpcMetricsSetup setup = MakeGrpcMetrics(registry, self_recorded, prefix);
      recorders_ = std::move(setup.recorders);
      builder.experimental().SetInterceptorCreators(std::move(setup.interceptors));
    }
    server_ = builder.BuildAndStart();
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials());
  }
  ~GrpcServerWithMetrics() {
    if (server_ != nullptr) {
      server_->Shutdown();
    }
  }
  bool started() const { return server_ != nullptr && port_ > 0; }
  const std::vector<GrpcCallRecorder>& recorders() const { return recorders_; }

  grpc::Status Call(const std::string& method) {
    grpc::GenericStub stub(channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    grpc::Slice slice(std::string("hello"));
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    absl::Notification done;
    grpc::Status result;
    stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                   [&](grpc::Status status) {
                     result = std::move(status);
                     done.Notify();
                   });
    done.WaitForNotification();
    return result;
  }

 private:
  EchoService service_;
  std::vector<GrpcCallRecorder> recorders_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

bool HasLabels(const prometheus::ClientMetric& metric,
               const std::vector<std::pair<std::string, std::string>>& labels) {
  for (const auto& [name, value] : labels) {
    bool found = false;
    for (const prometheus::ClientMetric::Label& label : metric.label) {
      found = found || (label.name == name && label.value == value);
    }
    if (!found) {
      return false;
    }
  }
  return metric.label.size() == labels.size();
}

// The metric of `family` with exactly `labels`, or nullptr.
const prometheus::ClientMetric* FindMetric(
    const std::vector<prometheus::MetricFamily>& families, const std::string& family,
    const std::vector<std::pair<std::string, std::string>>& labels) {
  for (const prometheus::MetricFamily& f : families) {
    if (f.name != family) {
      continue;
    }
    for (const prometheus::ClientMetric& metric : f.metric) {
      if (HasLabels(metric, labels)) {
        return &metric;
      }
    }
  }
  return nullptr;
}

double CounterValue(prometheus::Registry& registry, const std::string& family,
                    const std::vector<std::pair<std::string, std::string>>& labels) {
  const std::vector<prometheus::MetricFamily> families = registry.Collect();
  const prometheus::ClientMetric* metric = FindMetric(families, family, labels);
  return metric == nullptr ? -1 : metric->counter.value;
}

uint64_t HistogramCount(prometheus::Registry& registry, const std::string& family,
                        const std::vector<std::pair<std::string, std::string>>& labels) {
  const std::vector<prometheus::MetricFamily> families = registry.Collect();
  const prometheus::ClientMetric* metric = FindMetric(families, family, labels);
  return metric == nullptr ? 0 : metric->histogram.sample_count;
}

// ---- MetricsServer ---------------------------------------------------------------------------

TEST(MetricsServerTest, ServesRegisteredMetricsOverHttp) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsServer> server,
                               MetricsServer::Create("127.0.0.1:0"));
  ASSERT_GT(server->port(), 0);
  EXPECT_EQ(server->address(), absl::StrCat("127.0.0.1:", server->port()));
  prometheus::Counter& events = prometheus::BuildCounter()
                                    .Name("shuttle_test_events_total")
                                    .Help("Events seen by the test.")
                                    .Register(server->registry())
                                    .Add({{"kind", "demo"}});
  events.Increment(3);

  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string response, HttpGet(server->port(), "/metrics"));
  EXPECT_THAT(response, ::testing::StartsWith("HTTP/1.1 200"));
  EXPECT_THAT(response, HasSubstr("# TYPE shuttle_test_events_total counter"));
  EXPECT_THAT(response, HasSubstr("shuttle_test_events_total{kind=\"demo\"} 3"));
}

TEST(MetricsServerTest, ServesExtraCollectables) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsServer> server,
                               MetricsServer::Create("127.0.0.1:0"));
  auto other = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter().Name("shuttle_other_total").Register(*other).Add({}).Increment();
  server->RegisterCollectable(other);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string response, HttpGet(server->port(), "/metrics"));
  EXPECT_THAT(response, HasSubstr("shuttle_other_total 1"));
}

TEST(MetricsServerTest, BindFailuresNameTheAddress) {
  // Hold a listening socket so its port is taken.
  Fd holder(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_GE(holder.get(), 0);
  sockaddr_in addr = Loopback(0);
  ASSERT_EQ(bind(holder.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(holder.get(), 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(holder.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string taken = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));

  EXPECT_THAT(MetricsServer::Create(taken),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr(taken)));
  EXPECT_THAT(MetricsServer::Create("no-port-here"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no-port-here")));
  EXPECT_THAT(MetricsServer::Create("127.0.0.1:99999"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("127.0.0.1:99999")));
}

// ---- gRPC interceptor ------------------------------------------------------------------------

TEST(GrpcMetricsTest, CountsCallsByMethodAndCode) {
  prometheus::Registry registry;
  GrpcServerWithMetrics server(registry, "shuttle");
  ASSERT_TRUE(server.started());

  EXPECT_TRUE(server.Call("/shuttle.test.Echo/Say").ok());
  EXPECT_TRUE(server.Call("/shuttle.test.Echo/Say").ok());
  EXPECT_EQ(server.Call("/shuttle.test.Echo/Fail").error_code(), grpc::StatusCode::NOT_FOUND);

  EXPECT_EQ(CounterValue(registry, "shuttle_grpc_requests_total",
                         {{"method", "/shuttle.test.Echo/Say"}, {"code", "OK"}}),
            2);
  EXPECT_EQ(CounterValue(registry, "shuttle_grpc_requests_total",
                         {{"method", "/shuttle.test.Echo/Fail"}, {"code", "NOT_FOUND"}}),
            1);
  EXPECT_EQ(CounterValue(registry, "shuttle_grpc_requests_total",
                         {{"method", "/shuttle.test.Echo/Fail"}, {"code", "OK"}}),
            -1);
  EXPECT_EQ(HistogramCount(registry, "shuttle_grpc_request_duration_seconds",
                           {{"method", "/shuttle.test.Echo/Say"}}),
            2u);
  EXPECT_EQ(HistogramCount(registry, "shuttle_grpc_request_duration_seconds",
                           {{"method", "/shuttle.test.Echo/Fail"}}),
            1u);
}

TEST(GrpcMetricsTest, PrefixNamesTheFamiliesAndBucketsSpan50usTo10s) {
  prometheus::Registry registry;
  GrpcServerWithMetrics server(registry, "shuttle_agent");
  ASSERT_TRUE(server.started());
  EXPECT_TRUE(server.Call("/shuttle.test.Echo/Say").ok());
  EXPECT_EQ(CounterValue(registry, "shuttle_agent_grpc_requests_total",
                         {{"method", "/shuttle.test.Echo/Say"}, {"code", "OK"}}),
            1);

  const std::vector<prometheus::MetricFamily> families = registry.Collect();
  const prometheus::ClientMetric* histogram =
      FindMetric(families, "shuttle_agent_grpc_request_duration_seconds",
                 {{"method", "/shuttle.test.Echo/Say"}});
  ASSERT_NE(histogram, nullptr);
  ASSERT_FALSE(histogram->histogram.bucket.empty());
  EXPECT_DOUBLE_EQ(histogram->histogram.bucket.front().upper_bound, 50e-6);
  // The last explicit bound is 10s; prometheus-cpp adds +Inf after it.
  const auto& buckets = histogram->histogram.bucket;
  EXPECT_DOUBLE_EQ(buckets[buckets.size() - 2].upper_bound, 10.0);
  EXPECT_EQ(buckets.back().cumulative_count, 1u);
}

TEST(GrpcMetricsTest, SelfRecordedMethodsSkipTheInterceptorAndRecordThroughTheirRecorder) {
  prometheus::Registry registry;
  GrpcServerWithMetrics server(registry, "shuttle", {"/shuttle.test.Echo/Say"});
  ASSERT_TRUE(server.started());
  ASSERT_EQ(server.recorders().size(), 1u);
  EXPECT_TRUE(server.Call("/shuttle.test.Echo/Say").ok());
  EXPECT_EQ(server.Call("/shuttle.test.Echo/Fail").error_code(), grpc::StatusCode::NOT_FOUND);
  // The interceptor counted Fail only.
  EXPECT_EQ(CounterValue(registry, "shuttle_grpc_requests_total",
                         {{"method", "/shuttle.test.Echo/Fail"}, {"code", "NOT_FOUND"}}),
            1);
  EXPECT_EQ(CounterValue(registry, "shuttle_grpc_requests_total",
                         {{"method", "/shuttle.test.Echo/Say"}, {"code", "OK"}}),
            -1);
  // What the handler records shows under the same families and labels.
  server.recorders()[0].Record(grpc::StatusCode::OK, 0.001);
  server.recorders()[0].Record(grpc::StatusCode::OK, 0.002);
  server.recorders()[0].Record(grpc::StatusCode::PERMISSION_DENIED, 0.001);
  EXPECT_EQ(CounterValue(registry, "shuttle_grpc_requests_total",
                         {{"method", "/shuttle.test.Echo/Say"}, {"code", "OK"}}),
            2);
  EXPECT_EQ(CounterValue(registry, "shuttle_grpc_requests_total",
                         {{"method", "/shuttle.test.Echo/Say"}, {"code", "PERMISSION_DENIED"}}),
            1);
  EXPECT_EQ(HistogramCount(registry, "shuttle_grpc_request_duration_seconds",
                           {{"method", "/shuttle.test.Echo/Say"}}),
            3u);
  // A default recorder records nothing (and does not crash).
  GrpcCallRecorder().Record(grpc::StatusCode::OK, 1.0);
}

TEST(GrpcMetricsTest, BoundsTheNumberOfMethodLabels) {
  prometheus::Registry registry;
  GrpcServerWithMetrics server(registry, "shuttle");
  ASSERT_TRUE(server.started());
  for (int i = 0; i < 205; ++i) {
    ASSERT_TRUE(server.Call(absl::StrCat("/made.up.Service/M", i)).ok()) << i;
  }
  EXPECT_EQ(CounterValue(registry, "shuttle_grpc_requests_total",
                         {{"method", "/made.up.Service/M0"}, {"code", "OK"}}),
            1);
  EXPECT_EQ(
      CounterValue(registry, "shuttle_grpc_requests_total", {{"method", "other"}, {"code", "OK"}}),
      5);
  EXPECT_EQ(CounterValue(registry, "shuttle_grpc_requests_total",
                         {{"method", "/made.up.Service/M204"}, {"code", "OK"}}),
            -1);
}

TEST(GrpcMetricsTest, ScrapedTogetherWithTheMetricsServer) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetricsServer> metrics,
                               MetricsServer::Create("127.0.0.1:0"));
  GrpcServerWithMetrics server(metrics->registry(), "shuttle");
  ASSERT_TRUE(server.started());
  EXPECT_EQ(server.Call("/shuttle.test.Echo/Fail").error_code(), grpc::StatusCode::NOT_FOUND);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::string response, HttpGet(metrics->port(), "/metrics"));
  EXPECT_THAT(response, HasSubstr("shuttle_grpc_requests_total{"));
  EXPECT_THAT(response, HasSubstr("method=\"/shuttle.test.Echo/Fail\""));
  EXPECT_THAT(response, HasSubstr("code=\"NOT_FOUND\""));
  EXPECT_THAT(response, HasSubstr("shuttle_grpc_request_duration_seconds_bucket{"));
}

TEST(GrpcMetricsTest, CodeNames) {
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::OK), "OK");
  EXPECT_EQ(GrpcCodeName(grpc::StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
  EXPECT_EQ(GrpcCodeName(static_cast<grpc::StatusCode>(99)), "UNKNOWN");
}

}  // namespace
}  // namespace shuttle
