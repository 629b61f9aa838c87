#include "agent/intercept/fakes.h"

#include <errno.h>

#include <atomic>
#include <cstring>

namespace shuttle::agent::intercept {

void FakeProcessMemory::Map(pid_t pid, uint64_t addr, std::string bytes) {
  absl::MutexLock lock(&mu_);
  regions_[pid][addr] = std::move(bytes);
}

void FakeProcessMemory::FailReads(pid_t pid, int neg_errno) {
  absl::MutexLock lock(&mu_);
  failures_[pid] = neg_errno;
}

int FakeProcessMemory::reads() const {
  absl::MutexLock lock(&mu_);
  return reads_;
}

ssize_t FakeProcessMemory::Read(pid_t pid, uint64_t addr, void* buf, size_t len) {
  absl::MutexLock lock(&mu_);
  ++reads_;
  if (auto f = failures_.find(pid); f != failures_.end()) return f->second;
  auto p = regions_.find(pid);
  if (p == regions_.end()) return -EFAULT;
  // The last region starting at or before addr.
  auto it = p->second.upper_bound(addr);
  if (it == p->second.begin()) return -EFAULT;
  --it;
  uint64_t offset = addr - it->first;
  if (offset >= it->second.size()) return -EFAULT;
  size_t n = std::min<size_t>(len, it->second.size() - offset);
  std::memcpy(buf, it->second.data() + offset, n);
  return static_cast<ssize_t>(n);
}

void FakeProcessFds::SetSocket(pid_t pid, int fd, int type_or_neg_errno) {
  absl::MutexLock lock(&mu_);
  sockets_[{pid, fd}] = type_or_neg_errno;
}

void FakeProcessFds::SetPidfd(pid_t pid, int fd, int32_t target) {
  absl::MutexLock lock(&mu_);
  pidfds_[{pid, fd}] = target;
}

int FakeProcessFds::socket_lookups() const {
  absl::MutexLock lock(&mu_);
  return socket_lookups_;
}

int FakeProcessFds::SocketType(pid_t pid, int fd) {
  absl::MutexLock lock(&mu_);
  ++socket_lookups_;
  auto it = sockets_.find({pid, fd});
  return it == sockets_.end() ? -EBADF : it->second;
}

int FakeProcessFds::PidOfPidfd(pid_t pid, int fd, int32_t* target) {
  absl::MutexLock lock(&mu_);
  auto it = pidfds_.find({pid, fd});
  if (it == pidfds_.end()) return -EBADF;
  *target = it->second;
  return 0;
}

void FakeVmResolver::Set(pid_t pid, std::string vm) {
  absl::MutexLock lock(&mu_);
  vms_[pid] = std::move(vm);
}

int FakeVmResolver::lookups() const {
  absl::MutexLock lock(&mu_);
  return lookups_;
}

std::optional<std::string> FakeVmResolver::VmOfPid(pid_t pid) const {
  absl::MutexLock lock(&mu_);
  ++lookups_;
  auto it = vms_.find(pid);
  if (it == vms_.end()) return std::nullopt;
  return it->second;
}

void RecordingDecider::Deny(std::string name, int error) {
  absl::MutexLock lock(&mu_);
  deny_[std::move(name)] = error;
}

void RecordingDecider::DenyKind(v1::InteractionKind kind, int error) {
  absl::MutexLock lock(&mu_);
  deny_kind_[kind] = error;
}

std::vector<RecordingDecider::Seen> RecordingDecider::seen() const {
  absl::MutexLock lock(&mu_);
  return seen_;
}

size_t RecordingDecider::count() const {
  absl::MutexLock lock(&mu_);
  return seen_.size();
}

void RecordingDecider::SubjectIrrelevant(v1::InteractionKind kind) {
  absl::MutexLock lock(&mu_);
  subject_irrelevant_.insert(kind);
}

bool RecordingDecider::SubjectMatters(v1::InteractionKind kind) const {
  absl::MutexLock lock(&mu_);
  return subject_irrelevant_.count(kind) == 0;
}

Answer RecordingDecider::Decide(const InterceptedCall& call) {
  absl::MutexLock lock(&mu_);
  Seen s;
  s.subject_vm = std::string(call.subject_vm);
  s.channel_vm = std::string(call.channel_vm);
  s.pid = call.pid;
  s.nr = call.event->nr;
  s.kind = call.object->kind;
  s.name = std::string(call.object->name());
  s.object = *call.object;
  seen_.push_back(std::move(s));
  if (auto it = deny_.find(call.object->name()); it != deny_.end()) {
    return Answer::Fail(it->second);
  }
  if (auto it = deny_kind_.find(call.object->kind); it != deny_kind_.end()) {
    return Answer::Fail(it->second);
  }
  return Answer::Continue();
}

// Records the answer of one deferred notification in the source's shared table.
class FakeInterceptionSource::FakeReply final : public PendingReply {
 public:
  FakeReply(std::shared_ptr<Replies> replies, uint64_t id) : replies_(std::move(replies)), id_(id) {
    absl::MutexLock lock(&replies_->mu);
    ++replies_->pending;
  }
  ~FakeReply() override {
    if (!finished_.exchange(true)) Record(Answer::Fail(EPERM), true);
  }
  void Finish(Answer answer) override {
    if (finished_.exchange(true)) return;
    Record(answer.is_deferred() ? Answer::Fail(EPERM) : answer, false);
  }
  // Like the seccomp reply: finished when `send` says OK or NOT_FOUND; the channel is -1.
  absl::Status FinishWith(absl::FunctionRef<absl::Status(int, uint64_t)> send) override {
    if (finished_.exchange(true)) {
      return absl::FailedPreconditionError("the fake reply was already answered");
    }
    absl::Status sent = send(-1, id_);
    if (!sent.ok() && !absl::IsNotFound(sent)) {
      finished_.store(false);
      return sent;
    }
    Record(Answer::Continue(), false, /*handed_over=*/true);
    return sent;
  }

 private:
  void Record(Answer answer, bool abandoned, bool handed_over = false) {
    absl::MutexLock lock(&replies_->mu);
    --replies_->pending;
    replies_->answered[id_] = Reply{answer, abandoned, handed_over};
  }

  const std::shared_ptr<Replies> replies_;
  const uint64_t id_;
  std::atomic<bool> finished_{false};
};

class FakeInterceptionSource::FakeScope final : public NotificationScope {
 public:
  FakeScope(bool valid, bool deferral, std::shared_ptr<Replies> replies, uint64_t id)
      : valid_(valid), deferral_(deferral), replies_(std::move(replies)), id_(id) {}
  bool StillValid() override {
    ++checks_;
    return valid_;
  }
  PendingReplyPtr Defer() override {
    if (!deferral_ || deferred_) return nullptr;
    deferred_ = true;
    return std::make_unique<FakeReply>(replies_, id_);
  }
  int checks() const { return checks_; }
  bool deferred() const { return deferred_; }

 private:
  bool valid_;
  bool deferral_;
  std::shared_ptr<Replies> replies_;
  uint64_t id_;
  int checks_ = 0;
  bool deferred_ = false;
};

FakeInterceptionSource::FakeInterceptionSource() : replies_(std::make_shared<Replies>()) {}

void FakeInterceptionSource::set_deferral(bool supported) {
  absl::MutexLock lock(&mu_);
  deferral_ = supported;
}

std::optional<FakeInterceptionSource::Reply> FakeInterceptionSource::WaitForReply(
    uint64_t id, absl::Duration timeout) const {
  absl::MutexLock lock(&replies_->mu);
  auto answered = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(replies_->mu) {
    return replies_->answered.count(id) > 0;
  };
  if (!replies_->mu.AwaitWithTimeout(absl::Condition(&answered), timeout)) return std::nullopt;
  return replies_->answered.at(id);
}

size_t FakeInterceptionSource::pending_replies() const {
  absl::MutexLock lock(&replies_->mu);
  return replies_->pending;
}

void FakeInterceptionSource::Inject(const SyscallEvent& event, std::string channel_vm,
                                    bool still_valid) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(Pending{event, std::move(channel_vm), still_valid});
}

FakeInterceptionSource::Handled FakeInterceptionSource::HandleOne(NotificationHandler& handler,
                                                                  const Pending& pending) {
  bool deferral;
  {
    absl::MutexLock lock(&mu_);
    deferral = deferral_;
  }
  FakeScope scope(pending.still_valid, deferral, replies_, pending.event.id);
  Handled h;
  h.event = pending.event;
  h.response = handler.Handle(pending.event, pending.vm, scope);
  h.validity_checks = scope.checks();
  h.deferred = scope.deferred();
  return h;
}

std::vector<FakeInterceptionSource::Handled> FakeInterceptionSource::Drain(
    NotificationHandler& handler) {
  std::deque<Pending> batch;
  {
    absl::MutexLock lock(&mu_);
    batch.swap(queue_);
  }
  std::vector<Handled> out;
  out.reserve(batch.size());
  for (const Pending& p : batch) out.push_back(HandleOne(handler, p));
  return out;
}

std::vector<FakeInterceptionSource::Handled> FakeInterceptionSource::handled() const {
  absl::MutexLock lock(&mu_);
  return handled_;
}

bool FakeInterceptionSource::WaitForHandled(size_t n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return handled_.size() >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
}

std::vector<std::string> FakeInterceptionSource::channels() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& c : channels_) out.push_back(c.second);
  return out;
}

absl::Status FakeInterceptionSource::Add(UniqueFd channel, std::string_view vm) {
  absl::MutexLock lock(&mu_);
  channels_.emplace_back(std::move(channel), std::string(vm));
  return absl::OkStatus();
}

absl::Status FakeInterceptionSource::Run(NotificationHandler& handler) {
  for (;;) {
    Pending p;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](FakeInterceptionSource* self) ABSL_EXCLUSIVE_LOCKS_REQUIRED(self->mu_) {
            return self->stop_ || !self->queue_.empty();
          },
          this));
      if (stop_) {
        stop_ = false;
        return absl::OkStatus();
      }
      p = std::move(queue_.front());
      queue_.pop_front();
    }
    Handled h = HandleOne(handler, p);
    absl::MutexLock lock(&mu_);
    handled_.push_back(h);
  }
}

void FakeInterceptionSource::Stop() {
  absl::MutexLock lock(&mu_);
  stop_ = true;
}

}  // namespace shuttle::agent::intercept
