// The crossing: what makes an allowed (or redirected) interaction between VMs really go across.
// The decider (agent/decide/policy_decider.h) hands it an enforced allow/redirect verdict whose
// scope is cross-vm, vm-host or host-vm; the crossing defers the intercepted call, has the
// Broker open the object inside the target VM (or the host) as the caller's credentials, and
// hands the caller the open descriptor (injection.h, through PendingReply::FinishWith), or
// fails the call with the errno the caller would have seen there (ECONNREFUSED, ENOENT, ...).
//
// By syscall:
//  - connect() to a unix path or abstract name, or to a loopback TCP/UDP address: the brokered,
//    connected socket replaces the caller's socket (same fd number) and connect() returns 0. A
//    relative unix path arrives made absolute by the decider (from the caller's working
//    directory, as the policy matched it). A UDP connect
//    fixes the peer in the target; later send()s carry no address and go there directly.
//  - mq_open(): the queue is opened in the target's IPC namespace with the caller's flags, mode
//    and mq_attr, and its descriptor is the call's result.
//  - sendto()/sendmsg()/sendmmsg() with an address in another VM: refused with EOPNOTSUPP
//    (result "unsupported"). CONTINUE cannot be used (the kernel re-reads the address, so a
//    racing caller could reach an address the policy did not allow, and only in its own VM
//    anyway), and swapping the caller's unconnected socket for one living in the target would
//    route the caller's later sends to other addresses, decided intra-VM, out of the target's
//    network namespace. connect() the socket first: that is brokered.
//  - signals: continue. A process in a VM can only name pids of its own PID namespace, so its
//    signals never leave its VM whatever the rule says; a host process names host pids, which
//    the kernel delivers wherever the target lives (the decider resolves the target's VM for
//    host callers, so host-vm rules decide them).
// When nothing listens (ECONNREFUSED, or ENOENT for a unix path) and an OnDemandStarter is set,
// the starter may start the target's service; on OK the open is tried once more.
//
// Counted in shuttle_agent_brokered_total{kind,scope,result} and
// shuttle_agent_brokered_duration_seconds{kind} (decision to descriptor injected).
#ifndef SHUTTLE_AGENT_BROKER_CROSSING_H_
#define SHUTTLE_AGENT_BROKER_CROSSING_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/broker/broker.h"
#include "agent/broker/broker_target.h"
#include "agent/broker/injection.h"
#include "agent/broker/on_demand.h"
#include "agent/intercept/interception.h"
#include "agent/intercept/process_access.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "shuttle/v1/types.pb.h"

namespace shuttle::agent::broker {

// Where a crossing goes: the target ("host" or a VM name) and the object's name there (the
// redirect's name, or the caller's own).
struct CrossingTarget {
  v1::Scope scope = v1::SCOPE_UNSPECIFIED;
  std::string vm;
  std::string name;
};

// What the crossing needs of an intercepted call after Decide() has returned (the views of
// InterceptedCall die then): a copy, taken on the loop thread.
struct CallSnapshot {
  std::string subject_vm;  // "host" for host processes.
  pid_t pid = 0;
  intercept::SyscallEvent event;
  intercept::ObjectInfo object;
  // The caller's credentials if whoever decided already read them (ReadCallerCredentials);
  // nullopt: the crossing reads them.
  std::optional<Credentials> creds;
  static CallSnapshot Of(const intercept::InterceptedCall& call);
};

// The decider's view of the crossing. Implemented by CrossingBroker (and fakes in tests).
class Crossing {
 public:
  virtual ~Crossing() = default;
  // Loop thread, from Decide(): takes the call over (InterceptedCall::Defer()) and returns
  // Answer::Deferred(), or answers now (a call that can't cross, or can't be deferred: an
  // errno; a signal: continue). Returns within microseconds (a few /proc reads). `creds`: the
  // caller's credentials if the decider has read them (it audits the uid), else nullopt.
  virtual intercept::Answer Cross(const intercept::InterceptedCall& call,
                                  const CrossingTarget& target,
                                  std::optional<Credentials> creds) = 0;
  // Any thread: the same for a call already deferred (an `ask` answered later). Always
  // answers `reply`, now or later.
  virtual void CrossDeferred(intercept::PendingReplyPtr reply, CallSnapshot call,
                             CrossingTarget target) = 0;
};

// Where a VM's BrokerTarget comes from. Thread-safe.
class TargetSource {
 public:
  virtual ~TargetSource() = default;
  // The live target of `vm` ("host": the host). NOT_FOUND naming the VM if there is none,
  // UNAVAILABLE if its init is gone.
  virtual absl::StatusOr<BrokerTargetPtr> Get(const std::string& vm) = 0;
};

// Targets cached per VM; a cached target whose init has exited (the VM was destroyed, maybe
// re-created under the same name) is dropped and looked up again. Thread-safe.
class CachedTargets final : public TargetSource {
 public:
  // A VM's init: its pid and a new pidfd (owned by the receiver).
  struct Init {
    pid_t pid = 0;
    UniqueFd pidfd;
  };
  // `lookup` finds a VM's init (VmManager::Get + InitPidfd); NOT_FOUND for an unknown VM.
  // Called without the cache's lock held, from any thread.
  using Lookup = absl::AnyInvocable<absl::StatusOr<Init>(const std::string& vm)>;
  explicit CachedTargets(Lookup lookup) : lookup_(std::move(lookup)) {}

  absl::StatusOr<BrokerTargetPtr> Get(const std::string& vm) override;

 private:
  Lookup lookup_;
  absl::Mutex mu_;
  BrokerTargetPtr host_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, BrokerTargetPtr> vms_ ABSL_GUARDED_BY(mu_);
};

// How the crossing looks at and answers the caller: injection.h for real, a fake in tests.
// Thread-safe.
class CallerAccess {
 public:
  virtual ~CallerAccess() = default;
  virtual absl::StatusOr<Credentials> ReadCredentials(pid_t tid) = 0;
  virtual absl::StatusOr<CallerSocket> InspectSocket(pid_t tid, int fd) = 0;
  // A duplicate of the caller's fd `fd`: the same open file (injection.h's DuplicateCallerFd;
  // the real one keeps recent callers' pidfds, CallerPidfds).
  virtual absl::StatusOr<UniqueFd> DuplicateFd(pid_t tid, int fd) = 0;
  // injection.h's AnswerWithResult on `channel_fd` (not owned).
  virtual absl::Status AnswerResult(int channel_fd, uint64_t id, int64_t result) = 0;
  // injection.h's InjectConnectedSocket / InjectAsResult on `channel_fd` (not owned);
  // `caller` is what InspectSocket() said of `caller_fd`.
  virtual absl::Status InjectConnected(int channel_fd, uint64_t id, int caller_fd,
                                       const CallerSocket& caller, UniqueFd fd) = 0;
  virtual absl::StatusOr<int> InjectResult(int channel_fd, uint64_t id, UniqueFd fd,
                                           uint32_t newfd_flags) = 0;
};

// The real one: /proc and the seccomp ioctls of injection.h.
class RealCallerAccess final : public CallerAccess {
 public:
  absl::StatusOr<Credentials> ReadCredentials(pid_t tid) override;
  absl::StatusOr<CallerSocket> InspectSocket(pid_t tid, int fd) override;
  absl::StatusOr<UniqueFd> DuplicateFd(pid_t tid, int fd) override;
  absl::Status AnswerResult(int channel_fd, uint64_t id, int64_t result) override;
  absl::Status InjectConnected(int channel_fd, uint64_t id, int caller_fd,
                               const CallerSocket& caller, UniqueFd fd) override;
  absl::StatusOr<int> InjectResult(int channel_fd, uint64_t id, UniqueFd fd,
                                   uint32_t newfd_flags) override;

 private:
  CallerPidfds pidfds_;  // DuplicateFd's.
};

class CrossingBroker final : public Crossing {
 public:
  struct Options {
    // How long one open may take, from the decision (queue + connect); a retry after an
    // on-demand start gets the same again.
    absl::Duration open_timeout = absl::Seconds(5);
    // How long a caller waits for a service that its connect starts on demand (OnDemandStarter)
    // to become ready; the service's own start timeout bounds it too. Longer than open_timeout:
    // a database takes seconds to start, and the caller's connect simply waits, as with socket
    // activation.
    absl::Duration on_demand_timeout = absl::Seconds(30);
    // Whether objects are opened as the caller (its uid, gid, groups). Tests running without
    // root turn it off; the agent never does.
    bool as_caller = true;
  };

  // Collaborators are borrowed and must outlive the crossing and every open it started (the
  // Broker's destructor runs the opens still queued: destroy the Broker first, then this).
  // Metric families go into `metrics`.
  CrossingBroker(Broker& broker, TargetSource& targets, CallerAccess& caller,
                 intercept::ProcessMemory& memory, prometheus::Registry& metrics,
                 const Options& options);
  ~CrossingBroker() override;

  // Borrowed, may be null (no on-demand starts). Set before the notification loop runs.
  void set_on_demand(OnDemandStarter* starter) { on_demand_ = starter; }

  intercept::Answer Cross(const intercept::InterceptedCall& call, const CrossingTarget& target,
                          std::optional<Credentials> creds) override;
  void CrossDeferred(intercept::PendingReplyPtr reply, CallSnapshot call,
                     CrossingTarget target) override;

  // Crossings deferred and not yet answered and counted.
  int in_flight() const;
  // Waits until in_flight() is 0 (every answer sent and its metrics counted); false after
  // `timeout`. For tests and shutdown.
  bool WaitForIdle(absl::Duration timeout) const;

 private:
  struct Job;
  using JobPtr = std::unique_ptr<Job>;
  using Steady = std::chrono::steady_clock;

  // Prepares the job (reads the caller), then starts the open; answers `job` on any error.
  void Start(JobPtr job);
  // The fast path of a connect to a unix path (Broker::ConnectNow): the caller's own socket
  // connected on this thread and the call answered. Returns the job if that can't be done
  // without waiting (Start goes on with it), else null (answered and counted).
  JobPtr ConnectNow(JobPtr job);
  void Open(JobPtr job);
  void Opened(JobPtr job, absl::StatusOr<UniqueFd> opened);
  void Fail(JobPtr job, const absl::Status& status, const char* result);
  void Done(const Job& job, const char* result);
  // Puts the caller's credentials in `open` when opening as the caller; read at most once per
  // job (kept in job.call.creds, unless the decider handed them over already).
  absl::Status CallerCredentials(Job& job, OpenOptions* open);
  // The request for `job` (and job.open's credentials); reads the caller's socket into
  // job.socket for a connect().
  absl::StatusOr<BrokerRequest> BuildRequest(Job& job, OpenOptions* options);

  Broker& broker_;
  TargetSource& targets_;
  CallerAccess& caller_;
  intercept::ProcessMemory& memory_;
  const Options options_;
  OnDemandStarter* on_demand_ = nullptr;
  prometheus::Family<prometheus::Counter>& brokered_;
  prometheus::Family<prometheus::Histogram>& duration_;
  mutable absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  void Enter();
  void Leave();
};

}  // namespace shuttle::agent::broker

#endif  // SHUTTLE_AGENT_BROKER_CROSSING_H_
