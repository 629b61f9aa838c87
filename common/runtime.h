// Process-wide runtime settings every Shuttle daemon applies first thing in main(). Header-only.
#ifndef SHUTTLE_COMMON_RUNTIME_H_
#define SHUTTLE_COMMON_RUNTIME_H_

#include "absl/synchronization/mutex.h"

namespace shuttle {

// Debian's Abseil (20220623) is built without NDEBUG, so absl::Mutex runs its deadlock detector
// on every lock taken while another is held: a global lock plus a graph of every mutex ever
// held together. gRPC 1.51's own locks are absl::Mutex, so under load this graph bookkeeping was
// the controller's single hottest function (GraphCycles::GetId, ~8% of its CPU with 1,000 agent
// streams, growing with the number of streams). Release builds of Abseil turn it off; daemons
// and benchmarks do the same here. Unit tests keep the detector on.
inline void ConfigureRuntimeForProduction() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

}  // namespace shuttle

#endif  // SHUTTLE_COMMON_RUNTIME_H_
