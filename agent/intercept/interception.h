// The agent's interception interfaces (STYLE.md: backends behind one small interface):
//  - InterceptionSource: a backend that delivers intercepted syscalls (seccomp user-notify
//    today; an LD_PRELOAD channel or the Windows shim later; a fake in tests) to a
//    NotificationHandler and sends its answers back;
//  - NotificationHandler: decodes, identifies the subject's VM, decides (InterceptHandler in
//    intercept_handler.h is the real one);
//  - Decider: the verdict for one interaction (the agent wires the compiled policy, cache,
//    metrics and audit to it); it may also defer the answer (PendingReply) when the verdict
//    needs the network (an `ask` rule), so the loop never waits for I/O;
//  - VmResolver: which VM a process is in, as the kernel says (the VM manager implements it).
#ifndef SHUTTLE_AGENT_INTERCEPT_INTERCEPTION_H_
#define SHUTTLE_AGENT_INTERCEPT_INTERCEPTION_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
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

// A decider's answer: continue the call unchanged, or fail it with an errno; or, when the
// decider took the answer over with InterceptedCall::Defer(), "deferred".
struct Answer {
  // 0: continue; > 0: the errno the call returns; kDeferredError: deferred.
  int error = 0;
  static constexpr int kDeferredError = -1;
  static Answer Continue() { return Answer{}; }
  static Answer Fail(int error) { return Answer{error}; }
  // Only after InterceptedCall::Defer() returned a reply: the reply answers the call later.
  static Answer Deferred() { return Answer{kDeferredError}; }
  bool is_continue() const { return error == 0; }
  bool is_deferred() const { return error == kDeferredError; }
};

// The answer to one notification, given later and from any thread (STYLE.md: the loop never
// blocks on the network). Obtained from InterceptedCall::Defer(); the backend sends nothing for
// that notification until Finish(). Implementations keep what they need to answer alive (the
// channel, the journal slot) for as long as the reply lives, even after the backend stopped or
// dropped the channel.
class PendingReply {
 public:
  // A reply destroyed without Finish() fails the call with EPERM (fail closed), so no caller
  // ever hangs on a lost reply. Implementations must do that in their destructor.
  virtual ~PendingReply() = default;
  // Answers the call: continue (error 0) or fail with `answer.error` (a positive errno; anything
  // else fails with EPERM). At most once: later calls are ignored. Thread-safe with respect to
  // the backend's loop; does one syscall, never waits for anything else.
  virtual void Finish(Answer answer) = 0;

  // Answers the call by handing the caller a descriptor (agent/broker/injection.h: a brokered
  // socket in place of the caller's, or a new fd as the call's result): calls
  // `send(channel_fd, id)` once, on this thread, with the backend's channel (seccomp: the
  // listener fd, valid only during the call, not owned) and the notification's id; `send` does
  // the answering ioctls itself. If `send` returns OK, or NOT_FOUND (the caller is gone, there
  // is nothing left to answer), the reply is finished: nothing more is sent, not even by the
  // destructor. On any other error the call is still pending and the reply unfinished: the
  // caller must still Finish() it (e.g. Answer::Fail(errno)) or drop it (EPERM). Returns what
  // `send` returned; FAILED_PRECONDITION without calling `send` if the reply was already
  // finished; UNIMPLEMENTED (reply unchanged) from a backend that can't hand over descriptors
  // (the default). Thread-safe like Finish(); must not race a Finish() of the same reply.
  virtual absl::Status FinishWith(
      absl::FunctionRef<absl::Status(int channel_fd, uint64_t id)> send) {
    (void)send;
    return absl::UnimplementedError("this interception backend cannot hand over descriptors");
  }
};
using PendingReplyPtr = std::unique_ptr<PendingReply>;

class NotificationScope;

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
  // Set by the handler when this call may be answered later; null when it may not: for the
  // parts of a multi-part call (a sendmmsg with several messages: its later parts would still
  // need deciding after this one) and for backends that can't defer.
  NotificationScope* deferral = nullptr;

  // Takes over the answer to this call: returns the reply to Finish() later (from any thread),
  // after which Decide() must return Answer::Deferred(). Null if this call can't be deferred;
  // the decider must then answer now. At most once per call. Copy what the answer needs first:
  // the views above die when Decide() returns.
  PendingReplyPtr Defer() const;
};

class Decider {
 public:
  virtual ~Decider() = default;
  // Called on the loop thread for each interaction (a sendmmsg may bring several, one per
  // distinct destination). The calling thread of the process waits for the answer and the loop
  // serves no one else meanwhile: return within microseconds, never block on I/O. An answer
  // that needs I/O is deferred: call.Defer(), return Answer::Deferred(), Finish() the reply when
  // the I/O completes. The views in `call` are valid only during the call.
  virtual Answer Decide(const InterceptedCall& call) = 0;

  // False if the answer for an interaction of `kind` is the same whatever VM its subject is in
  // (the policy has no rule of that kind: every such call stays in the caller's VM, allowed).
  // The handler then skips resolving the subject's VM (a few /proc reads per call, a large part
  // of an intercepted call's cost) and passes the channel's VM, which is also the kernel's word:
  // only processes that inherited the filter installed in that VM report on that channel.
  // Called on the loop thread just before Decide(); must be as cheap as a flag test.
  virtual bool SubjectMatters(v1::InteractionKind kind) const {
    (void)kind;
    return true;
  }
};

// What a backend offers the handler about the notification being handled.
class NotificationScope {
 public:
  virtual ~NotificationScope() = default;
  // True if the notification is still pending: the caller is alive and still waiting, so what
  // was read from its pid really was its memory (seccomp: SECCOMP_IOCTL_NOTIF_ID_VALID).
  virtual bool StillValid() = 0;
  // Hands the answer to this notification to the returned reply (see PendingReply); the backend
  // then sends nothing for it when Handle() returns, whatever Handle() returns. Null if the
  // backend can't defer (the default). At most once, on the loop thread, inside Handle().
  virtual PendingReplyPtr Defer() { return nullptr; }
};

inline PendingReplyPtr InterceptedCall::Defer() const {
  return deferral != nullptr ? deferral->Defer() : nullptr;
}

// How to answer one notification.
struct Response {
  enum class Kind : uint8_t {
    kContinue,  // Let the syscall run (seccomp: SECCOMP_USER_NOTIF_FLAG_CONTINUE).
    kFail,      // Fail it with `error`.
    kDrop,      // Answer nothing: the caller is gone.
    kDeferred,  // A PendingReply answers later (NotificationScope::Defer() was called).
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
