// GrpcAsker against the agent client's fake controller (a real gRPC server on 127.0.0.1:0):
// answers, the deadline, a stopped controller, shutdown; and the decider over it, falling to
// the fail mode when the controller is gone.
#include "agent/decide/ask_client.h"

#include <errno.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include <grpcpp/security/credentials.h>

#include "absl/synchronization/mutex.h"
#include "agent/client/fake_controller.h"
#include "agent/decide/ask_cache.h"
#include "agent/decide/ask_testing.h"
#include "agent/decide/policy_decider.h"
#include "agent/decide/policy_holder.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace shuttle::agent {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(20);

// Collects the one result of an Authorize.
class Result {
 public:
  Asker::Done Callback() {
    return [this](absl::StatusOr<v1::AuthorizeResponse> result) {
      absl::MutexLock lock(&mu_);
      result_ = std::move(result);
    };
  }
  std::optional<absl::StatusOr<v1::AuthorizeResponse>> Wait(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return result_.has_value(); };
    mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
    return result_;
  }

 private:
  absl::Mutex mu_;
  std::optional<absl::StatusOr<v1::AuthorizeResponse>> result_ ABSL_GUARDED_BY(mu_);
};

v1::AuthorizeRequest Request() {
  v1::AuthorizeRequest request;
  request.mutable_interaction()->set_subject_vm("web");
  request.mutable_interaction()->set_kind(v1::UNIX_CONNECT);
  request.mutable_interaction()->set_object_name("/run/db.sock");
  request.set_policy("asks");
  request.set_rule("ask-db");
  request.set_policy_version(3);
  return request;
}

class GrpcAskerTest : public ::testing::Test {
 protected:
  GrpcAskerTest() : controller_(std::make_unique<testing::FakeController>()) {
    GrpcAskerOptions options;
    options.controller_address = controller_->address();
    options.host_id = "host-a";
    options.credentials = grpc::InsecureChannelCredentials();
    asker_ = std::make_unique<GrpcAsker>(std::move(options));
  }

  std::unique_ptr<testing::FakeController> controller_;
  std::unique_ptr<GrpcAsker> asker_;
};

TEST_F(GrpcAskerTest, SendsTheRequestAndReturnsTheAnswer) {
  controller_->SetAuthorizeAnswer(testing::Answer(v1::VERDICT_DENY, absl::Seconds(5)));
  Result result;
  asker_->Authorize(Request(), absl::Seconds(10), result.Callback());
  auto got = result.Wait(kWait);
  ASSERT_TRUE(got.has_value());
  ASSERT_THAT(*got, IsOk());
  EXPECT_EQ((*got)->decision().verdict(), v1::VERDICT_DENY);
  EXPECT_EQ((*got)->ttl().seconds(), 5);
  std::vector<v1::AuthorizeRequest> seen = controller_->authorize_requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].interaction().host_id(), "host-a") << "filled in by the asker";
  EXPECT_EQ(seen[0].rule(), "ask-db");
  EXPECT_EQ(seen[0].policy_version(), 3u);
}

TEST_F(GrpcAskerTest, ControllerErrorsComeBackAsStatus) {
  controller_->SetAuthorizeAnswer(v1::AuthorizeResponse(),
                                  grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "not yours"));
  Result result;
  asker_->Authorize(Request(), absl::Seconds(10), result.Callback());
  auto got = result.Wait(kWait);
  ASSERT_TRUE(got.has_value());
  EXPECT_THAT(*got, StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("not yours")));
}

TEST_F(GrpcAskerTest, SlowControllerHitsTheDeadline) {
  controller_->HoldAuthorize();
  Result result;
  asker_->Authorize(Request(), absl::Milliseconds(200), result.Callback());
  auto got = result.Wait(kWait);
  ASSERT_TRUE(got.has_value());
  EXPECT_THAT(*got, StatusIs(absl::StatusCode::kDeadlineExceeded, ::testing::_));
  EXPECT_TRUE(controller_->WaitForAuthorize(1, kWait)) << "the request did reach the controller";
  controller_->ReleaseAuthorize();
}

TEST_F(GrpcAskerTest, StoppedControllerIsUnavailable) {
  controller_.reset();
  Result result;
  asker_->Authorize(Request(), absl::Seconds(10), result.Callback());
  auto got = result.Wait(kWait);
  ASSERT_TRUE(got.has_value());
  EXPECT_THAT(*got, StatusIs(absl::StatusCode::kUnavailable, ::testing::_));
}

TEST_F(GrpcAskerTest, ShutdownCancelsCallsInFlightAndRefusesNewOnes) {
  controller_->HoldAuthorize();
  Result held;
  asker_->Authorize(Request(), absl::Seconds(60), held.Callback());
  ASSERT_TRUE(controller_->WaitForAuthorize(1, kWait));
  asker_->Shutdown();  // Returns only once the callback has run.
  auto got = held.Wait(absl::ZeroDuration());
  ASSERT_TRUE(got.has_value());
  EXPECT_THAT(*got, StatusIs(absl::StatusCode::kCancelled, ::testing::_));
  EXPECT_EQ(asker_->inflight(), 0u);

  Result later;
  asker_->Authorize(Request(), absl::Seconds(60), later.Callback());
  got = later.Wait(absl::ZeroDuration());
  ASSERT_TRUE(got.has_value()) << "answered inline";
  EXPECT_THAT(*got, StatusIs(absl::StatusCode::kCancelled, HasSubstr("shutting down")));
  controller_->ReleaseAuthorize();
}

// The decider over the real asker: the answer, then the controller stops and the fail mode
// decides (counted as "unavailable"), while the cached answer keeps serving within its ttl.
TEST_F(GrpcAskerTest, DeciderFallsToTheFailModeWhenTheControllerStops) {
  std::string error;
  auto compiled = testing::CompileYaml(testing::kAskPolicy, 3, &error);
  ASSERT_NE(compiled, nullptr) << error;
  testing::ReplyLog replies;
  PolicyHolder holder;
  holder.Set(compiled);
  prometheus::Registry metrics;
  AskCache cache;
  PolicyDecider decider(holder, metrics);
  decider.EnableAsk(*asker_, cache);
  auto decide = [&](const char* path, int id) {
    testing::RecordingScope scope(replies, id);
    return testing::DecideUnixConnect(decider, path, &scope);
  };

  controller_->SetAuthorizeAnswer(testing::Answer(v1::VERDICT_ALLOW));
  EXPECT_TRUE(decide("/run/db.sock", 1).is_deferred());
  auto first = replies.Wait(1, kWait);
  ASSERT_TRUE(first.has_value());
  EXPECT_TRUE(first->answer.is_continue());

  controller_.reset();
  EXPECT_TRUE(decide("/run/other.sock", 2).is_deferred());
  auto second = replies.Wait(2, kWait);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->answer.error, EACCES) << "fail closed";
  EXPECT_FALSE(cache.reachable());
  const std::string scraped = prometheus::TextSerializer().Serialize(metrics.Collect());
  EXPECT_THAT(scraped,
              HasSubstr("shuttle_agent_fail_mode_decisions_total{reason=\"unavailable\"} 1"));
  EXPECT_TRUE(decide("/run/db.sock", 3).is_continue()) << "cached before the controller went";
  asker_->Shutdown();  // Before the decider and cache go.
}

}  // namespace
}  // namespace shuttle::agent
