#include "agent/client/backoff.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shuttle::agent {
namespace {

TEST(BackoffTest, CeilingDoublesFromInitialAndStopsAtMax) {
  BackoffOptions options;  // 100ms doubling to 10s.
  std::vector<absl::Duration> ceilings;
  for (int i = 0; i < 10; ++i) ceilings.push_back(BackoffCeiling(options, i));
  EXPECT_THAT(ceilings, ::testing::ElementsAre(absl::Milliseconds(100), absl::Milliseconds(200),
                                               absl::Milliseconds(400), absl::Milliseconds(800),
                                               absl::Milliseconds(1600), absl::Milliseconds(3200),
                                               absl::Milliseconds(6400), absl::Seconds(10),
                                               absl::Seconds(10), absl::Seconds(10)));
}

TEST(BackoffTest, CeilingNeverOverflows) {
  BackoffOptions options;
  EXPECT_EQ(BackoffCeiling(options, 1'000'000'000), absl::Seconds(10));
  EXPECT_EQ(BackoffCeiling(options, -5), absl::Milliseconds(100));
  BackoffOptions flat{absl::Seconds(1), absl::Seconds(1), 2.0};
  EXPECT_EQ(BackoffCeiling(flat, 7), absl::Seconds(1));
}

TEST(BackoffTest, FullJitterScalesTheCeiling) {
  BackoffOptions options;
  EXPECT_EQ(JitteredBackoff(options, 3, 0.0), absl::ZeroDuration());
  EXPECT_EQ(JitteredBackoff(options, 3, 0.5), absl::Milliseconds(400));
  EXPECT_LT(JitteredBackoff(options, 3, 1.0), absl::Milliseconds(800));  // [0, ceiling)
  EXPECT_LT(JitteredBackoff(options, 3, 7.0), absl::Milliseconds(800));  // clamped
  EXPECT_EQ(JitteredBackoff(options, 3, -1.0), absl::ZeroDuration());
}

TEST(BackoffTest, SequenceIsBoundedJitteredAndResets) {
  // A deterministic "random" source cycling through a few values.
  const std::vector<double> draws = {0.9, 0.1, 0.5, 0.99, 0.0, 0.75};
  size_t next = 0;
  Backoff backoff(BackoffOptions{}, [&] { return draws[next++ % draws.size()]; });
  std::vector<absl::Duration> delays;
  for (int i = 0; i < 30; ++i) delays.push_back(backoff.Next());
  for (size_t i = 0; i < delays.size(); ++i) {
    EXPECT_GE(delays[i], absl::ZeroDuration()) << i;
    EXPECT_LT(delays[i], absl::Seconds(10)) << i;
    EXPECT_LT(delays[i], BackoffCeiling(BackoffOptions{}, static_cast<int>(i))) << i;
  }
  EXPECT_EQ(delays[0], absl::Milliseconds(90));
  EXPECT_EQ(delays[1], absl::Milliseconds(20));
  EXPECT_EQ(delays[2], absl::Milliseconds(200));
  EXPECT_EQ(delays[18], absl::Seconds(9));  // Draw 0.9 again, of the 10 s cap.
  EXPECT_EQ(backoff.attempt(), 30);

  backoff.Reset();
  EXPECT_EQ(backoff.attempt(), 0);
  next = 0;
  EXPECT_EQ(backoff.Next(), absl::Milliseconds(90));  // Back to the 100 ms ceiling.
}

TEST(BackoffTest, DefaultRandomnessStaysInRange) {
  Backoff backoff(BackoffOptions{});
  for (int i = 0; i < 100; ++i) {
    absl::Duration d = backoff.Next();
    EXPECT_GE(d, absl::ZeroDuration());
    EXPECT_LT(d, absl::Seconds(10));
  }
}

}  // namespace
}  // namespace shuttle::agent
