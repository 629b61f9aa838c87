// The agent's interception interfaces (STYLE.md: backends behind one small interface):
//  - InterceptionSource: a backend that delivers intercepted syscalls (seccomp user-notify
//    today; an LD_PRELOAD channel or the Windows shim later; a fake in tests) to a
//    NotificationHandler and sends its answers back;
//  - NotificationHandler: decodes, identifies the subject's VM, decides (InterceptHandler in
//    intercept_handler.h is the real one);
//  - Decider: the verdict for one interaction (the agent wires the compiled policy, cache,
//    metrics and audit to it);
//  - VmResolver: which VM a process is in, as the kernel says (the VM manager implements it).
#ifndef SHUTTLE_AGENT_INTERCEPT_INTERCEPTION_H_
#define SHUTTLE_AGENT_INTERCEPT_INTERCEPTION_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "agent/intercept/syscall_decoder.h"
#include "agent/intercept/unique_fd.h"

namespace shuttle::agent::intercept {

// Which VM a process is in, decided by the kernel (its namespaces), never by anything the
// process says. Implemented by the VM manager.
class VmResolver {
 public:
  virtual ~VmResolver() = default;
  // `pid` is a thread id in the agent's PID namespace (seccomp reports thread ids). nullopt:
  // not in any VM (the host), or gone. Called on the notification loop's thread for every
  // interaction: must be fast and must not block. (VM names up to 15 bytes fit std::string's
  // inline buffer, so the result does not allocate.)
  virtual std::optional<std::string> VmOfPid(pid_t pid) const = 0;
};

// One interaction to decide.
struct InterceptedCall {
  // The caller's VM, from VmResolver. Empty when the resolver does not know the process (also
  // counted in InterceptStats::vm_unknown); a policy-backed decider treats that as the host.
  std::string_view subject_vm;
  // The VM the notification channel was registered for. Informational: never a substitute for
  // subject_vm (a mismatch is counted in InterceptStats::vm_mismatch).
  std::string_view channel_vm;
  pid_t pid = 0;  // Calling thread, agent's PID namespace.
  const SyscallEvent* event = nullptr;
  const ObjectInfo* object = nullptr;  // kind, name and family details.
};

// A decider's answer: continue the call unchanged, or fail it with an errno.
struct Answer {
  int error = 0;  // 0: continue; otherwise the positive errno the call returns.
  static Answer Continue() { return Answer{}; }
  static Answer Fail(int error) { return Answer{error}; }
  bool is_continue() const { return error == 0; }
};

class Decider {
 public:
  virtual ~Decider() = default;
  // Called on the loop thread for each interaction (a sendmmsg may bring several, one per
  // distinct destination). The calling thread of the process waits for the answer and the loop
  // serves no one else meanwhile: return within microseconds, never block on I/O. The views in
  // `call` are valid only during the call.
  virtual Answer Decide(const InterceptedCall& call) = 0;
};

// What a backend offers the handler about the notification being handled.
class NotificationScope {
 public:
  virtual ~NotificationScope() = default;
  // True if the notification is still pending: the caller is alive and still waiting, so what
  // was read from its pid really was its memory (seccomp: SECCOMP_IOCTL_NOTIF_ID_VALID).
  virtual bool StillValid() = 0;
};

// How to answer one notification.
struct Response {
  enum class Kind : uint8_t {
    kContinue,  // Let the syscall run (seccomp: SECCOMP_USER_NOTIF_FLAG_CONTINUE).
    kFail,      // Fail it with `error`.
    kDrop,      // Answer nothing: the caller is gone.
  };
  Kind kind = Kind::kContinue;
  int error = 0;  // kFail: positive errno.
};

class NotificationHandler {
 public:
  virtual ~NotificationHandler() = default;
  // Handles one notification that arrived on a channel registered for `channel_vm`. Called
  // from the backend's loop thread only.
  virtual Response Handle(const SyscallEvent& event, std::string_view channel_vm,
                          NotificationScope& scope) = 0;
};

class InterceptionSource {
 public:
  virtual ~InterceptionSource() = default;

  // Starts serving `channel` (seccomp: a listener fd) of the processes launched into VM `vm`.
  // Takes ownership. Thread-safe; may be called while Run() runs.
  virtual absl::Status Add(UniqueFd channel, std::string_view vm) = 0;

  // Serves notifications through `handler` until Stop(); returns OK then, or the error that
  // made serving impossible. One Run() at a time.
  virtual absl::Status Run(NotificationHandler& handler) = 0;

  // Makes Run() return after the notification in hand (if any) is answered. Thread-safe; a
  // Stop() before Run() makes the next Run() return at once.
  virtual void Stop() = 0;
};

using InterceptionSourcePtr = std::unique_ptr<InterceptionSource>;

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_INTERCEPTION_H_
