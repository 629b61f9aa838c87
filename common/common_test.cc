#include <string>

#include "common/clock.h"
#include "common/flags.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace shuttle {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::IsOkAndHolds;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

absl::StatusOr<int> Half(int n) {
  if (n % 2 != 0) return absl::InvalidArgumentError("odd: " + std::to_string(n));
  return n / 2;
}

absl::StatusOr<int> Quarter(int n) {
  SHUTTLE_ASSIGN_OR_RETURN(int half, Half(n));
  SHUTTLE_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

absl::Status CheckEven(int n) {
  SHUTTLE_RETURN_IF_ERROR(Half(n).status());
  return absl::OkStatus();
}

TEST(StatusMacros, PropagateFirstError) {
  EXPECT_THAT(Quarter(8), IsOkAndHolds(2));
  EXPECT_THAT(Quarter(6), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("odd: 3")));
  EXPECT_THAT(CheckEven(4), IsOk());
  EXPECT_THAT(CheckEven(5), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("odd: 5")));
}

TEST(GrpcStatus, RoundTripKeepsCodeAndMessage) {
  absl::Status s = absl::PermissionDeniedError("viewer may not apply");
  grpc::Status g = ToGrpcStatus(s);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(g.error_message(), "viewer may not apply");
  EXPECT_EQ(FromGrpcStatus(g), s);
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(FakeClock, AdvancesOnlyWhenTold) {
  FakeClock clock;
  absl::Time t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(clock.Now() - t0, absl::Seconds(5));
}

}  // namespace
}  // namespace shuttle

namespace shuttle {
namespace {

TEST(NormalizeFlagNames, DashesBecomeUnderscoresInNamesOnly) {
  const char* raw[] = {
      "prog",       "--data-dir", "/a-b",        "--metrics-listen=127.0.0.1:0", "-log-level=info",
      "issue-cert", "--",         "--not-a-flag"};
  std::vector<std::string> out = NormalizeFlagNames(8, const_cast<char**>(raw));
  EXPECT_EQ(out,
            (std::vector<std::string>{"prog", "--data_dir", "/a-b", "--metrics_listen=127.0.0.1:0",
                                      "-log_level=info", "issue-cert", "--", "--not-a-flag"}));
  std::vector<char*> argv = FlagArgv(out);
  ASSERT_EQ(argv.size(), 9u);
  EXPECT_EQ(argv[8], nullptr);
  EXPECT_STREQ(argv[1], "--data_dir");
}

}  // namespace
}  // namespace shuttle
