#include "agent/broker/broker.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "agent/broker/errors.h"
#include "agent/broker/openers.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace shuttle::agent::broker {
namespace {

// Supplementary groups kept when switching to a caller's identity.
constexpr size_t kMaxGroups = 256;

const char* UnixTypeName(int type) {
  switch (type) {
    case SOCK_STREAM:
      return "stream";
    case SOCK_SEQPACKET:
      return "seqpacket";
    case SOCK_DGRAM:
      return "dgram";
    default:
      return "type?";
  }
}

// Puts the calling worker thread into one namespace of a target (through its init's pidfd) and,
// when destroyed, back into the agent's own. A worker that cannot go back would serve later
// requests from inside a VM: that is a broken invariant, and the agent crashes loudly.
class NamespaceScope {
 public:
  NamespaceScope(int home_fd, int nstype) : home_fd_(home_fd), nstype_(nstype) {}
  NamespaceScope(const NamespaceScope&) = delete;
  NamespaceScope& operator=(const NamespaceScope&) = delete;
  ~NamespaceScope() {
    if (entered_ && setns(home_fd_, nstype_) != 0) {
      SHUTTLE_LOG(FATAL) << "broker worker cannot return to the agent's "
                         << (nstype_ == CLONE_NEWNET ? "network" : "IPC")
                         << " namespace: " << strerror(errno);
    }
  }

  absl::Status Enter(const BrokerTarget& target) {
    if (setns(target.pidfd(), nstype_) != 0) {
      if (errno == ESRCH) return target.GoneError();  // Exited (a zombie has no namespaces).
      return ErrnoError(errno,
                        absl::StrCat("VM ", target.name(), ": setns into its ",
                                     nstype_ == CLONE_NEWNET ? "network" : "IPC", " namespace"));
    }
    entered_ = true;
    return absl::OkStatus();
  }

 private:
  const int home_fd_;
  const int nstype_;
  bool entered_ = false;
};

// Gives the calling worker thread (only it: raw syscalls, not glibc's process-wide set*id) the
// caller's effective and file-system uid and gid and its groups, and restores the agent's
// (`own`, read once by Broker::Create) when destroyed. The real and saved uid stay the agent's,
// so the way back needs no capability. A caller with the agent's own identity (root in a VM
// without a user namespace of its own) needs no switch, and gets none.
class CredentialScope {
 public:
  explicit CredentialScope(const Credentials& own) : own_(own) {}
  CredentialScope(const CredentialScope&) = delete;
  CredentialScope& operator=(const CredentialScope&) = delete;
  ~CredentialScope() {
    if (!entered_) return;
    if (syscall(SYS_setresuid, -1, own_.uid, -1) != 0 ||
        syscall(SYS_setresgid, -1, own_.gid, -1) != 0 ||
        syscall(SYS_setgroups, own_.groups.size(), own_.groups.data()) != 0) {
      SHUTTLE_LOG(FATAL) << "broker worker cannot restore the agent's credentials: "
                         << strerror(errno);
    }
  }

  absl::Status Enter(const Credentials& as, absl::string_view where) {
    const size_t groups = std::min(as.groups.size(), kMaxGroups);
    if (as.uid == own_.uid && as.gid == own_.gid && groups == own_.groups.size() &&
        std::equal(own_.groups.begin(), own_.groups.end(), as.groups.begin())) {
      return absl::OkStatus();
    }
    entered_ = true;  // From here on, whatever was changed is restored.
    if (syscall(SYS_setgroups, groups, as.groups.data()) != 0 ||
        syscall(SYS_setresgid, -1, as.gid, -1) != 0 ||
        syscall(SYS_setresuid, -1, as.uid, -1) != 0) {
      return ErrnoError(errno, absl::StrCat(where, ": switching to uid ", as.uid, " gid ", as.gid));
    }
    return absl::OkStatus();
  }

 private:
  const Credentials& own_;
  bool entered_ = false;
};

// The calling thread's effective uid and gid and its groups: the agent's own, which workers
// return to after each job.
absl::StatusOr<Credentials> OwnCredentials() {
  Credentials own;
  own.uid = geteuid();
  own.gid = getegid();
  const int n = getgroups(0, nullptr);
  if (n < 0) return ErrnoError(errno, "broker: getgroups");
  own.groups.resize(static_cast<size_t>(n));
  if (getgroups(n, own.groups.data()) != n) return ErrnoError(errno, "broker: getgroups");
  if (own.groups.size() > kMaxGroups) {
    return absl::FailedPreconditionError(absl::StrCat("broker: the agent has ", own.groups.size(),
                                                      " groups, more than ", kMaxGroups));
  }
  return own;
}

absl::StatusOr<UniqueFd> OpenOwnNamespace(const char* kind) {
  const std::string path = absl::StrCat("/proc/thread-self/ns/", kind);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError(errno, absl::StrCat("broker: open ", path));
  return fd;
}

}  // namespace

absl::StatusOr<InetRequest> InetRequest::Make(const std::string& ip, uint16_t port, int type) {
  InetRequest r;
  r.type = type;
  auto& v4 = reinterpret_cast<sockaddr_in&>(r.address);
  auto& v6 = reinterpret_cast<sockaddr_in6&>(r.address);
  if (inet_pton(AF_INET, ip.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(port);
  } else if (inet_pton(AF_INET6, ip.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(port);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("'", ip, "' is not an IP address"));
  }
  return r;
}

std::string DescribeRequest(const BrokerRequest& request) {
  struct Describer {
    std::string operator()(const UnixPathRequest& r) const {
      return absl::StrCat("unix ", UnixTypeName(r.type), " ", r.path);
    }
    std::string operator()(const UnixAbstractRequest& r) const {
      return absl::StrCat("unix ", UnixTypeName(r.type), " @", absl::CHexEscape(r.name));
    }
    std::string operator()(const InetRequest& r) const {
      char ip[INET6_ADDRSTRLEN] = "?";
      uint16_t port = 0;
      const bool v4 = r.address.ss_family == AF_INET;
      if (v4) {
        const auto& a = reinterpret_cast<const sockaddr_in&>(r.address);
        inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
        port = ntohs(a.sin_port);
      } else {
        const auto& a = reinterpret_cast<const sockaddr_in6&>(r.address);
        inet_ntop(AF_INET6, &a.sin6_addr, ip, sizeof(ip));
        port = ntohs(a.sin6_port);
      }
      return absl::StrCat(r.type == SOCK_DGRAM ? "udp " : "tcp ", v4 ? "" : "[", ip, v4 ? "" : "]",
                          ":", port);
    }
    std::string operator()(const MqRequest& r) const { return absl::StrCat("mq ", r.name); }
  };
  return std::visit(Describer{}, request);
}

absl::StatusOr<std::unique_ptr<Broker>> Broker::Create(const Options& options) {
  if (options.threads < 1 || options.max_queued < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("broker: needs at least one thread (got ", options.threads, ") and a queue"));
  }
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd net, OpenOwnNamespace("net"));
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd ipc, OpenOwnNamespace("ipc"));
  SHUTTLE_ASSIGN_OR_RETURN(Credentials own, OwnCredentials());
  return std::unique_ptr<Broker>(
      new Broker(options, std::move(net), std::move(ipc), std::move(own)));
}

Broker::Broker(const Options& options, UniqueFd home_net, UniqueFd home_ipc, Credentials own)
    : options_(options),
      home_net_(std::move(home_net)),
      home_ipc_(std::move(home_ipc)),
      own_(std::move(own)) {
  // New threads start in this (the creating) thread's namespaces: the agent's own.
  for (int i = 0; i < options_.threads; ++i) workers_.emplace_back([this] { Work(); });
}

Broker::~Broker() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

void Broker::Open(BrokerTargetPtr target, BrokerRequest request, OpenOptions options,
                  Callback done) {
  absl::Status invalid = target == nullptr ? absl::InvalidArgumentError("broker: no target")
                                           : broker_internal::ValidateRequest(request);
  if (!invalid.ok()) {
    Count(invalid);
    std::move(done)(std::move(invalid));
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_ && queue_.size() < options_.max_queued) {
      queue_.push_back(
          Job{std::move(target), std::move(request), std::move(options), std::move(done)});
      return;
    }
  }
  stats_.failed_overload.fetch_add(1, std::memory_order_relaxed);
  std::move(done)(absl::ResourceExhaustedError(absl::StrCat(
      "broker: ", options_.max_queued, " requests already queued (or stopping); refused ",
      target->name(), ": ", DescribeRequest(request))));
}

ConnectNowResult Broker::ConnectNow(const BrokerTarget& target, const std::string& path,
                                    const OpenOptions& options, int socket_fd) {
  if (!broker_internal::ValidateUnixPath(path).ok()) return ConnectNowResult::kUseOpen;
  absl::StatusOr<UniqueFd> root = target.OpenRoot();  // As the agent, as in RunJob.
  if (!root.ok()) return ConnectNowResult::kUseOpen;
  ConnectNowResult result;
  {
    CredentialScope creds(own_);
    if (options.as && !creds.Enter(*options.as, target.name()).ok()) {
      return ConnectNowResult::kUseOpen;
    }
    result = broker_internal::ConnectInPlaceNow(root->get(), path, socket_fd);
  }
  if (result == ConnectNowResult::kConnected) Count(absl::OkStatus());
  return result;
}

absl::StatusOr<UniqueFd> Broker::OpenAndWait(BrokerTargetPtr target, BrokerRequest request,
                                             OpenOptions options) {
  absl::Notification done;
  absl::StatusOr<UniqueFd> result;
  Open(std::move(target), std::move(request), std::move(options), [&](absl::StatusOr<UniqueFd> r) {
    result = std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

void Broker::Work() {
  for (;;) {
    std::optional<Job> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](Broker* b)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->mu_) { return b->stopping_ || !b->queue_.empty(); },
          this));
      if (queue_.empty()) return;  // Stopping and drained.
      job.emplace(std::move(queue_.front()));
      queue_.pop_front();
    }
    absl::StatusOr<UniqueFd> result = RunJob(*job);
    Count(result.status());
    std::move(job->done)(std::move(result));
  }
}

absl::StatusOr<UniqueFd> Broker::RunJob(const Job& job) {
  const BrokerTarget& target = *job.target;
  const std::string where = absl::StrCat(target.is_host() ? "" : "VM ", target.name(), ": ",
                                         DescribeRequest(job.request));
  if (absl::Now() >= job.options.deadline) {
    return ErrnoErrorWithCode(absl::StatusCode::kDeadlineExceeded, ETIMEDOUT,
                              absl::StrCat(where, ": deadline passed while queued"));
  }
  // No liveness check up front: each way into a VM checks it (OpenRoot polls the init's pidfd;
  // setns through a gone init's pidfd fails with ESRCH), and the host is always there.

  // The root is opened as the agent (it takes ptrace access to the init); everything after,
  // as the caller.
  UniqueFd root;
  if (std::holds_alternative<UnixPathRequest>(job.request)) {
    SHUTTLE_ASSIGN_OR_RETURN(root, target.OpenRoot());
  }
  int nstype = 0;
  int home = -1;
  if (std::holds_alternative<UnixAbstractRequest>(job.request) ||
      std::holds_alternative<InetRequest>(job.request)) {
    nstype = CLONE_NEWNET;
    home = home_net_.get();
  } else if (std::holds_alternative<MqRequest>(job.request)) {
    nstype = CLONE_NEWIPC;
    home = home_ipc_.get();
  }
  // Destroyed in reverse order: credentials first (setns back needs the agent's capabilities).
  NamespaceScope ns(home, nstype);
  if (nstype != 0 && !target.is_host()) SHUTTLE_RETURN_IF_ERROR(ns.Enter(target));
  CredentialScope creds(own_);
  if (job.options.as) SHUTTLE_RETURN_IF_ERROR(creds.Enter(*job.options.as, where));

  const absl::Time deadline = job.options.deadline;
  struct Dispatch {
    int root_fd;
    absl::Time deadline;
    const std::string& where;
    absl::StatusOr<UniqueFd> operator()(const UnixPathRequest& r) const {
      return broker_internal::ConnectUnixPath(root_fd, r, deadline, where);
    }
    absl::StatusOr<UniqueFd> operator()(const UnixAbstractRequest& r) const {
      return broker_internal::ConnectUnixAbstract(r, deadline, where);
    }
    absl::StatusOr<UniqueFd> operator()(const InetRequest& r) const {
      return broker_internal::ConnectInet(r, deadline, where);
    }
    absl::StatusOr<UniqueFd> operator()(const MqRequest& r) const {
      return broker_internal::OpenMq(r, where);
    }
  };
  return std::visit(Dispatch{root.get(), deadline, where}, job.request);
}

void Broker::Count(const absl::Status& status) {
  std::atomic<uint64_t>* counter = &stats_.failed_other;
  switch (status.code()) {
    case absl::StatusCode::kOk:
      counter = &stats_.brokered;
      break;
    case absl::StatusCode::kInvalidArgument:
      counter = &stats_.failed_invalid;
      break;
    case absl::StatusCode::kNotFound:
      counter = &stats_.failed_not_found;
      break;
    case absl::StatusCode::kPermissionDenied:
      counter = &stats_.failed_denied;
      break;
    case absl::StatusCode::kDeadlineExceeded:
      counter = &stats_.failed_deadline;
      break;
    case absl::StatusCode::kUnavailable:
      // Errors from the kernel carry their errno (ECONNREFUSED, ECONNRESET); a gone VM's don't.
      counter = AttachedErrno(status) ? &stats_.failed_refused : &stats_.failed_vm_gone;
      break;
    default:
      break;
  }
  counter->fetch_add(1, std::memory_order_relaxed);
}

}  // namespace shuttle::agent::broker
