#include "agent/deps/service_starter.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/broker/broker_target.h"
#include "agent/deps/service_spec.h"
#include "agent/deps/user_lookup.h"
#include "agent/intercept/launcher.h"
#include "agent/local/run_in_vm.h"
#include "common/logging.h"

namespace shuttle::agent::deps {

using intercept::UniqueFd;

struct ServiceStarter::Instance {
  Key key;
  ServiceRunState state;
  std::vector<Waiter> waiters;
  bool probe_requested = false;  // Running: a caller found it not listening; probe again.
  absl::Time probe_until;
  UniqueFd wake;       // eventfd: a waiter came, a probe was asked for, or the starter stops.
  std::thread thread;  // The supervisor of the current (or last) run.
};

namespace {

void Wake(const UniqueFd& wake) {
  uint64_t one = 1;
  ssize_t unused = ::write(wake.get(), &one, sizeof(one));
  (void)unused;
}

void Drain(const UniqueFd& wake) {
  uint64_t value = 0;
  ssize_t unused = ::read(wake.get(), &value, sizeof(value));
  (void)unused;
}

// What woke a wait on the launcher's pidfd and the wake eventfd.
enum class Woken { kTimeout, kExited, kWake };

Woken WaitFor(int pidfd, const UniqueFd& wake, absl::Duration timeout) {
  const int ms = timeout == absl::InfiniteDuration()
                     ? -1
                     : static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(timeout)));
  pollfd fds[2] = {{pidfd, POLLIN, 0}, {wake.get(), POLLIN, 0}};
  int n = ::poll(fds, 2, ms);
  if (n <= 0) return Woken::kTimeout;  // EINTR counts as a timeout: the caller loops.
  if (fds[0].revents != 0) return Woken::kExited;
  Drain(wake);
  return Woken::kWake;
}

// Waits up to `timeout` for the process of `pidfd` to exit; true if it did.
bool WaitExit(int pidfd, absl::Duration timeout) {
  const absl::Time until = absl::Now() + timeout;
  while (true) {
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd fd = {pidfd, POLLIN, 0};
    if (::poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1) > 0) return true;
  }
}

// The caller's executable, empty if it is gone.
std::string ReadProgram(pid_t pid) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink(absl::StrCat("/proc/", pid, "/exe").c_str(), buf, sizeof(buf));
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// The caller's effective uid (second field of "Uid:"); 0 if it can't be read.
uint32_t ReadEffectiveUid(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (!absl::StartsWith(line, "Uid:")) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(
        absl::string_view(line).substr(4), absl::ByAnyChar(" \t"), absl::SkipEmpty());
    uint32_t uid = 0;
    if (fields.size() >= 2 && absl::SimpleAtoi(fields[1], &uid)) return uid;
  }
  return 0;
}

const char* OutcomeName(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return "ok";
    case absl::StatusCode::kNotFound:
      return "not_found";
    case absl::StatusCode::kPermissionDenied:
      return "denied";
    case absl::StatusCode::kDeadlineExceeded:
      return "deadline";
    default:
      return "failed";
  }
}

std::string ExitText(int status) {
  if (status < 0) return "unknown (waitid failed)";
  return status > 128 ? absl::StrCat("signal ", status - 128) : absl::StrCat("exit ", status);
}

// stdin: /dev/null; stdout and stderr: the service's log (or /dev/null).
struct ServiceStdio {
  UniqueFd in;
  UniqueFd out;
};

ServiceStdio OpenStdio(const std::string& log_dir, const v1::LocalService& service) {
  ServiceStdio stdio{UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)), UniqueFd()};
  if (!log_dir.empty()) {
    if (::mkdir(log_dir.c_str(), 0700) != 0 && errno != EEXIST) {
      SHUTTLE_LOG(WARNING) << "cannot create " << log_dir << ": " << std::strerror(errno);
    }
    const std::string log = absl::StrCat(log_dir, "/", service.vm(), ".", service.name(), ".log");
    stdio.out = UniqueFd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    if (!stdio.out) {
      SHUTTLE_LOG(WARNING) << "cannot open " << log << ": " << std::strerror(errno);
    }
  }
  if (!stdio.out) stdio.out = UniqueFd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  return stdio;
}

}  // namespace

ServiceStarter::ServiceStarter(ServiceStarterOptions options, ServiceRegistry& registry,
                               VmManager& vms, intercept::InterceptionSource& source,
                               broker::Broker& broker, const PolicyHolder& policy,
                               const PolicyDecider& decider, prometheus::Registry& metrics)
    : options_(std::move(options)),
      registry_(registry),
      vms_(vms),
      source_(source),
      broker_(broker),
      policy_(policy),
      decider_(decider),
      starts_(prometheus::BuildCounter()
                  .Name("shuttle_agent_service_starts_total")
                  .Help("Services started on demand, by VM, service and result (ready, "
                        "not_ready, exited, failed)")
                  .Register(metrics)),
      outcomes_(prometheus::BuildCounter()
                    .Name("shuttle_agent_on_demand_total")
                    .Help("Connects that found nothing listening and asked for a service, by "
                          "result (ok, not_found, denied, deadline, failed)")
                    .Register(metrics)),
      running_(prometheus::BuildGauge()
                   .Name("shuttle_agent_services_running")
                   .Help("Service processes started on demand that are alive")
                   .Register(metrics)
                   .Add({})) {}

ServiceStarter::~ServiceStarter() { Stop(); }

void ServiceStarter::Stop() {
  Finished finished;
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [key, instance] : instances_) {
      FailAllLocked(*instance, absl::UnavailableError("the agent is stopping"), finished);
      Wake(instance->wake);
      if (instance->thread.joinable()) threads.push_back(std::move(instance->thread));
    }
  }
  Answer(std::move(finished));
  for (std::thread& thread : threads) thread.join();
}

void ServiceStarter::StartFor(const std::string& subject_vm, pid_t pid,
                              const std::string& target_vm, const broker::BrokerRequest& request,
                              absl::Time deadline, Done done) {
  const absl::Time started = absl::Now();
  // Every answer is counted once, whoever gives it.
  Done counted = [this, done = std::move(done)](absl::Status status) mutable {
    outcomes_.Add({{"result", OutcomeName(status)}}).Increment();
    std::move(done)(std::move(status));
  };
  bool stopped = false;
  {
    absl::MutexLock lock(&mu_);
    stopped = stopping_;
  }
  if (stopped) {
    std::move(counted)(absl::UnavailableError("the agent is stopping"));
    return;
  }
  std::optional<v1::LocalService> service = registry_.FindServing(target_vm, request);
  if (!service.has_value()) {
    std::move(counted)(absl::NotFoundError(absl::StrCat(
        "no service of vm ", target_vm, " is ready at ", broker::DescribeRequest(request))));
    return;
  }

  // The `depend` decision, with what the caller is (its VM is the kernel's word).
  std::shared_ptr<const policy::CompiledPolicy> compiled = policy_.Get();
  v1::Interaction interaction;
  interaction.set_subject_vm(subject_vm);
  interaction.set_pid(static_cast<uint32_t>(pid));
  interaction.set_kind(v1::DEPEND);
  interaction.set_object_vm(target_vm);
  interaction.set_object_name(service->name());
  interaction.set_program(ReadProgram(pid));
  interaction.set_uid(ReadEffectiveUid(pid));
  const policy::Verdict verdict = compiled->Decide(policy::InteractionView::FromProto(interaction));
  decider_.AuditDecision(interaction, compiled->ToProto(verdict), absl::Now(),
                         absl::Now() - started);
  const bool allowed = !verdict.enforced || verdict.verdict == v1::VERDICT_ALLOW ||
                       verdict.verdict == v1::VERDICT_REDIRECT;
  if (!allowed) {
    std::move(counted)(absl::PermissionDeniedError(absl::StrCat(
        "no depend rule lets vm ", subject_vm, " depend on service ", service->name(), " of vm ",
        target_vm, " (", verdict.rule != nullptr ? "denied by rule " : "default: ",
        verdict.rule != nullptr ? verdict.rule->rule->name() : std::string(verdict.reason), ")")));
    return;
  }

  const Key key{target_vm, service->name()};
  absl::ReleasableMutexLock lock(&mu_);
  if (stopping_) {
    lock.Release();
    std::move(counted)(absl::UnavailableError("the agent is stopping"));
    return;
  }
  std::shared_ptr<Instance>& slot = instances_[key];
  if (slot == nullptr) {
    slot = std::make_shared<Instance>();
    slot->key = key;
    slot->wake = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!slot->wake) {
      const absl::Status error =
          absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
      instances_.erase(key);
      lock.Release();
      std::move(counted)(error);
      return;
    }
  }
  Instance& instance = *slot;
  instance.waiters.push_back(Waiter{deadline, std::move(counted)});
  switch (instance.state.phase) {
    case ServiceRunState::Phase::kStopped: {
      instance.state.phase = ServiceRunState::Phase::kStarting;
      instance.state.pid = 0;
      Publish(instance);
      SHUTTLE_LOG(INFO) << "starting service " << ServiceLabel(*service) << " for vm " << subject_vm
                        << " (pid " << pid << ")";
      std::thread previous = std::move(instance.thread);
      instance.thread = std::thread(&ServiceStarter::Supervise, this, slot, *std::move(service),
                                    std::move(previous));
      break;
    }
    case ServiceRunState::Phase::kStarting:
      Wake(instance.wake);  // Its deadline may be the earliest now.
      break;
    case ServiceRunState::Phase::kRunning:
      instance.probe_requested = true;
      instance.probe_until = absl::Now() + StartTimeoutOf(*service);
      Wake(instance.wake);
      break;
  }
}

void ServiceStarter::Supervise(std::shared_ptr<Instance> instance, v1::LocalService service,
                               std::thread previous) {
  if (previous.joinable()) previous.join();  // The last run's supervisor, already finishing.
  const std::string label = ServiceLabel(service);
  const absl::Time launch_start = absl::Now();

  absl::StatusOr<ResolvedUser> user = ResolveUser(service.user().empty() ? "0" : service.user());
  absl::StatusOr<intercept::LaunchedProcess> launched =
      absl::FailedPreconditionError("not launched");
  if (!user.ok()) {
    launched = user.status();
  } else {
    ServiceStdio stdio = OpenStdio(options_.log_dir, service);
    intercept::LaunchSpec spec;
    spec.launcher_path = options_.launcher_path;
    RunAs(*user, spec);
    spec.cwd = service.cwd();
    spec.argv.assign(service.argv().begin(), service.argv().end());
    std::vector<std::string> env(service.env().begin(), service.env().end());
    if (std::none_of(env.begin(), env.end(),
                     [](const std::string& e) { return absl::StartsWith(e, "PATH="); })) {
      env.push_back("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    }
    spec.env = std::move(env);
    spec.stdin_fd = stdio.in.get();
    spec.stdout_fd = stdio.out.get();
    spec.stderr_fd = stdio.out.get();
    launched = RunInVm(vms_, source_, service.vm(), std::move(spec));
  }
  if (!launched.ok()) {
    SHUTTLE_LOG(ERROR) << "service " << label << " could not start: " << launched.status();
    CountStart(service, "failed");
    Finished finished;
    {
      absl::MutexLock lock(&mu_);
      instance->state.phase = ServiceRunState::Phase::kStopped;
      instance->state.last_exit = absl::StrCat("failed to start: ", launched.status().message());
      FailAllLocked(*instance,
                    absl::Status(launched.status().code(),
                                 absl::StrCat("service ", label,
                                              " could not start: ", launched.status().message())),
                    finished);
      Publish(*instance);
    }
    Answer(std::move(finished));
    return;
  }
  running_.Increment();
  const int pidfd = launched->launcher_pidfd.get();
  {
    absl::MutexLock lock(&mu_);
    instance->state.pid = launched->process_pid;
    ++instance->state.starts;
    Publish(*instance);
  }
  SHUTTLE_LOG(INFO) << "service " << label << " launched (pid " << launched->process_pid
                    << "); waiting until it accepts at " << service.ready();

  // The readiness probe connects from inside the VM, as the callers will.
  absl::StatusOr<broker::BrokerTargetPtr> target = absl::UnavailableError("no target");
  absl::StatusOr<VmInfo> vm = vms_.Get(service.vm());
  absl::StatusOr<int> init_pidfd = vm.ok() ? vms_.InitPidfd(service.vm()) : vm.status();
  if (init_pidfd.ok()) {
    target = broker::BrokerTarget::ForVm(service.vm(), vm->init_pid, UniqueFd(*init_pidfd));
  } else {
    target = init_pidfd.status();
  }

  bool ever_ready = false;
  absl::Time until = launch_start + StartTimeoutOf(service);
  bool exited = false;
  while (!exited) {
    bool ready = false;
    if (target.ok()) {
      ready = Probe(*instance, service, *target, pidfd, until);
    } else {
      Finished finished;
      absl::ReleasableMutexLock lock(&mu_);
      FailAllLocked(*instance,
                    absl::UnavailableError(absl::StrCat("cannot probe service ", label, ": ",
                                                        target.status().message())),
                    finished);
      lock.Release();
      Answer(std::move(finished));
    }
    if (ready && !ever_ready) {
      ever_ready = true;
      CountStart(service, "ready");
      SHUTTLE_LOG(INFO) << "service " << label << " ready after "
                        << absl::FormatDuration(absl::Now() - launch_start);
    }
    if (!ready && !ever_ready && absl::Now() >= until) {
      // Never ready within its start timeout: stop it (SIGKILL if it ignores SIGTERM).
      CountStart(service, "not_ready");
      SHUTTLE_LOG(WARNING) << "service " << label << " not ready at " << service.ready()
                           << " within " << absl::FormatDuration(StartTimeoutOf(service))
                           << "; stopping it";
      ::kill(launched->launcher_pid, SIGTERM);
      if (!WaitExit(pidfd, absl::Seconds(5))) ::kill(launched->launcher_pid, SIGKILL);
    }
    // Running (or being stopped): wait for its exit, a stop, or a caller that found it deaf.
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;  // The service keeps running; the agent is going away.
        if (instance->probe_requested) {
          instance->probe_requested = false;
          until = instance->probe_until;
          break;
        }
      }
      if (WaitFor(pidfd, instance->wake, absl::InfiniteDuration()) == Woken::kExited) {
        exited = true;
        break;
      }
    }
  }

  const int status = WaitLaunched(*launched);
  running_.Decrement();
  if (ever_ready) {
    SHUTTLE_LOG(INFO) << "service " << label << " ended: " << ExitText(status);
  } else {
    SHUTTLE_LOG(WARNING) << "service " << label
                         << " ended before it was ready: " << ExitText(status) << " (its output: "
                         << (options_.log_dir.empty() ? "discarded" : options_.log_dir) << ")";
    CountStart(service, "exited");
  }
  Finished finished;
  {
    absl::MutexLock lock(&mu_);
    instance->state.phase = ServiceRunState::Phase::kStopped;
    instance->state.pid = 0;
    instance->state.last_exit = ExitText(status);
    instance->probe_requested = false;
    FailAllLocked(*instance,
                  absl::UnavailableError(absl::StrCat("service ", label, " ended (",
                                                      ExitText(status), ") before it was ready")),
                  finished);
    Publish(*instance);
  }
  Answer(std::move(finished));
}

bool ServiceStarter::Probe(Instance& instance, const v1::LocalService& service,
                           const broker::BrokerTargetPtr& target, int pidfd, absl::Time until) {
  // Stored services were normalized, so their address parses.
  const broker::BrokerRequest request = ReadyAddress::Parse(service.ready())->ToRequest();
  absl::Duration backoff = options_.probe_min;
  while (true) {
    const absl::Time now = absl::Now();
    absl::Time next_deadline = until;  // The earliest time someone must hear from us.
    {
      Finished finished;
      absl::ReleasableMutexLock lock(&mu_);
      if (stopping_) return false;
      ExpireLocked(instance, now, finished);
      if (now >= until) {
        FailAllLocked(instance,
                      absl::DeadlineExceededError(absl::StrCat(
                          "service ", ServiceLabel(service), " was not ready at ", service.ready(),
                          " within ", absl::FormatDuration(StartTimeoutOf(service)))),
                      finished);
      }
      for (const Waiter& waiter : instance.waiters) {
        next_deadline = std::min(next_deadline, waiter.deadline);
      }
      lock.Release();
      Answer(std::move(finished));
      if (now >= until) return false;
    }
    broker::OpenOptions open;
    open.deadline = std::min(now + options_.probe_timeout, next_deadline);
    absl::StatusOr<UniqueFd> probe = broker_.OpenAndWait(target, request, std::move(open));
    if (probe.ok()) {
      Finished finished;
      absl::ReleasableMutexLock lock(&mu_);
      instance.state.phase = ServiceRunState::Phase::kRunning;
      Publish(instance);
      for (Waiter& waiter : instance.waiters) {
        finished.emplace_back(std::move(waiter.done), absl::OkStatus());
      }
      instance.waiters.clear();
      lock.Release();
      Answer(std::move(finished));
      return true;
    }
    const absl::Duration wait =
        std::max(absl::ZeroDuration(), std::min(backoff, next_deadline - absl::Now()));
    if (WaitFor(pidfd, instance.wake, wait) == Woken::kExited) return false;
    backoff = std::min(backoff * 2, options_.probe_max);
  }
}

void ServiceStarter::ExpireLocked(Instance& instance, absl::Time now, Finished& out) {
  auto expired = std::stable_partition(instance.waiters.begin(), instance.waiters.end(),
                                       [now](const Waiter& w) { return w.deadline > now; });
  for (auto it = expired; it != instance.waiters.end(); ++it) {
    out.emplace_back(std::move(it->done),
                     absl::DeadlineExceededError(
                         absl::StrCat("service ", instance.key.first, "/", instance.key.second,
                                      " was not ready by the connect's deadline")));
  }
  instance.waiters.erase(expired, instance.waiters.end());
}

void ServiceStarter::FailAllLocked(Instance& instance, const absl::Status& status, Finished& out) {
  for (Waiter& waiter : instance.waiters) out.emplace_back(std::move(waiter.done), status);
  instance.waiters.clear();
}

void ServiceStarter::Publish(const Instance& instance) {
  registry_.SetRunState(instance.key.first, instance.key.second, instance.state);
}

void ServiceStarter::Answer(Finished finished) {
  for (auto& [done, status] : finished) std::move(done)(std::move(status));
}

void ServiceStarter::CountStart(const v1::LocalService& service, const char* result) {
  starts_.Add({{"vm", service.vm()}, {"service", service.name()}, {"result", result}}).Increment();
}

}  // namespace shuttle::agent::deps
