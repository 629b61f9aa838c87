#include "agent/intercept/fakes.h"

#include <errno.h>

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

std::optional<std::string> FakeVmResolver::VmOfPid(pid_t pid) const {
  absl::MutexLock lock(&mu_);
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

namespace {

class FakeScope final : public NotificationScope {
 public:
  explicit FakeScope(bool valid) : valid_(valid) {}
  bool StillValid() override {
    ++checks_;
    return valid_;
  }
  int checks() const { return checks_; }

 private:
  bool valid_;
  int checks_ = 0;
};

}  // namespace

void FakeInterceptionSource::Inject(const SyscallEvent& event, std::string channel_vm,
                                    bool still_valid) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(Pending{event, std::move(channel_vm), still_valid});
}

FakeInterceptionSource::Handled FakeInterceptionSource::HandleOne(NotificationHandler& handler,
                                                                  const Pending& pending) {
  FakeScope scope(pending.still_valid);
  Handled h;
  h.event = pending.event;
  h.response = handler.Handle(pending.event, pending.vm, scope);
  h.validity_checks = scope.checks();
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
