// The seccomp user-notify backend of InterceptionSource: one epoll set over every listener fd
// (no thread per process), served by one loop thread. Per notification: RECV into a
// preallocated buffer, note the id in the in-flight journal, hand it to the handler, SEND the
// answer (CONTINUE or an errno), clear the journal slot. No allocation and no lock on that
// path; one epoll_wait per batch of ready listeners.
//
// Deferred answers (NotificationScope::Defer): the reply owns the notification from then on.
// It holds the listener (a shared_ptr, so its fd stays open and its number can't be reused by
// another file even if the listener is removed meanwhile) and the journal; its Finish() sends
// SECCOMP_IOCTL_NOTIF_SEND from whatever thread calls it (the kernel serialises the notify
// ioctls per filter) and releases the journal slot (InflightJournal::Release). A reply dropped
// unfinished fails the call with EPERM. FinishWith() lets the broker answer with a descriptor
// (ADDFD) on the reply's listener instead. Only Defer() allocates.
//
// Restarts: the VM init keeps a duplicate of every listener, so when the agent dies the
// processes' pending calls wait instead of failing with ENOSYS; a new agent takes the
// listeners back (pidfd_getfd), calls RecoverInflight() to answer the calls the dead agent had
// received but not answered, then Add()s the listeners and runs.
#ifndef SHUTTLE_AGENT_INTERCEPT_SECCOMP_SOURCE_H_
#define SHUTTLE_AGENT_INTERCEPT_SECCOMP_SOURCE_H_

#include <sys/epoll.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "agent/intercept/inflight_journal.h"
#include "agent/intercept/interception.h"
#include "agent/intercept/unique_fd.h"

namespace shuttle::agent::intercept {

// Counters of the backend itself (the handler counts decisions). Relaxed atomics.
struct SeccompSourceStats {
  std::atomic<uint64_t> received{0};     // Notifications received.
  std::atomic<uint64_t> recv_errors{0};  // RECV failures other than "already gone".
  std::atomic<uint64_t> send_gone{0};    // SEND found the caller gone (ENOENT).
  std::atomic<uint64_t> send_errors{0};  // Other SEND failures.
  std::atomic<uint64_t> unjournaled{0};  // Journal full: id not noted.
  std::atomic<uint64_t> listeners_added{0};
  std::atomic<uint64_t> listeners_closed{0};    // Removed on EPOLLHUP (all their processes exited).
  std::atomic<uint64_t> deferred{0};            // Answers handed to a PendingReply.
  std::atomic<uint64_t> deferred_finished{0};   // ... sent by PendingReply::Finish().
  std::atomic<uint64_t> deferred_abandoned{0};  // ... replies dropped unfinished (EPERM sent).
};

class SeccompInterceptionSource final : public InterceptionSource {
 public:
  struct Options {
    // The in-flight journal; empty: none (tests). The agent uses /run/shuttle/inflight.
    std::string journal_path;
    uint32_t journal_slots = 256;
    // epoll_wait batch size.
    int max_events = 64;
  };

  static absl::StatusOr<std::unique_ptr<SeccompInterceptionSource>> Create(const Options& options);

  // Closes every listener it still owns (the VM inits' duplicates keep the filters alive).
  // Destroy only after Run() has returned.
  ~SeccompInterceptionSource() override;

  // Takes ownership of a seccomp listener fd of VM `vm` and serves it from the next epoll_wait
  // on. Asks the kernel for synchronous wake-ups (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux
  // 6.6; silently skipped where unsupported). Thread-safe.
  absl::Status Add(UniqueFd listener, std::string_view vm) override;

  absl::Status Run(NotificationHandler& handler) override;
  void Stop() override;

  // Answers with CONTINUE every id the journal found in flight that is still pending (ID_VALID)
  // on one of `listener_fds` (not owned), then forgets them all. Returns how many it answered.
  // Call before Run(), after taking the listeners back. No journal: returns 0.
  size_t RecoverInflight(absl::Span<const int> listener_fds);

  // Ids found in the journal at Create() (for logs and tests).
  std::vector<uint64_t> LeftoverIds() const;

  size_t listener_count() const;
  // Waits until listener_count() == n (e.g. a test waiting for a closed listener to be
  // removed); false after `timeout`.
  bool WaitForListenerCount(size_t n, absl::Duration timeout) const;
  // Valid as long as the source or any of its pending replies lives.
  const SeccompSourceStats& stats() const { return *stats_; }

 private:
  // Shared with the pending replies of its notifications, which may outlive the source.
  struct Listener : std::enable_shared_from_this<Listener> {
    UniqueFd fd;
    std::string vm;
  };
  class IdScope;
  class Reply;

  SeccompInterceptionSource(const Options& options, UniqueFd epoll, UniqueFd stop_event,
                            std::shared_ptr<InflightJournal> journal, size_t notif_size,
                            size_t resp_size);
  void Serve(Listener& listener, NotificationHandler& handler);
  void Remove(Listener* listener);

  UniqueFd epoll_;
  UniqueFd stop_event_;                       // eventfd; registered with a null data pointer.
  std::shared_ptr<InflightJournal> journal_;  // Shared with pending replies.
  // Kernel-sized buffers (SECCOMP_GET_NOTIF_SIZES), allocated once.
  std::vector<uint64_t> notif_buf_;
  std::vector<uint64_t> resp_buf_;
  size_t notif_size_;
  size_t resp_size_;
  std::vector<epoll_event> events_;  // epoll_wait batch.

  mutable absl::Mutex mu_;
  // Owns the listeners (with the pending replies); epoll data pointers point at them. Only the
  // loop thread removes.
  std::vector<std::shared_ptr<Listener>> listeners_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<SeccompSourceStats> stats_;  // Shared with pending replies.
};

}  // namespace shuttle::agent::intercept

#endif  // SHUTTLE_AGENT_INTERCEPT_SECCOMP_SOURCE_H_
