#include "agent/broker/crossing.h"

#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/broker/errors.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "policy/parser.h"

namespace shuttle::agent::broker {
namespace {

// Queue flags a caller may pass on (the broker validates the same set).
constexpr int kMqFlags = O_ACCMODE | O_CREAT | O_EXCL | O_NONBLOCK;

// The `result` label of a failed open or injection.
const char* ResultOf(const absl::Status& status) {
  if (status.ok()) return "ok";
  if (status.code() == absl::StatusCode::kUnavailable && !AttachedErrno(status)) return "vm_gone";
  if (status.code() == absl::StatusCode::kResourceExhausted) return "overload";
  if (status.code() == absl::StatusCode::kInvalidArgument) return "invalid";
  switch (ErrnoForStatus(status)) {
    case ECONNREFUSED:
      return "refused";
    case ENOENT:
      return "not_found";
    case EACCES:
    case EPERM:
    case ELOOP:
      return "denied";
    case ETIMEDOUT:
      return "timeout";
    default:
      return "error";
  }
}

bool IsConnect(const intercept::SyscallEvent& event) { return event.nr == SYS_connect; }

// "127.0.0.1:5432" or "[::1]:5432" (the decoder's and the policy's form).
absl::StatusOr<InetRequest> ParseInet(const std::string& name, int type) {
  const size_t colon = name.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(name.substr(colon + 1), &port) ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", name, "' is not an IP:PORT address"));
  }
  std::string ip = name.substr(0, colon);
  if (ip.size() >= 2 && ip.front() == '[' && ip.back() == ']') ip = ip.substr(1, ip.size() - 2);
  return InetRequest::Make(ip, static_cast<uint16_t>(port), type);
}

// An IPv4 address as the v4-mapped IPv6 address an AF_INET6 caller socket can carry.
void MapToV6(InetRequest* request) {
  if (request->address.ss_family != AF_INET) return;
  const auto v4 = reinterpret_cast<const sockaddr_in&>(request->address);
  sockaddr_in6 v6 = {};
  v6.sin6_family = AF_INET6;
  v6.sin6_port = v4.sin_port;
  v6.sin6_addr.s6_addr[10] = 0xff;
  v6.sin6_addr.s6_addr[11] = 0xff;
  std::memcpy(&v6.sin6_addr.s6_addr[12], &v4.sin_addr, sizeof(v4.sin_addr));
  request->address = {};
  std::memcpy(&request->address, &v6, sizeof(v6));
}

// Nothing listens at the object: the case an on-demand start may fix.
bool NothingListening(const absl::Status& status, const BrokerRequest& request) {
  const int err = ErrnoForStatus(status);
  return err == ECONNREFUSED || (err == ENOENT && std::holds_alternative<UnixPathRequest>(request));
}

}  // namespace

CallSnapshot CallSnapshot::Of(const intercept::InterceptedCall& call) {
  CallSnapshot out;
  out.subject_vm =
      call.subject_vm.empty() ? std::string(BrokerTarget::kHostName) : std::string(call.subject_vm);
  out.pid = call.pid;
  if (call.event != nullptr) out.event = *call.event;
  if (call.object != nullptr) out.object = *call.object;
  return out;
}

absl::StatusOr<BrokerTargetPtr> CachedTargets::Get(const std::string& vm) {
  if (vm == BrokerTarget::kHostName) {
    absl::MutexLock lock(&mu_);
    if (host_ == nullptr) {
      SHUTTLE_ASSIGN_OR_RETURN(host_, BrokerTarget::Host());
    }
    return host_;
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = vms_.find(vm);
    if (it != vms_.end()) {
      if (it->second->CheckAlive().ok()) return it->second;
      vms_.erase(it);  // Destroyed (and maybe re-created): look it up again.
    }
  }
  SHUTTLE_ASSIGN_OR_RETURN(Init init, lookup_(vm));
  SHUTTLE_ASSIGN_OR_RETURN(BrokerTargetPtr target,
                           BrokerTarget::ForVm(vm, init.pid, std::move(init.pidfd)));
  absl::MutexLock lock(&mu_);
  vms_[vm] = target;
  return target;
}

absl::StatusOr<Credentials> RealCallerAccess::ReadCredentials(pid_t tid) {
  return ReadCallerCredentials(tid);
}

absl::StatusOr<CallerSocket> RealCallerAccess::InspectSocket(pid_t tid, int fd) {
  return InspectCallerSocket(tid, fd);
}

absl::StatusOr<UniqueFd> RealCallerAccess::DuplicateFd(pid_t tid, int fd) {
  return pidfds_.Duplicate(tid, fd);
}

absl::Status RealCallerAccess::AnswerResult(int channel_fd, uint64_t id, int64_t result) {
  return AnswerWithResult(channel_fd, id, result);
}

absl::Status RealCallerAccess::InjectConnected(int channel_fd, uint64_t id, int caller_fd,
                                               const CallerSocket& caller, UniqueFd fd) {
  return InjectConnectedSocket(channel_fd, id, caller_fd, caller, std::move(fd));
}

absl::StatusOr<int> RealCallerAccess::InjectResult(int channel_fd, uint64_t id, UniqueFd fd,
                                                   uint32_t newfd_flags) {
  return InjectAsResult(channel_fd, id, std::move(fd), newfd_flags);
}

// One crossing in progress: owns the caller's pending reply until it is answered.
struct CrossingBroker::Job {
  CallSnapshot call;
  CrossingTarget target;
  intercept::PendingReplyPtr reply;
  Steady::time_point start;
  BrokerTargetPtr broker_target;
  CallerSocket socket;  // connect(): the caller's socket, read once by BuildRequest.
  BrokerRequest request;
  OpenOptions open;
  bool retried = false;
};

CrossingBroker::CrossingBroker(Broker& broker, TargetSource& targets, CallerAccess& caller,
                               intercept::ProcessMemory& memory, prometheus::Registry& metrics,
                               const Options& options)
    : broker_(broker),
      targets_(targets),
      caller_(caller),
      memory_(memory),
      options_(options),
      brokered_(prometheus::BuildCounter()
                    .Name("shuttle_agent_brokered_total")
                    .Help("Allowed or redirected crossings between VMs (and the host) brokered, "
                          "by kind, scope and result")
                    .Register(metrics)),
      duration_(prometheus::BuildHistogram()
                    .Name("shuttle_agent_brokered_duration_seconds")
                    .Help("Time from the decision to the brokered descriptor handed to the caller")
                    .Register(metrics)) {}

CrossingBroker::~CrossingBroker() = default;

intercept::Answer CrossingBroker::Cross(const intercept::InterceptedCall& call,
                                        const CrossingTarget& target,
                                        std::optional<Credentials> creds) {
  auto job = std::make_unique<Job>();
  job->call = CallSnapshot::Of(call);
  job->call.creds = std::move(creds);
  job->target = target;
  job->start = Steady::now();
  if (job->call.object.kind == v1::SIGNAL) {
    Done(*job, "continued");
    return intercept::Answer::Continue();
  }
  if (job->call.object.kind != v1::MQ_OPEN && !IsConnect(job->call.event)) {
    Done(*job, "unsupported");
    return intercept::Answer::Fail(EOPNOTSUPP);
  }
  job->reply = call.Defer();
  if (job->reply == nullptr) {
    Done(*job, "not_deferrable");
    return intercept::Answer::Fail(EOPNOTSUPP);
  }
  Enter();
  Start(std::move(job));
  return intercept::Answer::Deferred();
}

void CrossingBroker::CrossDeferred(intercept::PendingReplyPtr reply, CallSnapshot call,
                                   CrossingTarget target) {
  auto job = std::make_unique<Job>();
  job->call = std::move(call);
  job->target = std::move(target);
  job->start = Steady::now();
  if (job->call.object.kind == v1::SIGNAL) {
    reply->Finish(intercept::Answer::Continue());
    Done(*job, "continued");
    return;
  }
  if (job->call.object.kind != v1::MQ_OPEN && !IsConnect(job->call.event)) {
    reply->Finish(intercept::Answer::Fail(EOPNOTSUPP));
    Done(*job, "unsupported");
    return;
  }
  job->reply = std::move(reply);
  Enter();
  Start(std::move(job));
}

absl::StatusOr<BrokerRequest> CrossingBroker::BuildRequest(Job& job, OpenOptions* options) {
  const CallSnapshot& call = job.call;
  const intercept::ObjectInfo& object = call.object;
  const std::string& name = job.target.name;
  const bool renamed = name != object.name();
  SHUTTLE_RETURN_IF_ERROR(CallerCredentials(job, options));
  if (object.kind == v1::MQ_OPEN) {
    MqRequest mq;
    mq.name = name;
    mq.flags = static_cast<int>(call.event.args[1]) & kMqFlags;
    mq.mode = static_cast<mode_t>(call.event.args[2] & 07777);
    const uint64_t attr_addr = call.event.args[3];
    if ((mq.flags & O_CREAT) != 0 && attr_addr != 0) {
      mq_attr attr = {};
      const ssize_t n = memory_.Read(call.pid, attr_addr, &attr, sizeof(attr));
      if (n < 0 && n != -EFAULT) {
        return ErrnoError(static_cast<int>(-n), "reading the caller's mq_attr");
      }
      if (n != static_cast<ssize_t>(sizeof(attr))) {
        return ErrnoError(EFAULT, "the caller's mq_attr is not readable");
      }
      mq.attr = attr;
    }
    return mq;
  }
  SHUTTLE_ASSIGN_OR_RETURN(job.socket, caller_.InspectSocket(call.pid, object.fd));
  const CallerSocket& socket = job.socket;
  if (object.kind == v1::UNIX_CONNECT) {
    if (!renamed && object.abstract) {
      return UnixAbstractRequest{std::string(object.abstract_name()), socket.type};
    }
    if (!name.empty() && name[0] == '@') {
      return UnixAbstractRequest{name.substr(1), socket.type};
    }
    if (name.empty() || name[0] != '/') {
      // The decider hands over relative paths already made absolute (AbsoluteUnixPath, from the
      // caller's working directory); one it could not resolve means the caller is gone.
      return absl::NotFoundError(
          absl::StrCat("unix path '", name, "' is relative: caller ", call.pid, " is gone"));
    }
    return UnixPathRequest{name, socket.type};
  }
  if (socket.type != SOCK_STREAM && socket.type != SOCK_DGRAM) {
    return ErrnoErrorWithCode(
        absl::StatusCode::kInvalidArgument, EOPNOTSUPP,
        absl::StrCat("only stream and datagram sockets cross VMs (type ", socket.type, ")"));
  }
  SHUTTLE_ASSIGN_OR_RETURN(InetRequest inet, ParseInet(name, socket.type));
  if (socket.family == AF_INET6) MapToV6(&inet);
  return inet;
}

absl::Status CrossingBroker::CallerCredentials(Job& job, OpenOptions* open) {
  if (!options_.as_caller) return absl::OkStatus();
  if (!job.call.creds.has_value()) {
    SHUTTLE_ASSIGN_OR_RETURN(Credentials creds, caller_.ReadCredentials(job.call.pid));
    job.call.creds = std::move(creds);
  }
  open->as = *job.call.creds;
  return absl::OkStatus();
}

CrossingBroker::JobPtr CrossingBroker::ConnectNow(JobPtr job) {
  const CallSnapshot& call = job->call;
  const std::string& path = job->target.name;
  if (!IsConnect(call.event) || call.object.kind != v1::UNIX_CONNECT || path.empty() ||
      path[0] != '/') {
    return job;
  }
  OpenOptions open;
  if (!CallerCredentials(*job, &open).ok()) return job;
  absl::StatusOr<BrokerTargetPtr> target = targets_.Get(job->target.vm);
  if (!target.ok()) return job;
  absl::StatusOr<UniqueFd> socket = caller_.DuplicateFd(call.pid, call.object.fd);
  if (!socket.ok()) return job;
  const ConnectNowResult connected = broker_.ConnectNow(**target, path, open, socket->get());
  if (connected == ConnectNowResult::kUseOpen) return job;
  // Closed before the answer: the caller's descriptor is then the socket's last one, so a caller
  // that closes it at once releases it itself, as it would natively (not this thread, later).
  socket->reset();
  absl::Status answered;
  const char* result = "ok";
  if (connected == ConnectNowResult::kConnected) {
    answered = job->reply->FinishWith(
        [&](int channel_fd, uint64_t id) { return caller_.AnswerResult(channel_fd, id, 0); });
    if (absl::IsNotFound(answered)) result = "caller_gone";
  } else {  // kWouldBlock
    job->reply->Finish(intercept::Answer::Fail(EAGAIN));
    result = "again";
  }
  if (!answered.ok() && !absl::IsNotFound(answered)) {
    Fail(std::move(job), answered, "inject_failed");
    return nullptr;
  }
  job->reply.reset();  // Finished: its destructor sends nothing.
  Done(*job, result);
  Leave();
  return nullptr;
}

void CrossingBroker::Start(JobPtr job) {
  job = ConnectNow(std::move(job));
  if (job == nullptr) return;
  absl::StatusOr<BrokerRequest> request = BuildRequest(*job, &job->open);
  if (!request.ok()) {
    Fail(std::move(job), request.status(),
         absl::IsNotFound(request.status()) ? "caller_gone" : "invalid");
    return;
  }
  job->request = *std::move(request);
  absl::StatusOr<BrokerTargetPtr> target = targets_.Get(job->target.vm);
  if (!target.ok()) {
    Fail(std::move(job), target.status(), "vm_gone");
    return;
  }
  job->broker_target = *std::move(target);
  Open(std::move(job));
}

void CrossingBroker::Open(JobPtr job) {
  job->open.deadline = absl::Now() + options_.open_timeout;
  BrokerTargetPtr target = job->broker_target;
  BrokerRequest request = job->request;
  OpenOptions open = job->open;
  broker_.Open(std::move(target), std::move(request), std::move(open),
               [this, job = std::move(job)](absl::StatusOr<UniqueFd> opened) mutable {
                 Opened(std::move(job), std::move(opened));
               });
}

void CrossingBroker::Opened(JobPtr job, absl::StatusOr<UniqueFd> opened) {
  if (!opened.ok()) {
    if (on_demand_ != nullptr && !job->retried && NothingListening(opened.status(), job->request)) {
      job->retried = true;
      // Copies: the job moves into the callback, which may run (and end it) on another thread
      // before StartFor() returns.
      const std::string subject = job->call.subject_vm;
      const pid_t pid = job->call.pid;
      const std::string vm = job->target.vm;
      const BrokerRequest request = job->request;
      absl::Status first = opened.status();
      on_demand_->StartFor(subject, pid, vm, request, absl::Now() + options_.on_demand_timeout,
                           [this, job = std::move(job), first](absl::Status started) mutable {
                             if (started.ok()) {
                               Open(std::move(job));
                             } else {
                               Fail(std::move(job), first, ResultOf(first));
                             }
                           });
      return;
    }
    Fail(std::move(job), opened.status(), ResultOf(opened.status()));
    return;
  }
  const bool as_result = std::holds_alternative<MqRequest>(job->request);
  const int caller_fd = job->call.object.fd;
  UniqueFd fd = *std::move(opened);
  absl::Status injected = job->reply->FinishWith([&](int channel_fd, uint64_t id) -> absl::Status {
    if (as_result) return caller_.InjectResult(channel_fd, id, std::move(fd), O_CLOEXEC).status();
    return caller_.InjectConnected(channel_fd, id, caller_fd, job->socket, std::move(fd));
  });
  if (injected.ok() || absl::IsNotFound(injected)) {
    job->reply.reset();  // Finished: its destructor sends nothing.
    Done(*job, injected.ok() ? "ok" : "caller_gone");
    Leave();
    return;
  }
  Fail(std::move(job), injected, "inject_failed");
}

void CrossingBroker::Fail(JobPtr job, const absl::Status& status, const char* result) {
  const int err = ErrnoForStatus(status);
  SHUTTLE_LOG(INFO) << "crossing " << job->call.subject_vm << " -> " << job->target.vm << " "
                    << job->target.name << " (pid " << job->call.pid << "): " << result << ", "
                    << std::strerror(err) << ": " << status.message();
  Done(*job, result);
  if (job->reply != nullptr) {
    job->reply->Finish(intercept::Answer::Fail(err));
    job->reply.reset();
    Leave();
  }
}

int CrossingBroker::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

bool CrossingBroker::WaitForIdle(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void CrossingBroker::Enter() {
  absl::MutexLock lock(&mu_);
  ++in_flight_;
}

void CrossingBroker::Leave() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

void CrossingBroker::Done(const Job& job, const char* result) {
  const std::string kind(policy::KindName(job.call.object.kind));
  brokered_
      .Add({{"kind", kind},
            {"scope", std::string(policy::ScopeName(job.target.scope))},
            {"result", result}})
      .Increment();
  if (std::strcmp(result, "ok") == 0) {
    duration_
        .Add({{"kind", kind}},
             prometheus::Histogram::BucketBoundaries{1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3,
                                                     2.5e-3, 1e-2, 0.1, 1, 5})
        .Observe(std::chrono::duration<double>(Steady::now() - job.start).count());
  }
}

}  // namespace shuttle::agent::broker
