#include "agent/intercept/seccomp_source.h"

#include <errno.h>
#include <linux/seccomp.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

// Linux 6.6; Debian 12's headers (6.1) lack them.
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

namespace shuttle::agent::intercept {
namespace {

void Bump(std::atomic<uint64_t>& counter) { counter.fetch_add(1, std::memory_order_relaxed); }

bool ShouldLog(uint64_t count_after) { return (count_after & (count_after - 1)) == 0; }

absl::Status ErrnoStatus(int err, std::string_view what) {
  return absl::InternalError(absl::StrCat(std::string(what), ": ", std::strerror(err)));
}

// ioctl, retried on EINTR (the notify ioctls take an interruptible lock).
int Ioctl(int fd, uint64_t request, void* arg) {
  int rc;
  do {
    rc = ioctl(fd, request, arg);
  } while (rc != 0 && errno == EINTR);
  return rc;
}

bool IdValid(int fd, uint64_t id) { return Ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0; }

// Answers notification `id` on listener `fd`: continue if `error` is 0, else fail with `error`
// (EPERM if it is not a valid positive errno: a bad value never reaches the caller). `resp`
// is a zeroed buffer of the kernel's response size. Counts what SEND says.
void Send(int fd, uint64_t id, int error, pid_t pid, seccomp_notif_resp* resp,
          SeccompSourceStats& stats) {
  resp->id = id;
  if (error == 0) {
    resp->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  } else {
    if (error < 0 || error > 4095) error = EPERM;
    resp->error = -error;
  }
  if (Ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, resp) != 0) {
    if (errno == ENOENT) {
      Bump(stats.send_gone);
    } else {
      uint64_t count = stats.send_errors.fetch_add(1, std::memory_order_relaxed) + 1;
      if (ShouldLog(count)) {
        SHUTTLE_LOG(ERROR) << "intercept: SECCOMP_IOCTL_NOTIF_SEND for pid " << pid << ": "
                           << std::strerror(errno) << " (" << count << " so far)";
      }
    }
  }
}

}  // namespace

// The deferred answer to one notification; see the header comment.
class SeccompInterceptionSource::Reply final : public PendingReply {
 public:
  Reply(std::shared_ptr<Listener> listener, std::shared_ptr<InflightJournal> journal,
        std::shared_ptr<SeccompSourceStats> stats, uint64_t id, int slot, pid_t pid)
      : listener_(std::move(listener)),
        journal_(std::move(journal)),
        stats_(std::move(stats)),
        id_(id),
        slot_(slot),
        pid_(pid) {}

  ~Reply() override {
    if (!Claim()) return;
    Bump(stats_->deferred_abandoned);
    Respond(EPERM);
  }

  void Finish(Answer answer) override {
    if (!Claim()) {
      SHUTTLE_LOG(ERROR) << "intercept: a deferred reply for pid " << pid_
                         << " was finished twice; the second answer is ignored";
      return;
    }
    Bump(stats_->deferred_finished);
    // Deferred() is no answer: fail closed rather than leave the caller waiting.
    Respond(answer.is_deferred() ? EPERM : answer.error);
  }

  absl::Status FinishWith(absl::FunctionRef<absl::Status(int, uint64_t)> send) override {
    State open = State::kOpen;
    if (!state_.compare_exchange_strong(open, State::kSending, std::memory_order_acq_rel)) {
      return absl::FailedPreconditionError(
          absl::StrCat("the deferred reply for pid ", pid_, " was already answered"));
    }
    absl::Status sent = send(listener_->fd.get(), id_);
    if (!sent.ok() && !absl::IsNotFound(sent)) {
      state_.store(State::kOpen, std::memory_order_release);  // Still the caller's to answer.
      return sent;
    }
    state_.store(State::kDone, std::memory_order_release);
    Bump(absl::IsNotFound(sent) ? stats_->send_gone : stats_->deferred_finished);
    if (journal_ != nullptr) journal_->Release(slot_);
    return sent;
  }

 private:
  void Respond(int error) {
    // On the stack, not the loop's buffer (another thread). SEND reads exactly the kernel's
    // struct seccomp_notif_resp, whose layout has not grown since it was added.
    seccomp_notif_resp resp{};
    Send(listener_->fd.get(), id_, error, pid_, &resp, *stats_);
    if (journal_ != nullptr) journal_->Release(slot_);
  }

  const std::shared_ptr<Listener> listener_;  // Keeps the fd (and its number) ours.
  const std::shared_ptr<InflightJournal> journal_;
  const std::shared_ptr<SeccompSourceStats> stats_;
  const uint64_t id_;
  const int slot_;  // -1: unjournaled.
  const pid_t pid_;
  // kOpen -> kDone by Finish() or the destructor; kOpen -> kSending -> kDone (or back to kOpen
  // when `send` failed with the call still pending) by FinishWith().
  enum class State : uint8_t { kOpen, kSending, kDone };
  std::atomic<State> state_{State::kOpen};

  // Takes the right to answer; false if the reply was answered (or is being answered) already.
  bool Claim() {
    State open = State::kOpen;
    return state_.compare_exchange_strong(open, State::kDone, std::memory_order_acq_rel);
  }
};

class SeccompInterceptionSource::IdScope final : public NotificationScope {
 public:
  IdScope(SeccompInterceptionSource& source, Listener& listener, uint64_t id, int slot, pid_t pid)
      : source_(source), listener_(listener), id_(id), slot_(slot), pid_(pid) {}
  bool StillValid() override { return IdValid(listener_.fd.get(), id_); }

  PendingReplyPtr Defer() override {
    if (deferred_) return nullptr;  // At most once: a second reply would answer twice.
    deferred_ = true;
    Bump(source_.stats_->deferred);
    return std::make_unique<Reply>(listener_.shared_from_this(), source_.journal_, source_.stats_,
                                   id_, slot_, pid_);
  }
  bool deferred() const { return deferred_; }

 private:
  SeccompInterceptionSource& source_;
  Listener& listener_;
  uint64_t id_;
  int slot_;
  pid_t pid_;
  bool deferred_ = false;
};

absl::StatusOr<std::unique_ptr<SeccompInterceptionSource>> SeccompInterceptionSource::Create(
    const Options& options) {
  if (options.max_events < 1) return absl::InvalidArgumentError("max_events must be >= 1");
  seccomp_notif_sizes sizes{};
  if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) {
    return ErrnoStatus(errno, "seccomp(SECCOMP_GET_NOTIF_SIZES)");
  }
  UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return ErrnoStatus(errno, "epoll_create1");
  UniqueFd stop(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop) return ErrnoStatus(errno, "eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, stop.get(), &ev) != 0) {
    return ErrnoStatus(errno, "epoll_ctl(eventfd)");
  }
  std::shared_ptr<InflightJournal> journal;
  if (!options.journal_path.empty()) {
    auto opened = InflightJournal::Open(options.journal_path, options.journal_slots);
    if (!opened.ok()) return opened.status();
    journal = std::move(opened).value();
  }
  size_t notif_size = std::max<size_t>(sizes.seccomp_notif, sizeof(seccomp_notif));
  size_t resp_size = std::max<size_t>(sizes.seccomp_notif_resp, sizeof(seccomp_notif_resp));
  return std::unique_ptr<SeccompInterceptionSource>(new SeccompInterceptionSource(
      options, std::move(epoll), std::move(stop), std::move(journal), notif_size, resp_size));
}

SeccompInterceptionSource::SeccompInterceptionSource(const Options& options, UniqueFd epoll,
                                                     UniqueFd stop_event,
                                                     std::shared_ptr<InflightJournal> journal,
                                                     size_t notif_size, size_t resp_size)
    : epoll_(std::move(epoll)),
      stop_event_(std::move(stop_event)),
      journal_(std::move(journal)),
      notif_buf_((notif_size + 7) / 8),
      resp_buf_((resp_size + 7) / 8),
      notif_size_(notif_size),
      resp_size_(resp_size),
      events_(static_cast<size_t>(options.max_events)),
      stats_(std::make_shared<SeccompSourceStats>()) {}

SeccompInterceptionSource::~SeccompInterceptionSource() = default;

absl::Status SeccompInterceptionSource::Add(UniqueFd listener, std::string_view vm) {
  if (!listener) return absl::InvalidArgumentError("Add: invalid listener fd");
  uint64_t flags = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
  if (ioctl(listener.get(), SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags) != 0) {
    // EINVAL: a kernel before 6.6, fine. Anything else: not a seccomp listener at all.
    if (errno != EINVAL) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Add: fd ", listener.get(), " is not a seccomp listener: ", std::strerror(errno)));
    }
  }
  auto owned = std::make_shared<Listener>();
  owned->fd = std::move(listener);
  owned->vm = std::string(vm);
  Listener* raw = owned.get();
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = raw;
  absl::MutexLock lock(&mu_);
  listeners_.push_back(std::move(owned));
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, raw->fd.get(), &ev) != 0) {
    int err = errno;
    listeners_.pop_back();
    return ErrnoStatus(err, "Add: epoll_ctl");
  }
  Bump(stats_->listeners_added);
  return absl::OkStatus();
}

void SeccompInterceptionSource::Remove(Listener* listener) {
  epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener->fd.get(), nullptr);
  absl::MutexLock lock(&mu_);
  auto it = std::find_if(listeners_.begin(), listeners_.end(),
                         [listener](const auto& l) { return l.get() == listener; });
  // Closes the fd, unless a pending reply still holds the listener (then the reply does).
  if (it != listeners_.end()) listeners_.erase(it);
  Bump(stats_->listeners_closed);
}

size_t SeccompInterceptionSource::listener_count() const {
  absl::MutexLock lock(&mu_);
  return listeners_.size();
}

bool SeccompInterceptionSource::WaitForListenerCount(size_t n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto reached = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return listeners_.size() == n; };
  return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
}

void SeccompInterceptionSource::Stop() {
  uint64_t one = 1;
  // Async-signal-safe; EAGAIN only if the counter is saturated, i.e. already signalled.
  ssize_t ignored = write(stop_event_.get(), &one, sizeof(one));
  (void)ignored;
}

absl::Status SeccompInterceptionSource::Run(NotificationHandler& handler) {
  for (;;) {
    int n = epoll_wait(epoll_.get(), events_.data(), static_cast<int>(events_.size()), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "epoll_wait");
    }
    bool stop = false;
    for (int i = 0; i < n; ++i) {
      const epoll_event& e = events_[static_cast<size_t>(i)];
      if (e.data.ptr == nullptr) {
        uint64_t value;
        ssize_t ignored = read(stop_event_.get(), &value, sizeof(value));
        (void)ignored;
        stop = true;
        continue;
      }
      auto* listener = static_cast<Listener*>(e.data.ptr);
      if ((e.events & EPOLLIN) != 0) Serve(*listener, handler);
      if ((e.events & (EPOLLHUP | EPOLLERR)) != 0) Remove(listener);
    }
    if (stop) return absl::OkStatus();
  }
}

void SeccompInterceptionSource::Serve(Listener& listener, NotificationHandler& handler) {
  const int fd = listener.fd.get();
  auto* notif = reinterpret_cast<seccomp_notif*>(notif_buf_.data());
  std::memset(notif, 0, notif_size_);  // RECV insists on a zeroed buffer.
  if (Ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, notif) != 0) {
    // ENOENT: the caller was interrupted or killed between the wake-up and now.
    if (errno != ENOENT) {
      uint64_t count = stats_->recv_errors.fetch_add(1, std::memory_order_relaxed) + 1;
      if (ShouldLog(count)) {
        SHUTTLE_LOG(ERROR) << "intercept: SECCOMP_IOCTL_NOTIF_RECV on a listener of VM '"
                           << listener.vm << "': " << std::strerror(errno) << " (" << count
                           << " so far)";
      }
    }
    return;
  }
  Bump(stats_->received);
  const uint64_t id = notif->id;
  int slot = -1;
  if (journal_ != nullptr) {
    slot = journal_->Record(id);
    if (slot < 0) Bump(stats_->unjournaled);
  }

  SyscallEvent event;
  event.id = id;
  event.pid = static_cast<pid_t>(notif->pid);
  event.nr = notif->data.nr;
  event.arch = notif->data.arch;
  for (int i = 0; i < 6; ++i) event.args[i] = notif->data.args[i];
  IdScope scope(*this, listener, id, slot, event.pid);
  Response response = handler.Handle(event, listener.vm, scope);
  // A reply took the notification (and its journal slot) over: it answers, not us.
  if (scope.deferred()) return;
  int error = 0;
  switch (response.kind) {
    case Response::Kind::kFail:
      error = response.error > 0 ? response.error : EPERM;
      break;
    case Response::Kind::kDeferred:
      // Deferred without a reply: a decider bug. Fail closed rather than leave the caller hanging.
      SHUTTLE_LOG(ERROR) << "intercept: the handler deferred the call of pid " << event.pid
                         << " without taking a reply; failing it with EPERM";
      error = EPERM;
      break;
    case Response::Kind::kContinue:
    case Response::Kind::kDrop:
      // kDrop too: answering a notification that is gone fails harmlessly with ENOENT, while
      // leaving one unanswered by mistake would hang its caller.
      error = 0;
      break;
  }
  auto* resp = reinterpret_cast<seccomp_notif_resp*>(resp_buf_.data());
  std::memset(resp, 0, resp_size_);
  Send(fd, id, error, event.pid, resp, *stats_);
  if (slot >= 0) journal_->Clear(slot);
}

size_t SeccompInterceptionSource::RecoverInflight(absl::Span<const int> listener_fds) {
  if (journal_ == nullptr) return 0;
  size_t answered = 0;
  for (uint64_t id : journal_->leftover()) {
    for (int fd : listener_fds) {
      if (!IdValid(fd, id)) continue;
      seccomp_notif_resp resp{};
      resp.id = id;
      resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
      if (Ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) == 0) ++answered;
      break;
    }
  }
  if (!journal_->leftover().empty()) {
    SHUTTLE_LOG(INFO) << "intercept: recovered " << answered << " of "
                      << journal_->leftover().size()
                      << " in-flight notifications left by the previous agent";
  }
  journal_->ForgetLeftover();
  return answered;
}

std::vector<uint64_t> SeccompInterceptionSource::LeftoverIds() const {
  if (journal_ == nullptr) return {};
  return journal_->leftover();
}

}  // namespace shuttle::agent::intercept
