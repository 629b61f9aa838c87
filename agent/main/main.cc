// shuttle-agent: one per host. Wires the VM manager, the interception loop (seccomp
// user-notify), the compiled policy and the local API together. No logic lives here.
//
//   shuttle-agent [--data-dir DIR] [--socket PATH] [--metrics-listen ADDR] [--policy-file FILE]
//                 [--host-id ID] [--launcher PATH] [--vm-init PATH] [--journal PATH]
//                 [--port-file FILE]
// SIGHUP re-reads --policy-file; SIGTERM/SIGINT stop the agent (VMs and their programs keep
// running, and a restarted agent takes them back).
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "agent/decide/policy_decider.h"
#include "agent/decide/policy_holder.h"
#include "agent/intercept/intercept_handler.h"
#include "agent/intercept/process_access.h"
#include "agent/intercept/seccomp_source.h"
#include "agent/local/local_server.h"
#include "agent/main/intercept_metrics.h"
#include "agent/vm/vm_manager.h"
#include "common/flags.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, data_dir, "/var/lib/shuttle/agent", "VM state (vms/) and agent state");
ABSL_FLAG(std::string, socket, "/run/shuttle/agent.sock", "Local API socket (mode 0660)");
ABSL_FLAG(std::string, socket_group, "", "Group allowed to use the local socket (default root)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9465",
          "Prometheus /metrics listen address (port 0: pick one)");
ABSL_FLAG(std::string, policy_file, "",
          "Enforce this YAML policy (same format as the controller's); SIGHUP re-reads it");
ABSL_FLAG(std::string, host_id, "", "This host's id (default: the hostname)");
ABSL_FLAG(std::string, launcher, "", "shuttle-launch binary (default: beside shuttle-agent)");
ABSL_FLAG(std::string, vm_init, "", "shuttle-vm-init binary (default: beside shuttle-agent)");
ABSL_FLAG(std::string, journal, "/run/shuttle/inflight",
          "Memory-mapped journal of notifications in flight (survives the agent)");
ABSL_FLAG(std::string, port_file, "",
          "Once serving, write 'metrics=PORT' to this file (atomically)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace shuttle::agent {
namespace {

// Adapts the VM manager to the interception layer's resolver interface.
class ManagerResolver final : public intercept::VmResolver {
 public:
  explicit ManagerResolver(const VmManager& vms) : vms_(vms) {}
  std::optional<std::string> VmOfPid(pid_t pid) const override { return vms_.VmOfPid(pid); }

 private:
  const VmManager& vms_;
};

std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

// Looks for a helper binary beside the agent, then in the build tree's layout.
std::string FindBinary(const std::string& flag, const std::string& name,
                       const std::string& build_subdir) {
  if (!flag.empty()) return flag;
  const std::string dir = SelfDir();
  for (const std::string& candidate :
       {dir + "/" + name, dir + "/../../" + build_subdir + "/" + name}) {
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return dir + "/" + name;
}

absl::Status MakeDirs(const std::string& path, mode_t mode) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      std::string partial = path.substr(0, i);
      if (::mkdir(partial.c_str(), mode) != 0 && errno != EEXIST) {
        return absl::PermissionDeniedError(
            absl::StrCat("cannot create directory ", partial, ": ", std::strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos || slash == 0 ? "/" : path.substr(0, slash);
}

std::string HostId() {
  std::string flag = absl::GetFlag(FLAGS_host_id);
  if (!flag.empty()) return flag;
  char name[HOST_NAME_MAX + 1] = {};
  ::gethostname(name, sizeof(name) - 1);
  return name;
}

absl::Status LoadPolicy(PolicyHolder& holder, const std::string& host_id, uint64_t version) {
  const std::string path = absl::GetFlag(FLAGS_policy_file);
  if (path.empty()) return absl::OkStatus();
  SHUTTLE_ASSIGN_OR_RETURN(std::shared_ptr<const policy::CompiledPolicy> compiled,
                           LoadPolicyFile(path, host_id, version));
  SHUTTLE_LOG(INFO) << "enforcing " << path << " (" << compiled->rule_count() << " rules for host "
                    << host_id << ", local version " << version << ")";
  holder.Set(std::move(compiled));
  return absl::OkStatus();
}

absl::Status Run(const sigset_t& signals) {
  if (::geteuid() != 0) {
    return absl::PermissionDeniedError("shuttle-agent must run as root (namespaces, seccomp)");
  }
  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  const std::string host_id = HostId();
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(data_dir + "/vms", 0700));
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(Dirname(absl::GetFlag(FLAGS_socket)), 0755));
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(Dirname(absl::GetFlag(FLAGS_journal)), 0755));

  PolicyHolder policy;
  uint64_t local_version = 1;
  SHUTTLE_RETURN_IF_ERROR(LoadPolicy(policy, host_id, local_version));

  SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> metrics,
                           MetricsServer::Create(absl::GetFlag(FLAGS_metrics_listen)));
  VmManagerOptions vm_options;
  vm_options.state_dir = data_dir + "/vms";
  vm_options.init_binary =
      FindBinary(absl::GetFlag(FLAGS_vm_init), "shuttle-vm-init", "driver-shim/linux");
  SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<VmManager> vms, VmManager::Open(vm_options));

  intercept::SeccompInterceptionSource::Options source_options;
  source_options.journal_path = absl::GetFlag(FLAGS_journal);
  SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<intercept::SeccompInterceptionSource> source,
                           intercept::SeccompInterceptionSource::Create(source_options));

  // Take back the listeners the VM inits kept for us, answer what a previous agent left in
  // flight, then serve them: processes that were waiting simply go on.
  std::vector<std::pair<int, std::string>> reclaimed;
  for (const VmInfo& vm : vms->List()) {
    absl::StatusOr<std::vector<int>> fds = vms->ReclaimFds(vm.name);
    if (!fds.ok()) {
      SHUTTLE_LOG(WARNING) << "vm " << vm.name << ": cannot reclaim listeners: " << fds.status();
      continue;
    }
    for (int fd : *fds) reclaimed.emplace_back(fd, vm.name);
  }
  std::vector<int> reclaimed_fds;
  for (const auto& [fd, vm] : reclaimed) reclaimed_fds.push_back(fd);
  size_t recovered = source->RecoverInflight(reclaimed_fds);
  for (auto& [fd, vm] : reclaimed) {
    SHUTTLE_RETURN_IF_ERROR(source->Add(intercept::UniqueFd(fd), vm));
  }
  SHUTTLE_LOG(INFO) << "adopted " << vms->List().size() << " VMs, " << reclaimed.size()
                    << " listeners, answered " << recovered << " calls left in flight";

  intercept::RealProcessMemory memory;
  intercept::RealProcessFds process_fds;
  ManagerResolver resolver(*vms);
  PolicyDecider decider(policy, metrics->registry());
  intercept::InterceptHandler handler(memory, process_fds, resolver, decider);
  auto intercept_metrics = std::make_shared<InterceptMetrics>(handler.stats(), source->stats());
  metrics->RegisterCollectable(intercept_metrics);

  absl::Status loop_status;
  std::thread loop([&] { loop_status = source->Run(handler); });

  LocalServerOptions local_options;
  local_options.socket_path = absl::GetFlag(FLAGS_socket);
  local_options.socket_group = absl::GetFlag(FLAGS_socket_group);
  local_options.launcher_path =
      FindBinary(absl::GetFlag(FLAGS_launcher), "shuttle-launch", "driver-shim/linux");
  LocalServer local(local_options, *vms, *source, metrics->registry());
  absl::Status started = local.Start();
  if (!started.ok()) {
    source->Stop();
    loop.join();
    return started;
  }
  SHUTTLE_LOG(INFO) << "shuttle-agent for host " << host_id << " serving "
                    << local_options.socket_path << ", metrics on port " << metrics->port();

  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << "metrics=" << metrics->port() << "\n";
    if (std::rename(tmp.c_str(), port_file.c_str()) != 0) {
      SHUTTLE_LOG(ERROR) << "cannot write port file " << port_file << ": " << std::strerror(errno);
    }
  }

  while (true) {
    int signo = 0;
    sigwait(&signals, &signo);
    if (signo == SIGHUP) {
      absl::Status reloaded = LoadPolicy(policy, host_id, ++local_version);
      if (!reloaded.ok()) {
        SHUTTLE_LOG(ERROR) << "policy reload failed, still enforcing the previous one: "
                           << reloaded;
      }
      continue;
    }
    SHUTTLE_LOG(INFO) << "signal " << signo << " (" << strsignal(signo) << "): stopping";
    break;
  }
  local.Stop();
  source->Stop();
  loop.join();
  return loop_status;
}

}  // namespace
}  // namespace shuttle::agent

int main(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  absl::SetProgramUsageMessage("Shuttle agent: VMs, interception and policy on one host.");
  std::vector<std::string> normalized = shuttle::NormalizeFlagNames(argc, argv);
  std::vector<char*> normalized_argv = shuttle::FlagArgv(normalized);
  absl::ParseCommandLine(static_cast<int>(normalized.size()), normalized_argv.data());
  const std::string level = absl::GetFlag(FLAGS_log_level);
  shuttle::SetMinLogLevel(level == "debug"     ? shuttle::LogLevel::kDebug
                          : level == "warning" ? shuttle::LogLevel::kWarning
                          : level == "error"   ? shuttle::LogLevel::kError
                                               : shuttle::LogLevel::kInfo);
  absl::Status status = shuttle::agent::Run(signals);
  if (!status.ok()) {
    std::fprintf(stderr, "shuttle-agent: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
