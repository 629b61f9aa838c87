// The agent's local API on its unix socket (proto/shuttle/v1/local.proto): VM create/list/remove,
// `run`, and service add/list/remove (agent/deps), for shuttlectl on the same host. SOCK_SEQPACKET,
// one request or response per datagram; `run` receives the caller's stdio as descriptors and hands
// them to the launcher, so the program's I/O is never proxied. Callers are identified by
// SO_PEERCRED: root may do anything; other users (when the socket's group lets them connect) may
// only list VMs and services and run programs as themselves.
#ifndef SHUTTLE_AGENT_LOCAL_LOCAL_SERVER_H_
#define SHUTTLE_AGENT_LOCAL_LOCAL_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agent/deps/service_registry.h"
#include "agent/intercept/interception.h"
#include "agent/intercept/unique_fd.h"
#include "agent/vm/vm_manager.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/registry.h"
#include "shuttle/v1/local.pb.h"

namespace shuttle::agent {

struct LocalServerOptions {
  std::string socket_path = "/run/shuttle/agent.sock";
  // Group that may connect (socket mode 0660); empty: root only (group root).
  std::string socket_group;
  std::string launcher_path;  // shuttle-launch.
};

// Thread-safe. Collaborators are borrowed and must outlive the server.
class LocalServer {
 public:
  LocalServer(LocalServerOptions options, VmManager& vms, intercept::InterceptionSource& source,
              prometheus::Registry& metrics);
  ~LocalServer();  // Stop()s.

  // Serves ServiceAdd/ServiceRemove/ServiceList from `registry` (borrowed; must outlive the
  // server). Call before Start(); without it those requests fail with UNIMPLEMENTED.
  void set_services(deps::ServiceRegistry* registry) { services_ = registry; }

  // Binds (replacing a stale socket file), sets mode 0660 and group, and serves on a thread
  // per connection. FAILED_PRECONDITION if another agent is serving the socket.
  absl::Status Start();
  // Stops accepting and shuts every connection down; waits for their threads. Programs that
  // were started keep running (they belong to their VM, not to the agent).
  void Stop();

 private:
  struct Peer {
    pid_t pid;
    uid_t uid;
    gid_t gid;
  };
  void AcceptLoop();
  void Serve(intercept::UniqueFd conn);
  v1::LocalResponse HandleVm(const v1::LocalRequest& request, const Peer& peer);
  v1::LocalResponse HandleService(const v1::LocalRequest& request, const Peer& peer);
  // Runs a program and answers RunStarted then RunExited on `conn`.
  void HandleRun(int conn, const v1::LocalRequest::Run& run, const Peer& peer,
                 std::vector<intercept::UniqueFd> stdio);

  const LocalServerOptions options_;
  VmManager& vms_;
  intercept::InterceptionSource& source_;
  prometheus::Family<prometheus::Counter>& requests_;
  deps::ServiceRegistry* services_ = nullptr;  // Not owned; null: no service requests.

  intercept::UniqueFd listen_fd_;
  intercept::UniqueFd stop_fd_;  // eventfd: wakes every connection thread on Stop().
  std::thread accept_thread_;
  absl::Mutex mu_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace shuttle::agent

#endif  // SHUTTLE_AGENT_LOCAL_LOCAL_SERVER_H_
