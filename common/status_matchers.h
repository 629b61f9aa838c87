// GoogleTest matchers for absl::Status / StatusOr (Abseil 20220623 ships none). Tests only.
#ifndef SHUTTLE_COMMON_STATUS_MATCHERS_H_
#define SHUTTLE_COMMON_STATUS_MATCHERS_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace shuttle::testing {

inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

// EXPECT_THAT(status_or_statusor, IsOk());
MATCHER(IsOk, "is OK") {
  const absl::Status& s = GetStatus(arg);
  if (!s.ok()) *result_listener << "status is " << s;
  return s.ok();
}

// EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 3")));
MATCHER_P2(StatusIs, code, message_matcher, "") {
  const absl::Status& s = GetStatus(arg);
  *result_listener << "status is " << s;
  return s.code() == code &&
         ::testing::ExplainMatchResult(message_matcher, std::string(s.message()), result_listener);
}

// EXPECT_THAT(statusor, IsOkAndHolds(Eq(3)));
MATCHER_P(IsOkAndHolds, value_matcher, "") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(value_matcher, *arg, result_listener);
}

}  // namespace shuttle::testing

// ASSERT_OK_AND_ASSIGN(auto v, StatusOrExpr()) for tests.
#define SHUTTLE_ASSERT_OK_AND_ASSIGN(lhs, expr)                                                 \
  SHUTTLE_ASSERT_OK_AND_ASSIGN_IMPL(SHUTTLE_TEST_CONCAT(shuttle_test_statusor_, __LINE__), lhs, \
                                    expr)
#define SHUTTLE_TEST_CONCAT_INNER(a, b) a##b
#define SHUTTLE_TEST_CONCAT(a, b) SHUTTLE_TEST_CONCAT_INNER(a, b)
#define SHUTTLE_ASSERT_OK_AND_ASSIGN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                                      \
  ASSERT_TRUE(statusor.ok()) << statusor.status();             \
  lhs = std::move(statusor).value()

#endif  // SHUTTLE_COMMON_STATUS_MATCHERS_H_
