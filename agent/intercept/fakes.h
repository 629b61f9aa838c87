// Test doubles for the interception layer: a process whose memory and fds the test writes
// (FakeProcessMemory, FakeProcessFds), an InterceptionSource that tests inject notifications
// through (FakeInterceptionSource), and simple VmResolver / Decider implementations. For tests
// only (library shuttle_agent_intercept_testing).
#ifndef SHUTTLE_AGENT_INTERCEPT_FAKES_H_
#define SHUTTLE_AGENT_INTERCEPT_FAKES_H_

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/intercept/interception.h"
#include "agent/intercept/process_access.h"

namespace shuttle::agent::intercept {

// Memory made of regions the test places at chosen addresses; everything else faults.
// Thread-safe.
class FakeProcessMemory final : public ProcessMemory {
 public:
  // Places `bytes` at `addr` in process `pid`'s memory (replacing a region at the same address).
  void Map(pid_t pid, uint64_t addr, std::string bytes);
  template <typename T>
  void MapStruct(pid_t pid, uint64_t addr, const T& value) {
    Map(pid, addr, std::string(reinterpret_cast<const char*>(&value), sizeof(T)));
  }
  // Every later read of `pid` fails with `neg_errno` (e.g. -ESRCH: the process died).
  void FailReads(pid_t pid, int neg_errno);
  int reads() const;

  // Reads within one region; a read that starts inside a region and runs past its end returns
  // the part inside (like process_vm_readv at a page boundary); outside every region: -EFAULT.
  ssize_t Read(pid_t pid, uint64_t addr, void* buf, size_t len) override;

 private:
  mutable absl::Mutex mu_;
  std::map<pid_t, std::map<uint64_t, std::string>> regions_ ABSL_GUARDED_BY(mu_);
  std::map<pid_t, int> failures_ ABSL_GUARDED_BY(mu_);
  int reads_ ABSL_GUARDED_BY(mu_) = 0;
};

// Fds the test declares. Unknown fds are -EBADF. Thread-safe.
class FakeProcessFds final : public ProcessFds {
 public:
  void SetSocket(pid_t pid, int fd, int type_or_neg_errno);
  void SetPidfd(pid_t pid, int fd, int32_t target);  // target -1: exited.
  int socket_lookups() const;

  int SocketType(pid_t pid, int fd) override;
  int PidOfPidfd(pid_t pid, int fd, int32_t* target) override;

 private:
  mutable absl::Mutex mu_;
  std::map<std::pair<pid_t, int>, int> sockets_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<pid_t, int>, int32_t> pidfds_ ABSL_GUARDED_BY(mu_);
  int socket_lookups_ ABSL_GUARDED_BY(mu_) = 0;
};

// pid -> VM name, as the test sets it. Thread-safe.
class FakeVmResolver final : public VmResolver {
 public:
  void Set(pid_t pid, std::string vm);
  std::optional<std::string> VmOfPid(pid_t pid) const override;
  int lookups() const;  // VmOfPid calls so far.

 private:
  mutable absl::Mutex mu_;
  std::map<pid_t, std::string> vms_ ABSL_GUARDED_BY(mu_);
  mutable int lookups_ ABSL_GUARDED_BY(mu_) = 0;
};

// Records every call it is asked about and answers from a table keyed by object name
// (default: continue). Thread-safe.
class RecordingDecider final : public Decider {
 public:
  struct Seen {
    std::string subject_vm;
    std::string channel_vm;
    pid_t pid = 0;
    int nr = 0;
    v1::InteractionKind kind = v1::INTERACTION_KIND_UNSPECIFIED;
    std::string name;
    ObjectInfo object;
  };
  // Calls on `name` fail with `error`.
  void Deny(std::string name, int error);
  // Calls of `kind` fail with `error` (a name rule wins over a kind rule).
  void DenyKind(v1::InteractionKind kind, int error);
  // Calls of `kind` are decided the same whatever the subject's VM (SubjectMatters false).
  void SubjectIrrelevant(v1::InteractionKind kind);
  std::vector<Seen> seen() const;
  size_t count() const;

  Answer Decide(const InterceptedCall& call) override;
  bool SubjectMatters(v1::InteractionKind kind) const override;

 private:
  mutable absl::Mutex mu_;
  std::set<v1::InteractionKind> subject_irrelevant_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int, std::less<>> deny_ ABSL_GUARDED_BY(mu_);
  std::map<v1::InteractionKind, int> deny_kind_ ABSL_GUARDED_BY(mu_);
  std::vector<Seen> seen_ ABSL_GUARDED_BY(mu_);
};

// An InterceptionSource fed by the test. Inject() queues a notification; Drain() handles the
// queue on the calling thread; Run() does the same on a loop thread until Stop(). Each
// notification's NotificationScope answers StillValid() with the `still_valid` it was injected
// with, and offers Defer() unless set_deferral(false): a deferred notification's answer is
// whatever its reply is finished with, from any thread (EPERM if the reply is dropped
// unfinished, as the real backend does); WaitForReply() waits for it. Thread-safe.
class FakeInterceptionSource final : public InterceptionSource {
 public:
  struct Handled {
    SyscallEvent event;
    Response response;
    int validity_checks = 0;  // How often the handler asked StillValid().
    bool deferred = false;    // The handler took a PendingReply (see WaitForReply()).
  };
  // How a deferred notification was answered.
  struct Reply {
    Answer answer;
    bool abandoned = false;  // The reply was destroyed unfinished (answer: EPERM).
    // Answered by FinishWith(): its `send` (called with channel -1) returned OK or NOT_FOUND;
    // `answer` is then Continue().
    bool handed_over = false;
  };

  FakeInterceptionSource();

  // Whether scopes offer Defer() (a backend that can't defer returns null). Default true.
  void set_deferral(bool supported);
  // Waits until the deferred notification `id` is answered; nullopt after `timeout`.
  std::optional<Reply> WaitForReply(uint64_t id, absl::Duration timeout) const;
  // Deferred notifications whose reply is not finished yet.
  size_t pending_replies() const;

  void Inject(const SyscallEvent& event, std::string channel_vm, bool still_valid = true);
  std::vector<Handled> Drain(NotificationHandler& handler);
  std::vector<Handled> handled() const;  // Everything Run() has handled so far.
  // Waits until Run() has handled at least `n` notifications; false on timeout.
  bool WaitForHandled(size_t n, absl::Duration timeout) const;
  std::vector<std::string> channels() const;

  absl::Status Add(UniqueFd channel, std::string_view vm) override;
  absl::Status Run(NotificationHandler& handler) override;
  void Stop() override;

 private:
  struct Pending {
    SyscallEvent event;
    std::string vm;
    bool still_valid;
  };
  // The answers of deferred notifications; shared with the replies, which may outlive us.
  struct Replies {
    mutable absl::Mutex mu;
    std::map<uint64_t, Reply> answered ABSL_GUARDED_BY(mu);
    size_t pending ABSL_GUARDED_BY(mu) = 0;
  };
  class FakeScope;
  class FakeReply;
  Handled HandleOne(NotificationHandler& handler, const Pending& pending);

  const std::shared_ptr<Replies> replies_;
  mutable absl::Mutex mu_;
  bool deferral_ ABSL_GUARDED_BY(mu_) = true;
  std::deque<Pending> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<Handled> handled_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<UniqueFd, std::string>> channels_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_FAKES_H_
