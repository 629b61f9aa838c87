#include "agent/intercept/intercept_handler.h"

#include <linux/audit.h>
#include <sys/syscall.h>

#include <cstring>
#include <optional>
#include <string>

#include "common/logging.h"

namespace shuttle::agent::intercept {
namespace {

void Bump(std::atomic<uint64_t>& counter) { counter.fetch_add(1, std::memory_order_relaxed); }

// Log the 1st, 2nd, 4th, 8th... occurrence of an anomaly: visible, but never a flood.
bool ShouldLog(uint64_t count_after) { return (count_after & (count_after - 1)) == 0; }

// A call whose parts are decided one by one (sendmmsg with several messages). None of its parts
// may be deferred: the loop would still have to decide the parts after it (and keeping the
// decoder's state for a later thread would cost the hot path). An `ask` in such a call is
// decided from the cache or by its rule's fail mode (PolicyDecider).
bool MultiPart(const SyscallEvent& event) {
  return event.arch == AUDIT_ARCH_X86_64 && event.nr == SYS_sendmmsg &&
         static_cast<uint32_t>(event.args[2]) > 1;
}

}  // namespace

Response InterceptHandler::Handle(const SyscallEvent& event, std::string_view channel_vm,
                                  NotificationScope& scope) {
  Bump(stats_.notifications);
  std::optional<std::string> vm;
  bool resolved = false;
  bool decided_any = false;
  v1::InteractionKind last_kind = v1::INTERACTION_KIND_UNSPECIFIED;
  size_t last_len = 0;

  Decoded& d = decoded_;
  for (uint32_t part = 0; decoder_.Decode(event, part, &d); ++part) {
    switch (d.disposition) {
      case Disposition::kGone:
        Bump(stats_.gone);
        return Response{Response::Kind::kDrop, 0};
      case Disposition::kFail:
        // Answering from what we read is trusting it: make sure it was the caller's memory.
        if (d.read_process && !scope.StillValid()) {
          Bump(stats_.gone);
          return Response{Response::Kind::kDrop, 0};
        }
        Bump(stats_.malformed);
        if (d.inspect_error) {
          uint64_t n = stats_.inspect_errors.fetch_add(1, std::memory_order_relaxed) + 1;
          if (ShouldLog(n)) {
            SHUTTLE_LOG(WARNING) << "intercept: cannot inspect pid " << event.pid << " (syscall "
                                 << event.nr << "); failing the call with EPERM (" << n
                                 << " so far)";
          }
        }
        return Response{Response::Kind::kFail, d.error};
      case Disposition::kContinue:
        // No check needed: continuing is what the kernel does without us.
        continue;
      case Disposition::kDecide:
        break;
    }
    // sendmmsg to the same destination again: already decided (allowed) for this call.
    const ObjectInfo& obj = d.object;
    if (decided_any && obj.kind == last_kind && obj.name_len == last_len &&
        std::memcmp(obj.name_buf, last_name_, last_len) == 0) {
      continue;
    }
    if (!resolved && decider_.SubjectMatters(obj.kind)) {
      vm = vms_.VmOfPid(event.pid);
      resolved = true;
    }
    // After every read (memory, fds, /proc for the VM): is the caller still the one waiting?
    if (!scope.StillValid()) {
      Bump(stats_.gone);
      return Response{Response::Kind::kDrop, 0};
    }
    if (!resolved) {
      Bump(stats_.vm_from_channel);
    } else if (!vm.has_value()) {
      Bump(stats_.vm_unknown);
    } else if (*vm != channel_vm) {
      uint64_t n = stats_.vm_mismatch.fetch_add(1, std::memory_order_relaxed) + 1;
      if (ShouldLog(n)) {
        SHUTTLE_LOG(ERROR) << "intercept: pid " << event.pid << " is in VM '" << *vm
                           << "' but its notification came on a channel of VM '" << channel_vm
                           << "'; deciding for '" << *vm << "' (" << n << " so far)";
      }
    }
    InterceptedCall call;
    if (!resolved) {
      call.subject_vm = channel_vm;
    } else if (vm.has_value()) {
      call.subject_vm = *vm;
    }
    call.channel_vm = channel_vm;
    call.pid = event.pid;
    call.event = &event;
    call.object = &obj;
    if (!MultiPart(event)) call.deferral = &scope;
    Answer answer = decider_.Decide(call);
    Bump(stats_.decided);
    if (answer.is_deferred()) {
      // The backend checks that a reply really took the answer over (and fails the call
      // closed if the decider returned Deferred() without one).
      Bump(stats_.deferred);
      return Response{Response::Kind::kDeferred, 0};
    }
    if (!answer.is_continue()) {
      Bump(stats_.denied);
      return Response{Response::Kind::kFail, answer.error};
    }
    Bump(stats_.allowed);
    decided_any = true;
    last_kind = obj.kind;
    last_len = obj.name_len;
    std::memcpy(last_name_, obj.name_buf, obj.name_len);
  }
  if (!decided_any) Bump(stats_.not_interaction);
  return Response{Response::Kind::kContinue, 0};
}

}  // namespace shuttle::agent::intercept
