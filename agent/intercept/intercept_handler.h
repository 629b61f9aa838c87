// The notification handler every backend feeds: decode the syscall (SyscallDecoder), check that
// the caller is still the one we read from (ID_VALID), learn its VM from the kernel
// (VmResolver), ask the Decider, and turn the answer into a Response (kDeferred when the
// decider took the answer over with InterceptedCall::Defer()). Counts every outcome.
// The hot path neither allocates nor locks (the VmResolver is the only outside call that might).
#ifndef SHUTTLE_AGENT_INTERCEPT_INTERCEPT_HANDLER_H_
#define SHUTTLE_AGENT_INTERCEPT_INTERCEPT_HANDLER_H_

#include <atomic>
#include <cstdint>
#include <string_view>

#include "agent/intercept/interception.h"
#include "agent/intercept/process_access.h"
#include "agent/intercept/syscall_decoder.h"

namespace shuttle::agent::intercept {

// Counters; written by the loop thread, readable from any thread (relaxed atomics).
struct InterceptStats {
  std::atomic<uint64_t> notifications{0};    // Handled notifications.
  std::atomic<uint64_t> decided{0};          // Decider calls.
  std::atomic<uint64_t> allowed{0};          // ... answered continue.
  std::atomic<uint64_t> denied{0};           // ... answered with an errno.
  std::atomic<uint64_t> deferred{0};         // ... answered later by a PendingReply.
  std::atomic<uint64_t> not_interaction{0};  // Continued without a decision.
  std::atomic<uint64_t> malformed{0};        // Failed by the decoder (EFAULT, EINVAL...).
  std::atomic<uint64_t> inspect_errors{0};   // ... of which the agent could not look (EPERM).
  std::atomic<uint64_t> gone{0};             // Caller died or gave up while we looked.
  std::atomic<uint64_t> vm_unknown{0};       // VmResolver knew no VM for the caller.
  std::atomic<uint64_t> vm_mismatch{0};      // Caller's VM != the channel's VM.
  // Decided for the channel's VM without resolving the caller's (Decider::SubjectMatters).
  std::atomic<uint64_t> vm_from_channel{0};
};

class InterceptHandler final : public NotificationHandler {
 public:
  // Collaborators are not owned and must outlive the handler.
  InterceptHandler(ProcessMemory& memory, ProcessFds& fds, const VmResolver& vms, Decider& decider)
      : decoder_(memory, fds), vms_(vms), decider_(decider) {}

  // Thread-compatible: one loop thread calls Handle at a time.
  Response Handle(const SyscallEvent& event, std::string_view channel_vm,
                  NotificationScope& scope) override;

  const InterceptStats& stats() const { return stats_; }

 private:
  SyscallDecoder decoder_;
  const VmResolver& vms_;
  Decider& decider_;
  InterceptStats stats_;
  // Scratch space reused for every notification (no allocation on the hot path).
  Decoded decoded_;
  char last_name_[kMaxObjectName];
};

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_INTERCEPT_HANDLER_H_
