// Reconnect backoff for the agent's controller stream: exponential with full jitter
// ("Exponential Backoff And Jitter", AWS architecture blog), so that a fleet of agents whose
// controller restarts does not reconnect in lockstep. The delay is a pure function of the
// attempt number and one uniform random number, so tests check the sequence without sleeping.
#ifndef SHUTTLE_AGENT_CLIENT_BACKOFF_H_
#define SHUTTLE_AGENT_CLIENT_BACKOFF_H_

#include <functional>

#include "absl/time/time.h"

namespace shuttle::agent {

struct BackoffOptions {
  absl::Duration initial = absl::Milliseconds(100);  // Ceiling of the first delay.
  absl::Duration max = absl::Seconds(10);            // No ceiling grows beyond this.
  double multiplier = 2.0;                           // Ceiling growth per attempt (>= 1).
};

// The ceiling for attempt `attempt` (0-based): min(max, initial * multiplier^attempt). Never
// overflows, whatever `attempt` is; negative attempts count as 0.
absl::Duration BackoffCeiling(const BackoffOptions& options, int attempt);

// The delay for attempt `attempt` given `uniform01` drawn from [0, 1) (clamped into it): full
// jitter, uniform in [0, ceiling). Pure.
absl::Duration JitteredBackoff(const BackoffOptions& options, int attempt, double uniform01);

// Counts attempts and draws the randomness. Not thread-safe (one reconnect loop owns it).
class Backoff {
 public:
  // `random` returns uniform numbers in [0, 1); empty means a process-wide absl::BitGen.
  explicit Backoff(BackoffOptions options, std::function<double()> random = nullptr);

  // The delay before the next attempt; each call moves one attempt further.
  absl::Duration Next();
  // Back to the first attempt (after a connection that worked).
  void Reset() { attempt_ = 0; }
  int attempt() const { return attempt_; }

 private:
  BackoffOptions options_;
  std::function<double()> random_;
  int attempt_ = 0;
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_CLIENT_BACKOFF_H_
