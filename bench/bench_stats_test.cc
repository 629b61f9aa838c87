// Unit tests of the fleet benchmark's measuring helpers: percentiles, the Prometheus histogram
// reader and its arithmetic, and the port-file reader.
#include "bench/bench_stats.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "bench/child_process.h"
#include "gtest/gtest.h"

namespace shuttle::bench {
namespace {

TEST(PercentileTest, NearestRank) {
  std::vector<double> samples;
  for (int i = 100; i >= 1; --i) samples.push_back(i);
  EXPECT_EQ(Percentile(samples, 0.5), 50);
  EXPECT_EQ(Percentile(samples, 0.99), 99);
  EXPECT_EQ(Percentile(samples, 1.0), 100);
  EXPECT_EQ(Percentile(samples, 0.0), 1);
  std::vector<double> one = {7};
  EXPECT_EQ(Percentile(one, 0.99), 7);
  std::vector<double> none;
  EXPECT_EQ(Percentile(none, 0.5), 0);
}

constexpr char kPage[] =
    "# HELP shuttle_controller_push_ack_seconds Time from sending a policy push to its ACK\n"
    "# TYPE shuttle_controller_push_ack_seconds histogram\n"
    "shuttle_controller_push_ack_seconds_count 10\n"
    "shuttle_controller_push_ack_seconds_sum 0.042\n"
    "shuttle_controller_push_ack_seconds_bucket{le=\"0.001\"} 2\n"
    "shuttle_controller_push_ack_seconds_bucket{le=\"0.005\"} 9\n"
    "shuttle_controller_push_ack_seconds_bucket{le=\"0.01\"} 10\n"
    "shuttle_controller_push_ack_seconds_bucket{le=\"+Inf\"} 10\n"
    "shuttle_controller_push_ack_seconds_other 3\n"
    "shuttle_controller_agents_connected 5\n";

TEST(PromHistogramTest, ParsesBucketsSumAndCount) {
  absl::StatusOr<PromHistogram> h =
      ParsePromHistogram(kPage, "shuttle_controller_push_ack_seconds");
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->buckets.size(), 4u);
  EXPECT_EQ(h->buckets[0].first, 0.001);
  EXPECT_EQ(h->buckets[1].second, 9);
  EXPECT_TRUE(std::isinf(h->buckets[3].first));
  EXPECT_DOUBLE_EQ(h->sum, 0.042);
  EXPECT_EQ(h->count, 10);
  EXPECT_EQ(QuantileUpperBound(*h, 0.2), 0.001);
  EXPECT_EQ(QuantileUpperBound(*h, 0.5), 0.005);
  EXPECT_EQ(QuantileUpperBound(*h, 0.99), 0.01);
}

TEST(PromHistogramTest, MissingAndMalformed) {
  EXPECT_EQ(ParsePromHistogram(kPage, "no_such_histogram").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(ParsePromHistogram("x_bucket{le=\"0.1\"} many\n", "x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParsePromHistogram("x_bucket{foo=\"0.1\"} 1\n", "x").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PromHistogramTest, SubtractGivesTheObservationsInBetween) {
  PromHistogram before{{{0.01, 2}, {0.1, 3}, {std::numeric_limits<double>::infinity(), 3}}, 0.2, 3};
  PromHistogram after{{{0.01, 2}, {0.1, 7}, {std::numeric_limits<double>::infinity(), 8}}, 2.0, 8};
  absl::StatusOr<PromHistogram> diff = Subtract(after, before);
  ASSERT_TRUE(diff.ok()) << diff.status();
  EXPECT_EQ(diff->count, 5);
  EXPECT_DOUBLE_EQ(diff->sum, 1.8);
  EXPECT_EQ(diff->buckets[0].second, 0);
  EXPECT_EQ(QuantileUpperBound(*diff, 0.5), 0.1);
  EXPECT_TRUE(std::isinf(QuantileUpperBound(*diff, 0.99)));
  // A restarted process (counts went down) or other buckets: refused.
  EXPECT_FALSE(Subtract(before, after).ok());
  PromHistogram other{{{0.02, 2}, {0.1, 7}, {std::numeric_limits<double>::infinity(), 8}}, 2.0, 8};
  EXPECT_FALSE(Subtract(other, before).ok());
  EXPECT_EQ(QuantileUpperBound(PromHistogram{}, 0.99), 0);

  PromHistogram total;
  ASSERT_TRUE(Accumulate(total, *diff).ok());
  ASSERT_TRUE(Accumulate(total, *diff).ok());
  EXPECT_EQ(total.count, 10);
  EXPECT_DOUBLE_EQ(total.sum, 3.6);
  EXPECT_EQ(total.buckets[1].second, 8);
  EXPECT_FALSE(Accumulate(total, other).ok());
}

TEST(FormatMillisTest, ThreeSignificantDigits) {
  EXPECT_EQ(FormatMillis(0.0012345), "1.23 ms");
  EXPECT_EQ(FormatMillis(0.012345), "12.3 ms");
  EXPECT_EQ(FormatMillis(1.5), "1500 ms");
}

TEST(PortFileTest, ReadsKeysAndRefusesGarbage) {
  char path[] = "/tmp/bench-ports-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  { std::ofstream(path) << "grpc=41233\nmetrics=40111\n"; }
  absl::StatusOr<std::map<std::string, int>> ports = ReadPortFile(path);
  ASSERT_TRUE(ports.ok()) << ports.status();
  EXPECT_EQ((*ports)["grpc"], 41233);
  EXPECT_EQ((*ports)["metrics"], 40111);
  { std::ofstream(path) << "grpc=41233\nmetrics=lots\n"; }
  ports = ReadPortFile(path);
  EXPECT_EQ(ports.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ports.status().message().find(":2:"), std::string::npos) << ports.status();
  std::remove(path);
  EXPECT_EQ(ReadPortFile(path).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace shuttle::bench
