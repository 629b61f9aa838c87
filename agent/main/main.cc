// shuttle-agent: one per host. Wires the VM manager, the interception loop (seccomp
// user-notify), the compiled policy and the local API together. No logic lives here.
//
//   shuttle-agent [--data-dir DIR] [--socket PATH] [--metrics-listen ADDR] [--policy-file FILE]
//                 [--host-id ID] [--launcher PATH] [--vm-init PATH] [--journal PATH]
//                 [--port-file FILE] [--audit-spool-max-bytes N]
//                 [--controller ADDR [--join-token T] [--controller-ca FILE]]
// Standalone (--policy-file) or fleet (--controller: enroll once, then the policy stream;
// the last good pushed policy is enforced at start), never both.
// Every cross-VM, vm-host and host-vm decision is spooled to DATA/audit (bounded), and with
// --controller uploaded to it in batches. With --controller, `ask` rules are sent to it
// (Authorize) and the answers cached; without, their fail mode decides.
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
#include "agent/audit/spool.h"
#include "agent/audit/uploader.h"
#include "agent/broker/broker.h"
#include "agent/broker/crossing.h"
#include "agent/client/enroll.h"
#include "agent/client/policy_client.h"
#include "agent/client/policy_snapshot.h"
#include "agent/decide/ask_cache.h"
#include "agent/decide/ask_client.h"
#include "agent/decide/policy_decider.h"
#include "agent/decide/policy_holder.h"
#include "agent/deps/service_registry.h"
#include "agent/deps/service_starter.h"
#include "agent/intercept/intercept_handler.h"
#include "agent/intercept/process_access.h"
#include "agent/intercept/restart_recovery.h"
#include "agent/intercept/seccomp_source.h"
#include "agent/invoke/invoke_server.h"
#include "agent/invoke/standins.h"
#include "agent/local/local_server.h"
#include "agent/main/intercept_metrics.h"
#include "agent/share/share_manager.h"
#include "agent/vm/vm_manager.h"
#include "agent/vm/vm_mounts.h"
#include "common/clock.h"
#include "common/flags.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/runtime.h"
#include "common/status_macros.h"
#include "common/tls.h"

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
ABSL_FLAG(std::string, controller, "",
          "Controller address HOST:PORT; the policy then comes from the controller (mTLS)");
ABSL_FLAG(std::string, join_token, "",
          "Single-use token from `shuttlectl token create`; enrolls once if DATA/pki is empty");
ABSL_FLAG(uint64_t, audit_spool_max_bytes, uint64_t{64} << 20,
          "Bound on the audit spool in DATA/audit; when full, new records are dropped and "
          "counted (shuttle_agent_audit_dropped_total{reason=\"spool_full\"})");
// Crossings (issue 5): the broker that opens allowed cross-VM objects in their target.
ABSL_FLAG(int, broker_threads, 4, "Broker worker threads (opens in target VMs, as the caller)");
ABSL_FLAG(absl::Duration, broker_timeout, absl::Seconds(5),
          "Deadline of one brokered open (queue + connect); the caller then gets ETIMEDOUT");
// Invocation across VMs (issue 5).
ABSL_FLAG(std::string, invoke_socket_dir, "",
          "Host directory of the invocation socket, bound at /run/shuttle in every VM "
          "(default DATA/invoke)");
ABSL_FLAG(std::string, invoke_stub, "",
          "shuttle-invoke, the stand-in bound over programs placed in another VM (default: "
          "beside shuttle-agent)");
ABSL_FLAG(std::string, controller_ca, "/var/lib/shuttle/controller/pki/ca.pem",
          "The controller's CA certificate, to verify the controller while enrolling");

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

constexpr char kAgentVersion[] = "0.4.0-dev";

// mTLS credentials for the controller: DATA/pki if the agent is enrolled, otherwise enrolls
// with --join-token first. Errors are one line for the operator.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ControllerCredentials(
    const std::string& data_dir, const std::string& host_id) {
  const std::string controller = absl::GetFlag(FLAGS_controller);
  const std::string token = absl::GetFlag(FLAGS_join_token);
  const AgentPkiPaths pki = AgentPki(data_dir);
  if (!HasAgentCredentials(pki)) {
    if (token.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "not enrolled (no ", pki.cert, "): pass --join-token ", "(shuttlectl token create)"));
    }
    const std::string ca = absl::GetFlag(FLAGS_controller_ca);
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> bootstrap =
        tls::LoadClientCredentials(ca, "", "");
    if (!bootstrap.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--controller-ca ", ca,
                       " (the controller's CA, needed to enroll): ", bootstrap.status().message()));
    }
    EnrollOptions options;
    options.controller_address = controller;
    options.join_token = token;
    options.host_id = host_id;
    options.credentials = *std::move(bootstrap);
    SHUTTLE_RETURN_IF_ERROR(Enroll(options, pki));
    SHUTTLE_LOG(INFO) << "enrolled with controller " << controller << " as host " << host_id
                      << "; credentials in " << pki.dir;
  } else if (!token.empty()) {
    SHUTTLE_LOG(INFO) << "already enrolled (" << pki.dir << "); --join-token ignored";
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
      tls::LoadClientCredentials(pki.ca, pki.cert, pki.key);
  if (!creds.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("agent credentials in ", pki.dir, ": ", creds.status().message(),
                     " (remove the directory and enroll again with --join-token)"));
  }
  return creds;
}

// The host's VMs as the controller sees them.
std::vector<v1::VmInfo> ListVmsForController(const VmManager* vms) {
  std::vector<v1::VmInfo> out;
  if (vms == nullptr) return out;
  for (const VmInfo& vm : vms->List()) {
    v1::VmInfo info;
    info.set_name(vm.name);
    info.set_init_pid(static_cast<uint32_t>(vm.init_pid));
    info.set_running(vm.init_pid > 0 && ::kill(vm.init_pid, 0) == 0);
    out.push_back(std::move(info));
  }
  return out;
}

absl::Status Run(const sigset_t& signals) {
  if (::geteuid() != 0) {
    return absl::PermissionDeniedError("shuttle-agent must run as root (namespaces, seccomp)");
  }
  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  const std::string host_id = HostId();
  const std::string controller = absl::GetFlag(FLAGS_controller);
  if (!controller.empty() && !absl::GetFlag(FLAGS_policy_file).empty()) {
    return absl::InvalidArgumentError(
        "--policy-file and --controller exclude each other: with a controller the policy comes "
        "from the controller (use --policy-file only for a standalone agent)");
  }
  if (controller.empty() && !absl::GetFlag(FLAGS_join_token).empty()) {
    return absl::InvalidArgumentError("--join-token needs --controller ADDR");
  }
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(data_dir + "/vms", 0700));
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(Dirname(absl::GetFlag(FLAGS_socket)), 0755));
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(Dirname(absl::GetFlag(FLAGS_journal)), 0755));

  SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> metrics,
                           MetricsServer::Create(absl::GetFlag(FLAGS_metrics_listen)));

  // The audit spool: always (a standalone agent keeps a bounded local audit log); uploaded
  // only with a controller. Declared before the decider and the uploader that use it.
  AuditSpoolOptions spool_options;
  spool_options.dir = data_dir + "/audit";
  spool_options.host_id = host_id;
  spool_options.max_bytes = absl::GetFlag(FLAGS_audit_spool_max_bytes);
  SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<AuditSpool> audit_spool,
                           AuditSpool::Open(std::move(spool_options), metrics->registry()));
  std::unique_ptr<AuditUploader> audit_uploader;

  // `ask` answers, dropped for the rules a new policy changes. Declared before the holder that
  // feeds it and the decider and asker that use it.
  AskCache ask_cache;
  std::unique_ptr<GrpcAsker> asker;  // With --controller: Authorize for `ask` rules.
  PolicyHolder policy;
  policy.AddObserver([&ask_cache](const auto& compiled) {
    size_t dropped = ask_cache.OnPolicy(*compiled);
    if (dropped > 0) {
      SHUTTLE_LOG(INFO) << "policy version " << compiled->version() << ": dropped " << dropped
                        << " cached ask answers of changed rules";
    }
  });
  uint64_t local_version = 1;
  // Declared before the client, whose VM lister reads it (null until opened), so it outlives
  // the client's threads.
  std::unique_ptr<VmManager> vms;
  std::unique_ptr<PolicyClient> client;
  if (controller.empty()) {
    SHUTTLE_RETURN_IF_ERROR(LoadPolicy(policy, host_id, local_version));
  } else {
    SHUTTLE_RETURN_IF_ERROR(MakeDirs(data_dir + "/policy", 0700));
    SHUTTLE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                             ControllerCredentials(data_dir, host_id));
    PolicyClientOptions client_options;
    client_options.controller_address = controller;
    client_options.host_id = host_id;
    client_options.agent_version = kAgentVersion;
    client_options.credentials = credentials;
    client_options.snapshot_path = LastGoodPolicyPath(data_dir);
    client = std::make_unique<PolicyClient>(
        std::move(client_options), policy, [&vms] { return ListVmsForController(vms.get()); },
        metrics->registry());
    GrpcAskerOptions ask_options;
    ask_options.controller_address = controller;
    ask_options.host_id = host_id;
    ask_options.credentials = credentials;
    asker = std::make_unique<GrpcAsker>(std::move(ask_options));
    AuditUploaderOptions uploader_options;
    uploader_options.controller_address = controller;
    uploader_options.credentials = std::move(credentials);
    audit_uploader = std::make_unique<AuditUploader>(std::move(uploader_options), *audit_spool,
                                                     metrics->registry());
    // Enforce the last good policy now: the controller may be down or slow to answer.
    absl::StatusOr<uint64_t> persisted = client->LoadPersisted();
    if (persisted.ok()) {
      SHUTTLE_LOG(INFO) << "enforcing persisted policy version " << *persisted << " ("
                        << policy.Get()->rule_count() << " rules) until the controller answers";
    } else if (absl::IsNotFound(persisted.status())) {
      SHUTTLE_LOG(INFO) << "no persisted policy yet; cross-VM calls are denied until the "
                           "controller pushes one";
    } else {
      SHUTTLE_LOG(ERROR) << "ignoring the persisted policy (" << persisted.status()
                         << "); cross-VM calls are denied until the controller pushes one";
    }
  }

  VmManagerOptions vm_options;
  vm_options.state_dir = data_dir + "/vms";
  // The agent's credentials, saved policy and spool are none of a VM's business.
  vm_options.hidden_paths = {data_dir};
  vm_options.init_binary =
      FindBinary(absl::GetFlag(FLAGS_vm_init), "shuttle-vm-init", "driver-shim/linux");
  SHUTTLE_ASSIGN_OR_RETURN(vms, VmManager::Open(vm_options));
  // The controller compiles per host, for the VMs it was told of: tell it of a new one now.
  if (client != nullptr) vms->set_on_change([&client] { client->NotifyVmsChanged(); });

  // Static sharing (issue 5): FIFOs and POSIX shm files that the policy shares are bind-mounted
  // into the subject VMs, on the share manager's own thread, following every policy change and
  // the VMs that appear; DATA/shares lists what is mounted, for the next agent.
  VmMounter share_vm_mounter(*vms);
  share::VmShareMounter share_mounter(share_vm_mounter);
  share::ShareManagerOptions share_options;
  share_options.state_file = data_dir + "/shares";
  share::ShareManager shares(
      share_mounter,
      [&vms] {
        std::vector<std::string> names;
        for (const VmInfo& vm : vms->List()) names.push_back(vm.name);
        return names;
      },
      RealClock(), metrics->registry(), share_options);
  shares.OnPolicy(policy.Get());
  policy.AddObserver([&shares](const auto& compiled) { shares.OnPolicy(compiled); });
  shares.Start();

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
  // First make every VM thread that sleeps in a seccomp wait issue its call again, so this agent
  // decides it: that also covers a call the dead agent received but had not journaled. Then the
  // journal catches whatever could not be restarted; those calls continue (the kernel's
  // isolation still holds for them).
  intercept::RestartRecoveryStats restarted =
      intercept::RestartSeccompWaiters([&vms](pid_t pid) { return vms->VmOfPid(pid).has_value(); });
  size_t recovered = source->RecoverInflight(reclaimed_fds);
  for (auto& [fd, vm] : reclaimed) {
    SHUTTLE_RETURN_IF_ERROR(source->Add(intercept::UniqueFd(fd), vm));
  }
  SHUTTLE_LOG(INFO) << "adopted " << vms->List().size() << " VMs, " << reclaimed.size()
                    << " listeners; restarted " << restarted.restarted << " waiting calls ("
                    << restarted.failed << " could not be), answered " << recovered
                    << " journaled calls left in flight";

  intercept::RealProcessMemory memory;
  intercept::RealProcessFds process_fds;
  ManagerResolver resolver(*vms);
  PolicyDecider decider(policy, metrics->registry());
  decider.set_audit_sink(audit_spool.get());
  if (asker != nullptr) decider.EnableAsk(*asker, ask_cache);
  // Services and dependencies (issue 5): the registered services (DATA/services.json) and their
  // starter, declared before the crossing's broker so that they outlive it (while the broker
  // drains, a queued open may still ask for a start: the stopped starter answers UNAVAILABLE).
  SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<deps::ServiceRegistry> services,
                           deps::ServiceRegistry::Open(data_dir + "/services.json"));
  std::unique_ptr<deps::ServiceStarter> service_starter;  // Created with the broker, below.
  // Crossings (issue 5): enforced allow/redirect verdicts that leave the caller's VM are opened
  // in the target by the broker (created here, on the main thread: the host's namespaces) and
  // handed to the caller as descriptors. The broker's queued opens call back into the crossing,
  // so the broker goes first (broker_shutdown), after the asks (ask_shutdown, declared below).
  broker::Broker::Options broker_options;
  broker_options.threads = absl::GetFlag(FLAGS_broker_threads);
  SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<broker::Broker> cross_broker,
                           broker::Broker::Create(broker_options));
  broker::CachedTargets broker_targets(
      [&vms](const std::string& vm) -> absl::StatusOr<broker::CachedTargets::Init> {
        SHUTTLE_ASSIGN_OR_RETURN(VmInfo info, vms->Get(vm));
        SHUTTLE_ASSIGN_OR_RETURN(int pidfd, vms->InitPidfd(vm));
        return broker::CachedTargets::Init{info.init_pid, intercept::UniqueFd(pidfd)};
      });
  broker::RealCallerAccess caller_access;
  broker::CrossingBroker::Options crossing_options;
  crossing_options.open_timeout = absl::GetFlag(FLAGS_broker_timeout);
  broker::CrossingBroker crossing(*cross_broker, broker_targets, caller_access, memory,
                                  metrics->registry(), crossing_options);
  struct BrokerShutdown {
    std::unique_ptr<broker::Broker>& broker;
    ~BrokerShutdown() { broker.reset(); }
  } broker_shutdown{cross_broker};
  decider.set_crossing(&crossing);
  decider.set_vm_resolver(&resolver);
  // Services and dependencies (issue 5): a connect the crossing finds nobody listening for may
  // start the target VM's registered service, if a `depend` rule lets the caller's VM depend on
  // it. Stopped (service_stop) before the broker goes, since its readiness probes use it.
  deps::ServiceStarterOptions starter_options;
  starter_options.launcher_path =
      FindBinary(absl::GetFlag(FLAGS_launcher), "shuttle-launch", "driver-shim/linux");
  starter_options.log_dir = data_dir + "/services";
  service_starter =
      std::make_unique<deps::ServiceStarter>(starter_options, *services, *vms, *source,
                                             *cross_broker, policy, decider, metrics->registry());
  crossing.set_on_demand(service_starter.get());
  struct ServiceStop {
    deps::ServiceStarter& starter;
    ~ServiceStop() { starter.Stop(); }
  } service_stop{*service_starter};
  // Whatever way Run() returns, asks in flight complete before the decider goes (their
  // completions use it).
  struct AskShutdown {
    GrpcAsker* asker;
    ~AskShutdown() {
      if (asker != nullptr) asker->Shutdown();
    }
  } ask_shutdown{asker.get()};
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
  local.set_services(services.get());  // Services and dependencies (issue 5).
  absl::Status started = local.Start();
  if (!started.ok()) {
    source->Stop();
    loop.join();
    return started;
  }
  // Invocation across VMs and name transfer (issue 5): the socket every VM sees at
  // /run/shuttle/invoke.sock, the stand-in bound over each program a rule places in another VM
  // (kept in step with the policy and the VMs on the stand-in manager's thread), and the server
  // that runs those programs in their VM. Declared after the VMs and the interception source it
  // uses, so it stops first.
  const std::string invoke_dir = absl::GetFlag(FLAGS_invoke_socket_dir).empty()
                                     ? data_dir + "/invoke"
                                     : absl::GetFlag(FLAGS_invoke_socket_dir);
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(invoke_dir, 0755));
  VmMounter invoke_mounter(*vms);
  invoke::InvokeServerOptions invoke_options;
  invoke_options.socket_path = invoke_dir + "/invoke.sock";
  invoke_options.launcher_path = local_options.launcher_path;
  invoke::InvokeServer invoker(invoke_options, *vms, invoke_mounter, *source, policy,
                               audit_spool.get(), metrics->registry());
  if (absl::Status invoke_started = invoker.Start(); !invoke_started.ok()) {
    source->Stop();
    loop.join();
    return invoke_started;
  }
  invoke::StandInOptions standin_options;
  standin_options.stand_in_binary =
      FindBinary(absl::GetFlag(FLAGS_invoke_stub), "shuttle-invoke", "driver-shim/linux");
  standin_options.socket_dir = invoke_dir;
  invoke::StandInManager standins(standin_options, *vms, invoke_mounter, metrics->registry());
  standins.OnPolicy(policy.Get());
  policy.AddObserver([&standins](const auto& compiled) { standins.OnPolicy(compiled); });
  standins.Start();

  SHUTTLE_LOG(INFO) << "shuttle-agent for host " << host_id << " serving "
                    << local_options.socket_path << ", metrics on port " << metrics->port();
  if (client != nullptr) {
    client->Start();
    SHUTTLE_LOG(INFO) << "policy stream to controller " << controller << " started";
  }
  if (audit_uploader != nullptr) audit_uploader->Start();

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
    if (signo == SIGHUP && client != nullptr) {
      SHUTTLE_LOG(INFO) << "SIGHUP: the policy comes from the controller; nothing to re-read";
      continue;
    }
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
  if (client != nullptr) client->Stop();
  local.Stop();
  source->Stop();
  loop.join();
  // No more decisions: asks still in flight are cancelled and decided by their fail mode (and
  // audited), then write what the spool holds, then stop uploading (what is not acknowledged
  // yet goes at the next start).
  if (asker != nullptr) asker->Shutdown();
  audit_spool->Stop();
  if (audit_uploader != nullptr) audit_uploader->Stop();
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
  shuttle::ConfigureRuntimeForProduction();
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
