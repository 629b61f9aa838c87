// The services registered for this host's VMs (docs/operator-guide.md, "Services and
// dependencies"), persisted in the agent's data directory so they survive agent restarts, and
// the state of each one's process as the starter (service_starter.h) reports it. The local API
// (shuttlectl service add/ls/rm) edits it; the starter looks services up in it.
#ifndef SHUTTLE_AGENT_DEPS_SERVICE_REGISTRY_H_
#define SHUTTLE_AGENT_DEPS_SERVICE_REGISTRY_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/broker/broker.h"
#include "shuttle/v1/local.pb.h"

namespace shuttle::agent::deps {

// What is known of a service's process. Not persisted: a restarted agent knows nothing of the
// processes a previous one started (they keep running in their VMs).
struct ServiceRunState {
  enum class Phase { kStopped, kStarting, kRunning };
  Phase phase = Phase::kStopped;
  pid_t pid = 0;          // While starting or running.
  uint32_t starts = 0;    // Launches since the agent started.
  std::string last_exit;  // "exit 0", "signal 9"; empty until a run ended.
};

// "stopped", "starting", "running".
const char* PhaseName(ServiceRunState::Phase phase);

// Thread-safe. Every change is written to the file (a temporary file, fsync, rename, fsync of
// the directory) before it is visible, so a crash leaves the old or the new set, never half.
class ServiceRegistry {
 public:
  // Loads `path` (protobuf JSON of a LocalServiceSet) if it exists; a missing file is an empty
  // registry. A file that is not valid, or holds an invalid service, fails with an error naming
  // the file and the service; nothing is loaded then.
  static absl::StatusOr<std::unique_ptr<ServiceRegistry>> Open(std::string path);

  // Validates (NormalizeService) and stores `service`, then persists. ALREADY_EXISTS if its VM
  // has a service of that name, or one with the same readiness address. Returns the service as
  // stored (defaults filled in). Nothing changes on error.
  absl::StatusOr<v1::LocalService> Add(v1::LocalService service);
  // Removes a service (its process, if any, is not stopped) and persists. NOT_FOUND if absent.
  absl::Status Remove(const std::string& vm, const std::string& name);

  // Every service, sorted by VM then name.
  std::vector<v1::LocalService> List() const;
  // The service of `vm` whose readiness address serves `request` (ReadyAddress::Serves).
  std::optional<v1::LocalService> FindServing(const std::string& vm,
                                              const broker::BrokerRequest& request) const;

  // The starter's reports on a service's process (kept also for unregistered names while a
  // process started under them runs).
  void SetRunState(const std::string& vm, const std::string& name, ServiceRunState state);
  ServiceRunState RunStateOf(const std::string& vm, const std::string& name) const;

  const std::string& path() const { return path_; }

 private:
  using Key = std::pair<std::string, std::string>;  // (vm, name): sorted as List() promises.
  explicit ServiceRegistry(std::string path) : path_(std::move(path)) {}
  absl::Status Persist(const std::map<Key, v1::LocalService>& services) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  mutable absl::Mutex mu_;
  std::map<Key, v1::LocalService> services_ ABSL_GUARDED_BY(mu_);
  std::map<Key, ServiceRunState> run_states_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shuttle::agent::deps

#endif  // SHUTTLE_AGENT_DEPS_SERVICE_REGISTRY_H_
