// Small measuring helpers for the fleet benchmark: percentiles over samples, a Prometheus
// histogram read from a /metrics page (so the controller's own push-to-ACK histogram can be
// compared with what the simulated agents measured), and a bounded HTTP GET to fetch that page.
#ifndef SHUTTLE_BENCH_BENCH_STATS_H_
#define SHUTTLE_BENCH_BENCH_STATS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace shuttle::bench {

// Nearest-rank percentile (q in [0, 1]) of `samples`, which it sorts. 0 when empty.
double Percentile(std::vector<double>& samples, double q);

// One Prometheus histogram without labels other than `le`.
struct PromHistogram {
  std::vector<std::pair<double, double>> buckets;  // (upper bound, cumulative count), ascending.
  double sum = 0;
  double count = 0;
};

// Reads `name`_bucket, _sum and _count from a Prometheus text page. NOT_FOUND when the page has
// no such histogram; INVALID_ARGUMENT naming the line when a sample does not parse.
absl::StatusOr<PromHistogram> ParsePromHistogram(absl::string_view page, absl::string_view name);

// `after` minus `before` (the observations made in between). INVALID_ARGUMENT if the bucket
// bounds differ or a count went down (the process restarted in between).
absl::StatusOr<PromHistogram> Subtract(const PromHistogram& after, const PromHistogram& before);

// Adds `more`'s observations to `total` (which starts empty: then it becomes `more`).
// INVALID_ARGUMENT if the bucket bounds differ.
absl::Status Accumulate(PromHistogram& total, const PromHistogram& more);

// The upper bound of the first bucket that holds at least q * count observations: "the q-th
// quantile is at most this". +Inf when only the +Inf bucket does; 0 for an empty histogram.
double QuantileUpperBound(const PromHistogram& h, double q);

// GET http://HOST:PORT/PATH (HTTP/1.0, no TLS) within `timeout`; the body of a 200 answer.
// UNAVAILABLE naming the address for connection errors and other statuses.
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout);

// "12.3 ms" style, with three significant digits, for durations given in seconds.
std::string FormatMillis(double seconds);

}  // namespace shuttle::bench

#endif  // SHUTTLE_BENCH_BENCH_STATS_H_
