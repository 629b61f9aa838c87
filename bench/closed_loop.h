// A closed-loop unary load generator on gRPC's callback API: C calls outstanding at all times for
// D seconds, each completion starting the next call on its slot. The same code drives
// AgentService.Authorize and the echo baseline, so their throughputs compare the servers, not
// two clients.
#ifndef SHUTTLE_BENCH_CLOSED_LOOP_H_
#define SHUTTLE_BENCH_CLOSED_LOOP_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <string>

#include "absl/time/time.h"

namespace shuttle::bench {

// Starts one unary call on `context` (its deadline is already set) and arranges for `done` to be
// called exactly once with the call's status. `slot` is in [0, concurrency): no two calls in
// flight share a slot, so the caller may keep one request/response buffer per slot. Must not
// block. Called on the load's thread and on gRPC's callback threads.
using UnaryStarter = std::function<void(grpc::ClientContext* context, int slot,
                                        std::function<void(grpc::Status)> done)>;

struct LoadOptions {
  int concurrency = 32;
  absl::Duration duration = absl::Seconds(5);
  absl::Duration call_timeout = absl::Seconds(10);  // Deadline of every call.
};

struct LoadResult {
  uint64_t calls = 0;  // OK calls that completed within the measured window.
  double calls_per_second = 0;
  double p50_seconds = 0;  // Latency of those calls.
  double p99_seconds = 0;
  uint64_t errors = 0;  // Calls that failed (each stops its slot).
  grpc::StatusCode first_error_code = grpc::StatusCode::OK;
  std::string first_error;  // Message of the first failed call.
  bool drained = true;      // False if calls were still outstanding well after the window.
};

// Runs the load and returns when every call has finished (bounded: window + call_timeout + 5 s;
// `drained` says whether they did). Thread-compatible: run one load at a time per starter.
LoadResult RunClosedLoop(const UnaryStarter& start, const LoadOptions& options);

}  // namespace shuttle::bench

#endif  // SHUTTLE_BENCH_CLOSED_LOOP_H_
