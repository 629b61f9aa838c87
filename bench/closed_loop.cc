#include "bench/closed_loop.h"

#include <chrono>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "bench/bench_stats.h"

namespace shuttle::bench {
namespace {

using Steady = std::chrono::steady_clock;

// Shared with every callback, so a load abandoned with calls still in flight (drained = false)
// stays valid until the last of them completes.
struct LoadState : std::enable_shared_from_this<LoadState> {
  struct Slot {
    std::unique_ptr<grpc::ClientContext> context;
    Steady::time_point started;
    std::vector<double> latencies;  // Only this slot's callbacks touch it (one call at a time).
  };

  LoadState(const UnaryStarter& start, const LoadOptions& options)
      : start(start), options(options), slots(static_cast<size_t>(options.concurrency)) {}

  void Issue(int slot) {
    Slot& s = slots[static_cast<size_t>(slot)];
    // A finished call's context may be replaced from its own callback (as gRPC's callback
    // benchmark client does).
    s.context = std::make_unique<grpc::ClientContext>();
    s.context->set_deadline(std::chrono::system_clock::now() +
                            absl::ToChronoMilliseconds(options.call_timeout));
    s.started = Steady::now();
    start(s.context.get(), slot,
          [self = shared_from_this(), slot](grpc::Status status) { self->Done(slot, status); });
  }

  void Done(int slot, const grpc::Status& status) {
    const Steady::time_point now = Steady::now();
    Slot& s = slots[static_cast<size_t>(slot)];
    const bool in_window = now <= end;
    if (status.ok()) {
      if (in_window) {
        s.latencies.push_back(std::chrono::duration<double>(now - s.started).count());
      }
      if (now < end) {
        Issue(slot);
        return;
      }
    } else {
      absl::MutexLock lock(&mu);
      if (errors++ == 0) {
        first_error_code = status.error_code();
        first_error = status.error_message();
      }
    }
    absl::MutexLock lock(&mu);
    --outstanding;
  }

  const UnaryStarter& start;
  const LoadOptions options;
  std::vector<Slot> slots;
  Steady::time_point end;

  absl::Mutex mu;
  int outstanding ABSL_GUARDED_BY(mu) = 0;
  uint64_t errors ABSL_GUARDED_BY(mu) = 0;
  grpc::StatusCode first_error_code ABSL_GUARDED_BY(mu) = grpc::StatusCode::OK;
  std::string first_error ABSL_GUARDED_BY(mu);
};

}  // namespace

LoadResult RunClosedLoop(const UnaryStarter& start, const LoadOptions& options) {
  auto state = std::make_shared<LoadState>(start, options);
  const Steady::time_point begin = Steady::now();
  state->end = begin + absl::ToChronoNanoseconds(options.duration);
  {
    absl::MutexLock lock(&state->mu);
    state->outstanding = options.concurrency;
  }
  for (int i = 0; i < options.concurrency; ++i) state->Issue(i);

  LoadResult result;
  absl::MutexLock lock(&state->mu);
  auto drained = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state->mu) { return state->outstanding == 0; };
  result.drained = state->mu.AwaitWithTimeout(
      absl::Condition(&drained), options.duration + options.call_timeout + absl::Seconds(5));
  result.errors = state->errors;
  result.first_error_code = state->first_error_code;
  result.first_error = state->first_error;
  if (!result.drained) return result;  // Slots are still in use: their samples are not ours.
  std::vector<double> latencies;
  for (LoadState::Slot& s : state->slots) {
    latencies.insert(latencies.end(), s.latencies.begin(), s.latencies.end());
  }
  result.calls = latencies.size();
  result.calls_per_second =
      static_cast<double>(result.calls) / absl::ToDoubleSeconds(options.duration);
  result.p50_seconds = Percentile(latencies, 0.50);
  result.p99_seconds = Percentile(latencies, 0.99);
  return result;
}

}  // namespace shuttle::bench
