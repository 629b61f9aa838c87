#include "agent/client/backoff.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"

namespace shuttle::agent {
namespace {

double SharedUniform() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen ABSL_GUARDED_BY(mu) = new absl::BitGen();
  absl::MutexLock lock(&mu);
  return absl::Uniform(*gen, 0.0, 1.0);
}

}  // namespace

absl::Duration BackoffCeiling(const BackoffOptions& options, int attempt) {
  if (options.initial >= options.max) return options.max;
  const double multiplier = std::max(1.0, options.multiplier);
  // Ratio of max to initial, so the loop ends long before double or Duration can overflow.
  const double limit = absl::FDivDuration(options.max, options.initial);
  double factor = 1.0;
  for (int i = 0; i < attempt && factor < limit; ++i) factor *= multiplier;
  if (factor >= limit) return options.max;
  return std::min(options.max, options.initial * factor);
}

absl::Duration JitteredBackoff(const BackoffOptions& options, int attempt, double uniform01) {
  const double u = std::isnan(uniform01) ? 0.0 : std::clamp(uniform01, 0.0, 1.0);
  const absl::Duration ceiling = BackoffCeiling(options, attempt);
  if (ceiling <= absl::ZeroDuration()) return absl::ZeroDuration();
  // Duration * double rounds to the nearest tick, so u just below 1 could yield the ceiling.
  return std::min(ceiling * u, ceiling - absl::Nanoseconds(1));
}

Backoff::Backoff(BackoffOptions options, std::function<double()> random)
    : options_(options), random_(std::move(random)) {
  if (!random_) random_ = SharedUniform;
}

absl::Duration Backoff::Next() {
  absl::Duration delay = JitteredBackoff(options_, attempt_, random_());
  if (attempt_ < 1'000'000) ++attempt_;
  return delay;
}

}  // namespace shuttle::agent
