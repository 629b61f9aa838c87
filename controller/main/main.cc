// shuttle-controller: wires the store, the policy registry, authorization and the gRPC services
// together and serves them over mTLS, with Prometheus metrics beside. No logic lives here.
//
//   shuttle-controller [--data-dir DIR] [--listen ADDR] [--metrics-listen ADDR]
//                      [--port-file FILE] [--insecure] [--log-level LEVEL]
//   shuttle-controller issue-cert --data-dir DIR --role admin|viewer --name NAME --out-dir OUT
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/executor.h"
#include "common/flags.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/runtime.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "controller/audit/audit_log.h"
#include "controller/authz/answers.h"
#include "controller/authz/authz.h"
#include "controller/push/push_manager.h"
#include "controller/registry/policy_registry.h"
#include "controller/service/agent_service.h"
#include "controller/service/answer_service.h"
#include "controller/service/audit_service.h"
#include "controller/service/fleet_service.h"
#include "controller/service/policy_service.h"
#include "controller/service/reflection_service.h"
#include "controller/store/sqlite_store.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "shuttle/v1/agent.grpc.pb.h"
#include "shuttle/v1/answers.grpc.pb.h"
#include "shuttle/v1/audit.grpc.pb.h"
#include "shuttle/v1/fleet.grpc.pb.h"
#include "shuttle/v1/policy.grpc.pb.h"

ABSL_FLAG(std::string, data_dir, "/var/lib/shuttle/controller",
          "Directory for the store (controller.db) and the PKI (pki/)");
ABSL_FLAG(std::string, listen, "127.0.0.1:7443", "gRPC listen address (port 0: pick one)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "Prometheus /metrics listen address (port 0: pick one)");
ABSL_FLAG(std::string, port_file, "",
          "Once serving, write 'grpc=PORT' and 'metrics=PORT' lines to this file (atomically)");
ABSL_FLAG(bool, insecure, false,
          "Serve plaintext gRPC with no client authentication. For local experiments only");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");
ABSL_FLAG(int, workers, 4, "Threads that run handler work (store access)");
ABSL_FLAG(absl::Duration, ask_default_ttl, absl::Seconds(30),
          "How long agents may cache an Authorize answer whose standing answer names no ttl, "
          "and a denial for want of one");
// issue-cert only.
ABSL_FLAG(std::string, role, "viewer", "issue-cert: role of the certificate (admin or viewer)");
ABSL_FLAG(std::string, name, "", "issue-cert: identity (CN) of the certificate");
ABSL_FLAG(std::string, out_dir, ".", "issue-cert: where to write NAME.pem and NAME.key");

namespace shuttle::controller {
namespace {

absl::Status SetLogLevel(const std::string& name) {
  if (name == "debug") {
    SetMinLogLevel(LogLevel::kDebug);
  } else if (name == "info") {
    SetMinLogLevel(LogLevel::kInfo);
  } else if (name == "warning") {
    SetMinLogLevel(LogLevel::kWarning);
  } else if (name == "error") {
    SetMinLogLevel(LogLevel::kError);
  } else {
    return absl::InvalidArgumentError("--log-level: unknown level '" + name + "'");
  }
  return absl::OkStatus();
}

absl::Status MakeDirs(const std::string& path, mode_t mode) {
  std::string partial;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || (path[i] == '/' && i > 0)) {
      partial = path.substr(0, i);
      if (::mkdir(partial.c_str(), mode) != 0 && errno != EEXIST) {
        return absl::PermissionDeniedError(
            absl::StrCat("cannot create directory ", partial, ": ", std::strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status WritePortFile(const std::string& path, int grpc_port, int metrics_port) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << "grpc=" << grpc_port << "\nmetrics=" << metrics_port << "\n";
    out.flush();
    if (!out) return absl::InternalError("cannot write port file " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status IssueCert() {
  const std::string role = absl::GetFlag(FLAGS_role);
  const std::string name = absl::GetFlag(FLAGS_name);
  if (role != "admin" && role != "viewer") {
    return absl::InvalidArgumentError("--role must be admin or viewer, not '" + role + "'");
  }
  if (name.empty()) return absl::InvalidArgumentError("--name is required");
  const std::string pki = absl::GetFlag(FLAGS_data_dir) + "/pki";
  SHUTTLE_RETURN_IF_ERROR(tls::IssueClientCert(pki, role, name, absl::GetFlag(FLAGS_out_dir)));
  SHUTTLE_LOG(INFO) << "wrote " << absl::GetFlag(FLAGS_out_dir) << "/" << name << ".pem and .key ("
                    << role << ")";
  return absl::OkStatus();
}

absl::Status Serve(const sigset_t& stop_signals) {
  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  const bool insecure = absl::GetFlag(FLAGS_insecure);
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(data_dir, 0700));

  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (insecure) {
    SHUTTLE_LOG(WARNING) << "--insecure: serving PLAINTEXT gRPC with NO client authentication; "
                            "every caller is treated as admin. Never use this beyond a test.";
    credentials = grpc::InsecureServerCredentials();
  } else {
    const std::string pki = data_dir + "/pki";
    SHUTTLE_RETURN_IF_ERROR(tls::EnsureControllerPki(pki));
    // Optional: an enrolling agent has no certificate yet. Every method but Enroll still
    // refuses a certificate-less caller (Authorizer: UNAUTHENTICATED); a certificate from
    // another CA is refused by the handshake.
    SHUTTLE_ASSIGN_OR_RETURN(credentials,
                             tls::LoadServerCredentials(pki, tls::ClientCertMode::kOptional));
  }

  SHUTTLE_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> metrics,
                           MetricsServer::Create(absl::GetFlag(FLAGS_metrics_listen)));
  prometheus::Registry& registry = metrics->registry();

  SHUTTLE_ASSIGN_OR_RETURN(StorePtr store,
                           OpenSqliteStore(data_dir + "/controller.db", RealClock()));
  PolicyRegistry policies(*store, registry);
  SHUTTLE_RETURN_IF_ERROR(policies.Load());

  Authorizer authorizer(insecure, registry);
  Executor executor(absl::GetFlag(FLAGS_workers));
  PushManager push(*store, policies, RealClock(), registry);
  SHUTTLE_RETURN_IF_ERROR(push.Start());
  AnswerOptions answer_options;
  answer_options.default_ttl = absl::GetFlag(FLAGS_ask_default_ttl);
  if (answer_options.default_ttl <= absl::ZeroDuration() ||
      answer_options.default_ttl > answer_options.max_ttl) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--ask-default-ttl must be in (0, ", absl::FormatDuration(answer_options.max_ttl),
        "], not ", absl::FormatDuration(answer_options.default_ttl)));
  }
  AnswerAuthority answers(*store, RealClock(), answer_options);
  SHUTTLE_RETURN_IF_ERROR(answers.Load());
  AuditLog audit(*store, registry);
  PolicyServiceImpl policy_service(policies, authorizer, executor);
  AgentServiceImpl agent_service(*store, push, authorizer, executor, RealClock(), data_dir + "/pki",
                                 registry, answers, audit);
  FleetServiceImpl fleet_service(*store, push, authorizer, executor, RealClock());
  AuditServiceImpl audit_service(audit, authorizer, executor, registry);
  AnswerServiceImpl answer_service(answers, authorizer, executor);
  // Reflection (for grpcurl) is our own callback service, not gRPC's plugin: the plugin is a
  // synchronous service, and any synchronous service makes the server run sync polling threads
  // beside the callback services, which cost ~35% of Authorize throughput with 1,000 agents
  // connected (bench/fleet_sim.cc). Every service here, health included, is callback-API.
  ReflectionServiceImpl reflection_service({
      v1::PolicyService::service_full_name(),
      v1::AgentService::service_full_name(),
      v1::FleetService::service_full_name(),
      v1::AuditService::service_full_name(),
      v1::AnswerService::service_full_name(),
      "grpc.health.v1.Health",  // gRPC's default health service (no descriptor in the pool).
      grpc::reflection::v1alpha::ServerReflection::service_full_name(),
  });

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  const std::string listen = absl::GetFlag(FLAGS_listen);
  builder.AddListeningPort(listen, credentials, &grpc_port);
  AddAgentKeepaliveArgs(builder);
  builder.RegisterService(&policy_service);
  builder.RegisterService(&agent_service);
  builder.RegisterService(&fleet_service);
  builder.RegisterService(&audit_service);
  builder.RegisterService(&answer_service);
  builder.RegisterService(&reflection_service);
  GrpcMetricsSetup grpc_metrics = MakeGrpcMetrics(registry, {AgentServiceImpl::kAuthorizeMethod});
  agent_service.set_authorize_recorder(grpc_metrics.recorders.front());
  builder.experimental().SetInterceptorCreators(std::move(grpc_metrics.interceptors));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    return absl::UnavailableError("cannot listen on " + listen +
                                  " (address in use, or not a valid host:port)");
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  SHUTTLE_LOG(INFO) << "shuttle-controller serving gRPC on port " << grpc_port
                    << (insecure ? " (plaintext)" : " (mTLS)") << ", metrics on port "
                    << metrics->port() << ", data in " << data_dir << ", fleet version "
                    << policies.Snapshot()->bundle.version();

  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    SHUTTLE_RETURN_IF_ERROR(WritePortFile(port_file, grpc_port, metrics->port()));
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  SHUTTLE_LOG(INFO) << "signal " << signal_number << " (" << strsignal(signal_number)
                    << "): shutting down";
  server->GetHealthCheckService()->SetServingStatus(false);
  push.Stop();    // Ends the agents' policy streams now; they reconnect to the next controller.
  audit.Close();  // Ends AuditService.Follow streams now, with UNAVAILABLE.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  return absl::OkStatus();
}

}  // namespace
}  // namespace shuttle::controller

int main(int argc, char** argv) {
  // Block the stop signals before any thread starts, so only sigwait() sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::SetProgramUsageMessage(
      "Shuttle controller: fleet policy store and API.\n"
      "  shuttle-controller [--data-dir DIR] [--listen ADDR] [--metrics-listen ADDR] "
      "[--insecure]\n"
      "  shuttle-controller issue-cert --data-dir DIR --role admin|viewer --name NAME "
      "--out-dir OUT");
  std::vector<std::string> normalized = shuttle::NormalizeFlagNames(argc, argv);
  std::vector<char*> normalized_argv = shuttle::FlagArgv(normalized);
  std::vector<char*> args =
      absl::ParseCommandLine(static_cast<int>(normalized.size()), normalized_argv.data());
  shuttle::ConfigureRuntimeForProduction();
  absl::Status status = shuttle::controller::SetLogLevel(absl::GetFlag(FLAGS_log_level));
  if (status.ok()) {
    if (args.size() > 1 && std::string(args[1]) == "issue-cert") {
      status = shuttle::controller::IssueCert();
    } else if (args.size() > 1) {
      status =
          absl::InvalidArgumentError(std::string("unknown command '") + args[1] + "' (see --help)");
    } else {
      status = shuttle::controller::Serve(stop_signals);
    }
  }
  if (!status.ok()) {
    std::fprintf(stderr, "shuttle-controller: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
