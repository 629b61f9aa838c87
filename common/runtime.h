// Process-wide runtime settings every Shuttle daemon applies first thing in main(). Header-only.
#ifndef SHUTTLE_COMMON_RUNTIME_H_
#define SHUTTLE_COMMON_RUNTIME_H_

#include <malloc.h>

#include "absl/synchronization/mutex.h"

namespace shuttle {

// Debian's Abseil (20220623) is built without NDEBUG, so absl::Mutex runs its deadlock detector
// on every lock taken while another is held: a global lock plus a graph of every mutex ever
// held together. gRPC 1.51's own locks are absl::Mutex, so under load this graph bookkeeping was
// the controller's single hottest function (GraphCycles::GetId, ~8% of its CPU with 1,000 agent
// streams, growing with the number of streams). Release builds of Abseil turn it off; daemons
// and benchmarks do the same here. Unit tests keep the detector on.
//
// glibc's malloc hands the free memory at the top of a heap back to the kernel as soon as it
// passes 128 KiB (M_TRIM_THRESHOLD), with madvise(MADV_DONTNEED) for the per-thread arenas that
// gRPC's threads allocate from, and the next allocations fault the pages in again. A gRPC server
// frees and allocates a few KiB per call, so its arenas' tops crossed that line hundreds of times
// a second: measured under Authorize load, ~300 madvise calls of ~0.2 ms each per 6 s on the
// controller's callback threads (page-table work and TLB shootdowns, costly in a VM), plus the
// page faults after them. Keeping up to 16 MiB free at the top of each heap ends that churn; a
// fixed threshold also stops glibc from raising the mmap threshold on its own.
inline void ConfigureRuntimeForProduction() {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
  mallopt(M_TOP_PAD, 1 << 20);
}

}  // namespace shuttle

#endif  // SHUTTLE_COMMON_RUNTIME_H_
