#include "bench/bench_stats.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace shuttle::bench {

double Percentile(std::vector<double>& samples, double q) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  // Nearest rank: the smallest sample with at least q of all samples at or below it.
  const double rank = std::ceil(q * static_cast<double>(samples.size()));
  size_t index = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return samples[std::min(index, samples.size() - 1)];
}

namespace {

bool ParseValue(absl::string_view text, double* out) {
  text = absl::StripAsciiWhitespace(text);
  if (text == "+Inf") {
    *out = std::numeric_limits<double>::infinity();
    return true;
  }
  return absl::SimpleAtod(text, out);
}

}  // namespace

absl::StatusOr<PromHistogram> ParsePromHistogram(absl::string_view page, absl::string_view name) {
  PromHistogram h;
  bool found = false;
  const std::string bucket_prefix = absl::StrCat(name, "_bucket{");
  const std::string sum_prefix = absl::StrCat(name, "_sum ");
  const std::string count_prefix = absl::StrCat(name, "_count ");
  int number = 0;
  for (absl::string_view line : absl::StrSplit(page, '\n')) {
    ++number;
    auto bad = [&] {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics line ", number, " does not parse: '", line, "'"));
    };
    if (absl::ConsumePrefix(&line, bucket_prefix)) {
      // le="0.005"} 12
      const size_t le = line.find("le=\"");
      const size_t close = line.find("\"}");
      if (le == absl::string_view::npos || close == absl::string_view::npos || close < le) {
        return bad();
      }
      double bound = 0;
      double count = 0;
      if (!ParseValue(line.substr(le + 4, close - le - 4), &bound) ||
          !ParseValue(line.substr(close + 2), &count)) {
        return bad();
      }
      h.buckets.emplace_back(bound, count);
      found = true;
    } else if (absl::ConsumePrefix(&line, sum_prefix)) {
      if (!ParseValue(line, &h.sum)) return bad();
      found = true;
    } else if (absl::ConsumePrefix(&line, count_prefix)) {
      if (!ParseValue(line, &h.count)) return bad();
      found = true;
    }
  }
  if (!found) return absl::NotFoundError(absl::StrCat("no histogram ", name, " on the page"));
  std::sort(h.buckets.begin(), h.buckets.end());
  return h;
}

absl::StatusOr<PromHistogram> Subtract(const PromHistogram& after, const PromHistogram& before) {
  if (after.buckets.size() != before.buckets.size()) {
    return absl::InvalidArgumentError("histograms have different buckets");
  }
  PromHistogram out;
  for (size_t i = 0; i < after.buckets.size(); ++i) {
    if (after.buckets[i].first != before.buckets[i].first) {
      return absl::InvalidArgumentError("histograms have different bucket bounds");
    }
    const double diff = after.buckets[i].second - before.buckets[i].second;
    if (diff < 0) return absl::InvalidArgumentError("a histogram count went down");
    out.buckets.emplace_back(after.buckets[i].first, diff);
  }
  out.sum = after.sum - before.sum;
  out.count = after.count - before.count;
  if (out.count < 0) return absl::InvalidArgumentError("a histogram count went down");
  return out;
}

absl::Status Accumulate(PromHistogram& total, const PromHistogram& more) {
  if (total.buckets.empty() && total.count == 0) {
    total = more;
    return absl::OkStatus();
  }
  if (total.buckets.size() != more.buckets.size()) {
    return absl::InvalidArgumentError("histograms have different buckets");
  }
  for (size_t i = 0; i < total.buckets.size(); ++i) {
    if (total.buckets[i].first != more.buckets[i].first) {
      return absl::InvalidArgumentError("histograms have different bucket bounds");
    }
    total.buckets[i].second += more.buckets[i].second;
  }
  total.sum += more.sum;
  total.count += more.count;
  return absl::OkStatus();
}

double QuantileUpperBound(const PromHistogram& h, double q) {
  if (h.count <= 0) return 0;
  const double want = q * h.count;
  for (const auto& [bound, cumulative] : h.buckets) {
    if (cumulative >= want) return bound;
  }
  return std::numeric_limits<double>::infinity();
}

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    absl::Duration timeout) {
  const std::string where = absl::StrCat("http://", host, ":", port, path);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("'", host, "' is not an IPv4 address"));
  }
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  // Every send and receive is bounded; a stuck server ends the request, not the benchmark.
  timeval tv = absl::ToTimeval(timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  const absl::Time deadline = absl::Now() + timeout;
  auto fail = [&](absl::string_view what) {
    std::string message = absl::StrCat(where, ": ", what, ": ", std::strerror(errno));
    ::close(fd);
    return absl::UnavailableError(message);
  };
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return fail("connect");
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", host, ":", port, "\r\n\r\n");
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return fail("send");
  }
  std::string response;
  char buffer[16384];
  while (true) {
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR && absl::Now() < deadline) continue;
      return fail("recv");
    }
    response.append(buffer, static_cast<size_t>(n));
    if (absl::Now() >= deadline) {
      errno = ETIMEDOUT;
      return fail("recv");
    }
  }
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (!absl::StartsWith(response, "HTTP/1.") || body == std::string::npos) {
    return absl::UnavailableError(absl::StrCat(where, ": not an HTTP response"));
  }
  const absl::string_view status_line = absl::string_view(response).substr(0, response.find('\r'));
  if (status_line.find(" 200") == absl::string_view::npos) {
    return absl::UnavailableError(absl::StrCat(where, ": ", status_line));
  }
  return response.substr(body + 4);
}

std::string FormatMillis(double seconds) {
  const double ms = seconds * 1e3;
  if (std::isinf(ms)) return "+Inf ms";
  if (std::fabs(ms) >= 100) return absl::StrFormat("%.0f ms", ms);
  if (std::fabs(ms) >= 10) return absl::StrFormat("%.1f ms", ms);
  return absl::StrFormat("%.2f ms", ms);
}

}  // namespace shuttle::bench
