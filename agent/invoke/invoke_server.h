// The agent's invocation server: serves the unix socket every VM sees at
// /run/shuttle/invoke.sock, where the stand-in (driver-shim/linux/invoke_stub.c) that replaces a
// program placed in another VM asks for it to be run there. For each connection, on a worker
// thread of its own (an invocation lasts as long as its program):
//  1. reads the REQUEST (driver-shim/abi/shuttle_invoke_abi.h) and the caller's stdio fds;
//  2. learns who asks from the kernel: SO_PEERCRED's pid -> VmOfPid (the caller's VM A),
//     /proc/PID/exe (the program P, the path the stand-in is bound at), /proc/PID/status (uid,
//     gid, groups); nothing the stand-in says about itself is trusted;
//  3. decides kind `invoke` (object P) with the current policy and audits it; a deny, no
//     placing rule, or a monitor-mode winner answers DENIED with a one-line reason;
//  4. decides `name-transfer` for the arguments and passed environment values that name files
//     in A, binds each allowed one into B (name_transfer.h) and audits it with both real paths;
//  5. starts P (or the redirect's name) in B with RunInVm as the caller's uid/gid/groups, with
//     the caller's stdio, the environment the rule's `env` passes, the translated arguments and
//     cwd "/"; forwards each SIGNAL to it; kills it if the stand-in goes away (its socket closes);
//  6. answers RESULT with the exit code or the killing signal, and removes the transferred
//     binds.
#ifndef SHUTTLE_AGENT_INVOKE_INVOKE_SERVER_H_
#define SHUTTLE_AGENT_INVOKE_INVOKE_SERVER_H_

#include <atomic>
#include <cstddef>
#include <list>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/audit/audit_sink.h"
#include "agent/decide/policy_holder.h"
#include "agent/intercept/interception.h"
#include "agent/intercept/unique_fd.h"
#include "agent/vm/vm_manager.h"
#include "agent/vm/vm_mounts.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/registry.h"

namespace shuttle::agent::invoke {

struct InvokeServerOptions {
  std::string socket_path;    // Host path of the socket (in the directory bound at /run/shuttle).
  std::string launcher_path;  // shuttle-launch.
  std::string transfer_dir = "/run/shuttle-xfer";     // In the target VM: transferred names.
  absl::Duration request_timeout = absl::Seconds(5);  // For reading the REQUEST.
  size_t max_invocations = 256;  // Running at once; more are answered FAILED (EAGAIN).
};

// Thread-safe. Start() once, Stop() once (the destructor calls it).
class InvokeServer {
 public:
  // Every collaborator is borrowed and must outlive the server; `audit` may be null.
  InvokeServer(InvokeServerOptions options, VmManager& vms, VmMounter& mounter,
               intercept::InterceptionSource& source, const PolicyHolder& policy, AuditSink* audit,
               prometheus::Registry& metrics);
  ~InvokeServer();
  InvokeServer(const InvokeServer&) = delete;
  InvokeServer& operator=(const InvokeServer&) = delete;

  // Creates the socket (mode 0666: any uid in any VM may ask; the policy decides) replacing a
  // stale file, and starts accepting. Errors name the path and the step.
  absl::Status Start();

  // Stops accepting; invocations still running have their program killed (SIGKILL) and their
  // stand-in told FAILED; waits for every worker.
  void Stop();

 private:
  struct Worker {
    std::thread thread;
    std::atomic<bool> done{false};
  };
  void AcceptLoop();
  void Serve(intercept::UniqueFd conn);
  // The RESULT the stand-in gets, after counting it.
  void Answer(int conn, uint32_t outcome, int32_t value, const std::string& message);
  void AuditRecord(const v1::Interaction& interaction, v1::Decision decision,
                   std::string detail) const;

  const InvokeServerOptions options_;
  VmManager& vms_;
  VmMounter& mounter_;
  intercept::InterceptionSource& source_;
  const PolicyHolder& policy_;
  AuditSink* const audit_;
  prometheus::Family<prometheus::Counter>& invocations_;
  prometheus::Family<prometheus::Counter>& transfers_;

  intercept::UniqueFd listen_fd_;
  intercept::UniqueFd stop_fd_;  // eventfd: readable once Stop() began.
  std::atomic<uint64_t> next_id_{1};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::list<std::unique_ptr<Worker>> workers_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace shuttle::agent::invoke

#endif  // SHUTTLE_AGENT_INVOKE_INVOKE_SERVER_H_
