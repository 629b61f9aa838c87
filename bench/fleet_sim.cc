// shuttle_bench_fleet: issue 4 point 9 in one run. Starts a real shuttle-controller (its own
// temporary data dir, port 0) and a plain gRPC echo server (this binary with --serve-echo, TLS
// from the controller's PKI), enrolls N simulated agents (a join token each, a CSR each), opens
// their N policy streams from this process (bench/sim_fleet.h), and measures:
//   1. convergence: for K policy changes (PolicyService.Apply as admin), the time from Apply to
//      the moment each agent sent its ACK for the new version (p50/p99/max over N*K samples),
//      cross-checked with the controller's own push-to-ACK histogram from /metrics;
//   2. Authorize throughput (as one enrolled agent) against the echo service with the same
//      closed-loop client (bench/closed_loop.h), alternating A,E,A,E, and their ratio.
// Prints one RESULT line per metric with its target and PASS/MISS. Exits 0 unless something
// failed to run (a MISS is a result, not a failure); every wait is bounded, and the servers are
// always stopped (also on SIGINT/SIGTERM, and by PR_SET_PDEATHSIG if this process dies).
//
//   shuttle_bench_fleet --controller build/controller/main/shuttle-controller
//       --agents 1000 --rounds 5 --concurrency 32 --duration 5s
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "bench/bench_stats.h"
#include "bench/child_process.h"
#include "bench/closed_loop.h"
#include "bench/echo.grpc.pb.h"
#include "bench/sim_fleet.h"
#include "common/flags.h"
#include "common/runtime.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "controller/service/agent_service.h"
#include "google/protobuf/util/time_util.h"
#include "shuttle/v1/agent.grpc.pb.h"
#include "shuttle/v1/answers.grpc.pb.h"
#include "shuttle/v1/fleet.grpc.pb.h"
#include "shuttle/v1/policy.grpc.pb.h"

ABSL_FLAG(std::string, controller, "", "Path of the shuttle-controller binary to benchmark");
ABSL_FLAG(int, agents, 100, "Simulated agents (N), each with its own certificate and stream");
ABSL_FLAG(int, rounds, 5, "Policy changes to time (K)");
ABSL_FLAG(int, concurrency, 32, "Outstanding calls of the Authorize/echo load (C)");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(5), "Length of each Authorize/echo run (D)");
ABSL_FLAG(int, pairs, 5,
          "Authorize-then-echo run pairs; the ratio reported is the median of the pairs' ratios");
ABSL_FLAG(int, rules, 20, "Rules in the policy that every round changes (one rule per round)");
ABSL_FLAG(std::string, agent_work, "ack",
          "What a simulated agent does with a push: 'ack' (check nonce, version and delta base, "
          "then ACK: measures the controller path) or 'compile' (also assemble and compile the "
          "bundle like the real agent, without persisting it)");
ABSL_FLAG(absl::Duration, heartbeat, absl::Seconds(5), "Agent heartbeat interval");
ABSL_FLAG(absl::Duration, keepalive, absl::Seconds(2),
          "Agent HTTP/2 keepalive time (0: off); the real agent uses 2s");
ABSL_FLAG(int, enroll_parallel, 8, "Enrollments in flight at once");
ABSL_FLAG(absl::Duration, setup_timeout, absl::Seconds(600),
          "Bound on start-up, enrollment, and all streams ACKing the first version");
ABSL_FLAG(absl::Duration, round_timeout, absl::Seconds(60),
          "Bound on one round: Apply until every agent ACKed");
ABSL_FLAG(absl::Duration, p99_target, absl::Seconds(1), "Convergence p99 target");
ABSL_FLAG(double, ratio_target, 0.7, "Authorize/echo throughput ratio target");
ABSL_FLAG(std::vector<std::string>, controller_args, {},
          "Extra flags for the controller, comma-separated (e.g. --workers=8)");
ABSL_FLAG(std::string, work_dir, "",
          "Where the temporary directory goes (default $TMPDIR or /tmp); removed at the end");
ABSL_FLAG(bool, keep_work_dir, false, "Keep the temporary directory (logs, data) for a look");
ABSL_FLAG(bool, skip_throughput, false, "Measure convergence only");
// Internal: the echo server mode this binary runs itself in.
ABSL_FLAG(bool, serve_echo, false,
          "Internal: serve the echo baseline (needs --pki-dir, --port-file)");
ABSL_FLAG(std::string, pki_dir, "", "Internal (--serve-echo): controller PKI directory");
ABSL_FLAG(std::string, port_file, "", "Internal (--serve-echo): where to write 'grpc=PORT'");

namespace shuttle::bench {
namespace {

using Steady = std::chrono::steady_clock;
namespace fs = std::filesystem;

double Seconds(Steady::duration d) { return std::chrono::duration<double>(d).count(); }

// User + system CPU time of process `pid` (0: this process) so far, from /proc; 0 if unreadable.
double CpuSeconds(pid_t pid) {
  std::ifstream in(pid == 0 ? std::string("/proc/self/stat")
                            : absl::StrCat("/proc/", pid, "/stat"));
  std::string stat;
  std::getline(in, stat);
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
  // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
  double utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtod(fields[11], &utime) ||
      !absl::SimpleAtod(fields[12], &stime)) {
    return 0;
  }
  return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The 1-minute load average: other work on the machine skews every figure here.
std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  in >> one;
  return one.empty() ? "?" : one;
}

absl::Status FromGrpc(const grpc::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(what, ": ", s.error_message()));
}

// One blocking call with a deadline: `call(context)` makes it and returns its grpc::Status;
// a failure comes back as an absl::Status with the same code, its message after `what`.
template <typename Call>
absl::Status CallBefore(absl::Time deadline, absl::string_view what, Call call) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  return FromGrpc(call(&context), what);
}

// ------------------------------------------------------------------------------------------
// Signals: SIGINT/SIGTERM/SIGHUP are blocked in every thread and taken by one thread, which
// kills the servers, removes the work directory and exits 130.

std::atomic<pid_t> g_children[2] = {0, 0};
absl::Mutex g_cleanup_mu;
std::string g_cleanup_dir ABSL_GUARDED_BY(g_cleanup_mu);

void RemoveWorkDir() {
  absl::MutexLock lock(&g_cleanup_mu);
  if (g_cleanup_dir.empty()) return;
  std::error_code ignored;
  fs::remove_all(g_cleanup_dir, ignored);
  g_cleanup_dir.clear();
}

sigset_t StopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

void StartSignalThread() {
  std::thread([] {
    sigset_t set = StopSignals();
    int signal_number = 0;
    sigwait(&set, &signal_number);
    std::fprintf(stderr, "shuttle_bench_fleet: %s: stopping the servers\n",
                 strsignal(signal_number));
    for (auto& child : g_children) {
      const pid_t pid = child.load();
      if (pid > 0) ::kill(pid, SIGKILL);
    }
    RemoveWorkDir();
    std::_Exit(130);
  }).detach();
}

// ------------------------------------------------------------------------------------------
// The echo baseline server (--serve-echo): the controller's TLS (its server certificate, client
// certificates optional but verified against its CA), gRPC's default callback threads, the
// handler answering inline: what a plain gRPC service costs.

class EchoServiceImpl final : public EchoService::CallbackService {
  grpc::ServerUnaryReactor* Echo(grpc::CallbackServerContext* ctx, const EchoRequest* request,
                                 EchoResponse* response) override {
    response->set_payload(request->payload());
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

absl::Status WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << "grpc=" << port << "\n";
    if (!out.flush()) return absl::InternalError("cannot write " + tmp);
  }
  std::error_code error;
  fs::rename(tmp, path, error);
  if (error) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", error.message()));
  return absl::OkStatus();
}

absl::Status ServeEcho() {
  const std::string pki = absl::GetFlag(FLAGS_pki_dir);
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (pki.empty() || port_file.empty()) {
    return absl::InvalidArgumentError("--serve-echo needs --pki-dir and --port-file");
  }
  SHUTTLE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                           tls::LoadServerCredentials(pki, tls::ClientCertMode::kOptional));
  EchoServiceImpl service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", credentials, &port);
  controller::AddAgentKeepaliveArgs(builder);  // The controller's channel arguments.
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return absl::UnavailableError("cannot listen on 127.0.0.1:0");
  SHUTTLE_RETURN_IF_ERROR(WritePortFile(port_file, port));
  sigset_t set = StopSignals();
  int signal_number = 0;
  sigwait(&set, &signal_number);
  server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  server->Wait();
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------
// The benchmark.

// A line of progress (setup, each round), printed as it happens.
void Note(const std::string& line) {
  std::printf("  %s\n", line.c_str());
  std::fflush(stdout);
}

// What the run found; printed at the end.
struct Report {
  int agents = 0;
  int rounds = 0;
  std::vector<double> from_return;  // Seconds, one per agent and round.
  std::vector<double> from_call;
  std::vector<double> push_delay;  // Apply return -> push read by the agent.
  std::vector<double> ack_delay;   // Push read -> ACK sent.
  // The controller's own histograms over the measured intervals (rounds; Authorize runs), or
  // why they could not be read.
  PromHistogram push_ack;
  PromHistogram authorize;
  std::string histogram_error;
  struct Run {
    char what;  // 'A' or 'E'.
    LoadResult result;
    // CPU time (user + system) the serving process (controller or echo server) used during the
    // run: with the throughput, what one call costs the server. Less swayed by a noisy
    // neighbour than calls/s, which depends on how much CPU the server was given.
    double server_cpu_seconds = 0;
    // During echo runs: the controller's CPU time meanwhile, i.e. what serving the connected
    // agents alone costs it (keepalives, heartbeats), the background Authorize competes with.
    double controller_background_cpu_seconds = 0;
  };
  std::vector<Run> runs;
  std::string throughput_note;
  std::vector<std::string> failures;  // Whatever failed to run.
};

// Server CPU microseconds per call of one run (0 when nothing was measured).
double CpuMicrosPerCall(const Report::Run& run) {
  return run.result.calls > 0 ? run.server_cpu_seconds * 1e6 / static_cast<double>(run.result.calls)
                              : 0;
}

class FleetBench {
 public:
  explicit FleetBench(std::string work) : work_(std::move(work)), data_(work_ + "/controller") {}

  absl::Status Run(Report& report);
  // Stops the fleet and the servers; failures go into `report`.
  void Stop(Report& report);

 private:
  absl::Status StartServers();
  absl::Status Enroll(int n);
  absl::StatusOr<uint64_t> Apply(const std::string& source, Steady::time_point* called,
                                 Steady::time_point* returned);
  absl::StatusOr<PromHistogram> ScrapeHistogram(absl::string_view name);
  // Adds what the controller's histogram `name` observed between `scraped` and now to `total`,
  // sets `scraped` to now's, and returns the interval's observations; on failure notes why in
  // report.histogram_error.
  std::optional<PromHistogram> AddInterval(absl::string_view name,
                                           absl::StatusOr<PromHistogram>& scraped,
                                           PromHistogram& total, Report& report);
  absl::Status WaitControllerAt(uint64_t version, absl::Duration timeout);
  absl::Status Converge(Report& report);
  absl::Status Throughput(Report& report);

  const std::string work_;
  const std::string data_;
  std::unique_ptr<ChildProcess> controller_;
  std::unique_ptr<ChildProcess> echo_;
  std::string address_;
  int metrics_port_ = 0;
  std::string echo_address_;
  std::string ca_pem_;
  std::shared_ptr<grpc::Channel> admin_;
  std::vector<AgentIdentity> identities_;
  std::unique_ptr<SimFleet> fleet_;
  uint64_t version_ = 0;  // Fleet version after the last Apply.
};

absl::Status FleetBench::StartServers() {
  const Steady::time_point begin = Steady::now();
  std::vector<std::string> argv = {absl::GetFlag(FLAGS_controller),
                                   "--data-dir=" + data_,
                                   "--listen=127.0.0.1:0",
                                   "--metrics-listen=127.0.0.1:0",
                                   "--port-file=" + work_ + "/controller.ports",
                                   "--log-level=warning"};
  for (const std::string& arg : absl::GetFlag(FLAGS_controller_args)) argv.push_back(arg);
  SHUTTLE_ASSIGN_OR_RETURN(controller_, ChildProcess::Start(argv, work_ + "/controller.log"));
  g_children[0] = controller_->pid();
  const absl::Duration start_timeout =
      std::min(absl::Seconds(60), absl::GetFlag(FLAGS_setup_timeout));
  SHUTTLE_RETURN_IF_ERROR(controller_->WaitForFile(work_ + "/controller.ports", start_timeout));
  SHUTTLE_ASSIGN_OR_RETURN(auto ports, ReadPortFile(work_ + "/controller.ports"));
  if (ports["grpc"] == 0 || ports["metrics"] == 0) {
    return absl::InvalidArgumentError("the controller's port file lacks grpc= or metrics=");
  }
  address_ = absl::StrCat("127.0.0.1:", ports["grpc"]);
  metrics_port_ = ports["metrics"];

  const std::string pki = data_ + "/pki";
  SHUTTLE_ASSIGN_OR_RETURN(
      std::shared_ptr<grpc::ChannelCredentials> admin_credentials,
      tls::LoadClientCredentials(pki + "/" + tls::kCaCertFile, pki + "/" + tls::kAdminCertFile,
                                 pki + "/" + tls::kAdminKeyFile));
  admin_ = grpc::CreateChannel(address_, admin_credentials);

  // The echo server: this binary again, in its --serve-echo mode.
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  if (error) return absl::InternalError("cannot read /proc/self/exe: " + error.message());
  SHUTTLE_ASSIGN_OR_RETURN(echo_,
                           ChildProcess::Start({self.string(), "--serve-echo", "--pki-dir=" + pki,
                                                "--port-file=" + work_ + "/echo.ports"},
                                               work_ + "/echo.log"));
  g_children[1] = echo_->pid();
  SHUTTLE_RETURN_IF_ERROR(echo_->WaitForFile(work_ + "/echo.ports", start_timeout));
  SHUTTLE_ASSIGN_OR_RETURN(auto echo_ports, ReadPortFile(work_ + "/echo.ports"));
  echo_address_ = absl::StrCat("127.0.0.1:", echo_ports["grpc"]);
  Note(absl::StrFormat("controller pid %d on %s (metrics :%d), echo server pid %d on %s; up in %s",
                       controller_->pid(), address_, metrics_port_, echo_->pid(), echo_address_,
                       FormatMillis(Seconds(Steady::now() - begin))));
  return absl::OkStatus();
}

absl::Status FleetBench::Enroll(int n) {
  const Steady::time_point begin = Steady::now();
  const std::string pki = data_ + "/pki";
  SHUTTLE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> anonymous,
                           tls::LoadClientCredentials(pki + "/" + tls::kCaCertFile, "", ""));
  std::shared_ptr<grpc::Channel> enroll_channel = grpc::CreateChannel(address_, anonymous);
  auto fleet_stub = v1::FleetService::NewStub(admin_);
  auto agent_stub = v1::AgentService::NewStub(enroll_channel);

  identities_.resize(static_cast<size_t>(n));
  std::atomic<int> next{0};
  absl::Mutex mu;
  absl::Status first_error;
  const absl::Time deadline = absl::Now() + absl::GetFlag(FLAGS_setup_timeout);
  auto enroll_one = [&](int i) -> absl::Status {
    AgentIdentity& id = identities_[static_cast<size_t>(i)];
    id.host_id = absl::StrFormat("bench-host-%05d", i);
    v1::CreateTokenRequest token_request;
    token_request.set_host_id(id.host_id);
    v1::CreateTokenResponse token;
    SHUTTLE_RETURN_IF_ERROR(CallBefore(deadline, "FleetService.CreateToken", [&](auto* context) {
      return fleet_stub->CreateToken(context, token_request, &token);
    }));
    SHUTTLE_ASSIGN_OR_RETURN(tls::CsrAndKey csr, tls::CreateCsr(id.host_id));
    v1::EnrollRequest request;
    request.set_join_token(token.token());
    request.set_host_id(id.host_id);
    request.set_csr_pem(csr.csr_pem);
    v1::EnrollResponse response;
    SHUTTLE_RETURN_IF_ERROR(
        CallBefore(deadline, "AgentService.Enroll of " + id.host_id,
                   [&](auto* context) { return agent_stub->Enroll(context, request, &response); }));
    // The same checks the real agent makes (agent/client/enroll.h).
    SHUTTLE_RETURN_IF_ERROR(
        tls::VerifyCert(response.ca_pem(), response.certificate_pem(), tls::CertPurpose::kClient));
    SHUTTLE_ASSIGN_OR_RETURN(tls::PeerIdentity who,
                             tls::IdentityFromCertPem(response.certificate_pem()));
    if (who.common_name != id.host_id) {
      return absl::InternalError(
          absl::StrCat("the certificate for ", id.host_id, " names '", who.common_name, "'"));
    }
    id.key_pem = csr.key_pem;
    id.cert_pem = response.certificate_pem();
    if (i == 0) ca_pem_ = response.ca_pem();
    return absl::OkStatus();
  };
  std::vector<std::thread> workers;
  const int threads = std::clamp(absl::GetFlag(FLAGS_enroll_parallel), 1, n);
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      for (int i = next++; i < n; i = next++) {
        absl::Status status = enroll_one(i);
        if (!status.ok()) {
          absl::MutexLock lock(&mu);
          if (first_error.ok()) first_error = status;
          next = n;  // The others stop too.
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();
  SHUTTLE_RETURN_IF_ERROR(first_error);
  const double took = Seconds(Steady::now() - begin);
  Note(absl::StrFormat("enrolled %d agents (token + CSR + Enroll each) in %.1f s", n, took));
  return absl::OkStatus();
}

// The policy every round changes: `rules` tcp-connect rules from VM web to VM db; round r moves
// rule 0 to another port, so every host gets a one-policy delta.
std::string FleetPolicy(int rules, int round) {
  std::string yaml =
      "name: bench-fleet\n"
      "description: shuttle_bench_fleet's policy; one rule changes every round\n"
      "rules:\n";
  for (int i = 0; i < rules; ++i) {
    const int port = i == 0 ? 20000 + round : 30000 + i;
    absl::StrAppendFormat(&yaml,
                          "  - name: rule-%d\n"
                          "    subject: {vm: web}\n"
                          "    kind: tcp-connect\n"
                          "    object: {vm: db, address: \"127.0.0.1:%d\"}\n"
                          "    action: allow\n",
                          i, port);
  }
  return yaml;
}

// The `ask` rule the throughput load's Authorize calls name.
constexpr char kAskPolicy[] =
    "name: bench-ask\n"
    "description: shuttle_bench_fleet's ask rule, for the Authorize load\n"
    "rules:\n"
    "  - name: ask-db\n"
    "    subject: {vm: web}\n"
    "    kind: tcp-connect\n"
    "    object: {vm: db, address: \"127.0.0.1:5432\"}\n"
    "    action: ask\n";

absl::StatusOr<uint64_t> FleetBench::Apply(const std::string& source, Steady::time_point* called,
                                           Steady::time_point* returned) {
  auto stub = v1::PolicyService::NewStub(admin_);
  v1::ApplyRequest request;
  request.set_source(source);
  request.set_filename("bench.yaml");
  v1::ApplyResponse response;
  SHUTTLE_RETURN_IF_ERROR(CallBefore(
      absl::Now() + absl::GetFlag(FLAGS_round_timeout), "PolicyService.Apply", [&](auto* context) {
        if (called != nullptr) *called = Steady::now();
        grpc::Status status = stub->Apply(context, request, &response);
        if (returned != nullptr) *returned = Steady::now();
        return status;
      }));
  if (response.unchanged()) return absl::InternalError("PolicyService.Apply: unchanged");
  version_ = response.revision().fleet_version();
  return version_;
}

constexpr char kPushAckHistogram[] = "shuttle_controller_push_ack_seconds";
constexpr char kAuthorizeHistogram[] = "shuttle_controller_authorize_duration_seconds";

absl::StatusOr<PromHistogram> FleetBench::ScrapeHistogram(absl::string_view name) {
  SHUTTLE_ASSIGN_OR_RETURN(std::string page,
                           HttpGet("127.0.0.1", metrics_port_, "/metrics", absl::Seconds(10)));
  return ParsePromHistogram(page, name);
}

std::optional<PromHistogram> FleetBench::AddInterval(absl::string_view name,
                                                     absl::StatusOr<PromHistogram>& scraped,
                                                     PromHistogram& total, Report& report) {
  absl::StatusOr<PromHistogram> after = ScrapeHistogram(name);
  absl::StatusOr<PromHistogram> diff =
      !scraped.ok() ? scraped.status()
                    : (!after.ok() ? after.status() : Subtract(*after, *scraped));
  scraped = std::move(after);
  absl::Status added = diff.ok() ? Accumulate(total, *diff) : diff.status();
  if (!added.ok()) {
    report.histogram_error = absl::StrCat(name, ": ", added.message());
    return std::nullopt;
  }
  return *diff;
}

// Until the controller shows every simulated host at `version` (FleetService.ListHosts), so the
// histogram scraped next holds every ACK sent so far. The agents' ACKs are already sent when this
// is called; this is a bounded poll of another process's state (every 20 ms), not a measurement.
absl::Status FleetBench::WaitControllerAt(uint64_t version, absl::Duration timeout) {
  auto stub = v1::FleetService::NewStub(admin_);
  const absl::Time deadline = absl::Now() + timeout;
  size_t at = 0;
  while (true) {
    v1::ListHostsResponse hosts;
    SHUTTLE_RETURN_IF_ERROR(CallBefore(deadline, "FleetService.ListHosts", [&](auto* context) {
      return stub->ListHosts(context, {}, &hosts);
    }));
    at = 0;
    for (const v1::HostStatus& host : hosts.hosts()) {
      if (host.policy_version() >= version) ++at;
    }
    if (at >= identities_.size()) return absl::OkStatus();
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("the controller shows ", at, " of ",
                                                  identities_.size(), " hosts at version ", version,
                                                  " after ", absl::FormatDuration(timeout)));
}

absl::Status FleetBench::Converge(Report& report) {
  const int rounds = absl::GetFlag(FLAGS_rounds);
  const int rules = absl::GetFlag(FLAGS_rules);
  SHUTTLE_RETURN_IF_ERROR(Apply(kAskPolicy, nullptr, nullptr).status());
  SHUTTLE_RETURN_IF_ERROR(Apply(FleetPolicy(rules, 0), nullptr, nullptr).status());

  SimFleetOptions options;
  options.address = address_;
  options.ca_pem = ca_pem_;
  options.vms = {"web", "db"};
  options.heartbeat_interval = absl::GetFlag(FLAGS_heartbeat);
  options.keepalive_time = absl::GetFlag(FLAGS_keepalive);
  options.work =
      absl::GetFlag(FLAGS_agent_work) == "compile" ? SimAgentWork::kCompile : SimAgentWork::kAck;
  fleet_ = std::make_unique<SimFleet>(options, identities_);
  const Steady::time_point begin = Steady::now();
  fleet_->Start();
  SHUTTLE_RETURN_IF_ERROR(fleet_->WaitAllAcked(version_, absl::GetFlag(FLAGS_setup_timeout)));
  Note(absl::StrFormat(
      "%d policy streams open (one mTLS channel each); all ACKed version %d in %.2f s",
      report.agents, version_, Seconds(Steady::now() - begin)));
  SHUTTLE_RETURN_IF_ERROR(WaitControllerAt(version_, absl::Seconds(30)));

  absl::StatusOr<PromHistogram> before = ScrapeHistogram(kPushAckHistogram);
  const double controller_cpu = CpuSeconds(controller_->pid());
  const double bench_cpu = CpuSeconds(0);
  const Steady::time_point rounds_begin = Steady::now();
  for (int round = 1; round <= rounds; ++round) {
    Steady::time_point called, returned;
    SHUTTLE_ASSIGN_OR_RETURN(uint64_t version,
                             Apply(FleetPolicy(rules, round), &called, &returned));
    SHUTTLE_RETURN_IF_ERROR(fleet_->WaitAllAcked(version, absl::GetFlag(FLAGS_round_timeout)));
    SHUTTLE_RETURN_IF_ERROR(WaitControllerAt(version, absl::Seconds(30)));
    std::vector<double> from_return;
    for (const std::optional<AckTiming>& t : fleet_->Timings(version)) {
      // WaitAllAcked succeeded, so every agent has one.
      from_return.push_back(Seconds(t->acked - returned));
      report.from_return.push_back(Seconds(t->acked - returned));
      report.from_call.push_back(Seconds(t->acked - called));
      report.push_delay.push_back(Seconds(t->received - returned));
      report.ack_delay.push_back(Seconds(t->acked - t->received));
    }
    std::string histogram = "controller histogram unavailable";
    if (std::optional<PromHistogram> diff =
            AddInterval(kPushAckHistogram, before, report.push_ack, report)) {
      histogram = absl::StrFormat("controller: %.0f push-to-ACK, p99 <= %s", diff->count,
                                  FormatMillis(QuantileUpperBound(*diff, 0.99)));
    }
    const double p50 = Percentile(from_return, 0.5);
    const double last = from_return.empty() ? 0 : from_return.back();  // Sorted by Percentile.
    Note(absl::StrFormat(
        "round %d: version %d; Apply took %s; ACKs after Apply returned: p50 %s, last %s; %s",
        round, version, FormatMillis(Seconds(returned - called)), FormatMillis(p50),
        FormatMillis(last), histogram));
  }
  Note(absl::StrFormat(
      "the %d rounds took %.2f s; CPU meanwhile: controller %.2f s, this process (N agents) "
      "%.2f s; load average %s",
      rounds, Seconds(Steady::now() - rounds_begin),
      CpuSeconds(controller_->pid()) - controller_cpu, CpuSeconds(0) - bench_cpu, LoadAverage()));
  return absl::OkStatus();
}

absl::Status FleetBench::Throughput(Report& report) {
  const AgentIdentity& agent = identities_.front();
  const grpc::ChannelArguments args = AgentChannelArgs(absl::GetFlag(FLAGS_keepalive));
  auto authz_channel = grpc::CreateCustomChannel(address_, AgentCredentials(agent, ca_pem_), args);
  auto echo_channel =
      grpc::CreateCustomChannel(echo_address_, AgentCredentials(agent, ca_pem_), args);
  auto agent_stub = v1::AgentService::NewStub(authz_channel);
  auto echo_stub = EchoService::NewStub(echo_channel);

  // A standing answer for the ask rule, so Authorize finds one in the store (AnswerService);
  // without it the controller denies, which is a decision all the same.
  {
    auto answers = v1::AnswerService::NewStub(admin_);
    v1::PutAnswerRequest put;
    v1::StandingAnswer& answer = *put.mutable_answer();
    answer.set_subject_vm("web");
    answer.set_kind(v1::TCP_CONNECT);
    answer.set_object_vm("db");
    answer.set_object("127.0.0.1:5432");
    answer.set_verdict(v1::VERDICT_ALLOW);
    answer.set_note("shuttle_bench_fleet");
    v1::PutAnswerResponse put_response;
    absl::Status status =
        CallBefore(absl::Now() + absl::Seconds(10), "AnswerService.Put",
                   [&](auto* context) { return answers->Put(context, put, &put_response); });
    report.throughput_note = status.ok()
                                 ? "Authorize decides from a standing answer (AnswerService.Put)"
                                 : absl::StrCat("no standing answer (", status.message(),
                                                "); Authorize decides by default");
  }

  v1::AuthorizeRequest authorize;
  v1::Interaction& interaction = *authorize.mutable_interaction();
  interaction.set_host_id(agent.host_id);
  interaction.set_subject_vm("web");
  interaction.set_pid(4242);
  interaction.set_program("/usr/bin/bench-client");
  interaction.set_uid(1000);
  interaction.set_kind(v1::TCP_CONNECT);
  interaction.set_object_vm("db");
  interaction.set_object_name("127.0.0.1:5432");
  authorize.set_policy("bench-ask");
  authorize.set_rule("ask-db");
  authorize.set_policy_version(version_);
  EchoRequest echo;
  echo.set_payload(authorize.SerializeAsString());  // The same bytes on the wire.

  const int concurrency = absl::GetFlag(FLAGS_concurrency);
  // One request/response buffer per slot; they outlive every call (leaked below if a load could
  // not drain, since gRPC may still write into them).
  auto authz_responses = std::make_unique<std::vector<v1::AuthorizeResponse>>(concurrency);
  auto echo_responses = std::make_unique<std::vector<EchoResponse>>(concurrency);
  UnaryStarter call_authorize = [&](grpc::ClientContext* context, int slot,
                                    std::function<void(grpc::Status)> done) {
    agent_stub->async()->Authorize(context, &authorize, &(*authz_responses)[slot], std::move(done));
  };
  UnaryStarter call_echo = [&](grpc::ClientContext* context, int slot,
                               std::function<void(grpc::Status)> done) {
    echo_stub->async()->Echo(context, &echo, &(*echo_responses)[slot], std::move(done));
  };

  // One call each first: a server that can't answer is reported as such, not as 0 calls/s.
  const absl::Time probe_deadline = absl::Now() + absl::Seconds(10);
  {
    v1::AuthorizeResponse response;
    absl::Status status = CallBefore(probe_deadline, "AgentService.Authorize", [&](auto* context) {
      return agent_stub->Authorize(context, authorize, &response);
    });
    if (absl::IsUnimplemented(status)) {
      return absl::UnimplementedError(
          "AgentService.Authorize answered UNIMPLEMENTED: this controller does not decide "
          "`ask` yet (issue 4 point 4), so there is no Authorize throughput to measure");
    }
    SHUTTLE_RETURN_IF_ERROR(status);
    report.throughput_note += absl::StrCat("; the probe call's verdict: ",
                                           v1::Verdict_Name(response.decision().verdict()));
  }
  EchoResponse echoed;
  SHUTTLE_RETURN_IF_ERROR(CallBefore(probe_deadline, "EchoService.Echo", [&](auto* context) {
    return echo_stub->Echo(context, echo, &echoed);
  }));

  LoadOptions load;
  load.concurrency = concurrency;
  load.duration = absl::GetFlag(FLAGS_duration);
  LoadOptions warmup = load;
  warmup.duration = std::min(load.duration, absl::Seconds(1));
  absl::Status status;
  auto run = [&](char what, const LoadOptions& options, bool keep) {
    absl::StatusOr<PromHistogram> handler = ScrapeHistogram(kAuthorizeHistogram);
    const pid_t server = what == 'A' ? controller_->pid() : echo_->pid();
    const double cpu_before = CpuSeconds(server);
    const double controller_before = CpuSeconds(controller_->pid());
    LoadResult result = RunClosedLoop(what == 'A' ? call_authorize : call_echo, options);
    const double server_cpu = CpuSeconds(server) - cpu_before;
    const double background = what == 'E' ? CpuSeconds(controller_->pid()) - controller_before : 0;
    if (what == 'A' && keep) AddInterval(kAuthorizeHistogram, handler, report.authorize, report);
    if (!result.drained) {
      (void)authz_responses.release();
      (void)echo_responses.release();
      status = absl::DeadlineExceededError(
          absl::StrCat(what == 'A' ? "Authorize" : "Echo", " calls did not finish in time"));
    } else if (result.errors > 0) {
      status =
          absl::Status(static_cast<absl::StatusCode>(result.first_error_code),
                       absl::StrCat(what == 'A' ? "AgentService.Authorize" : "Echo", ": ",
                                    result.errors, " calls failed; first: ", result.first_error));
    }
    if (keep) report.runs.push_back({what, result, server_cpu, background});
    return status.ok();
  };
  // Warm both up, then A,E pairs: each pair's ratio compares runs seconds apart, so a noisy
  // neighbour that comes and goes moves a pair, not the median of the pairs.
  if (!run('A', warmup, false) || !run('E', warmup, false)) return status;
  for (int pair = 0; pair < absl::GetFlag(FLAGS_pairs); ++pair) {
    if (!run('A', load, true) || !run('E', load, true)) return status;
  }
  return absl::OkStatus();
}

absl::Status FleetBench::Run(Report& report) {
  SHUTTLE_RETURN_IF_ERROR(StartServers());
  SHUTTLE_RETURN_IF_ERROR(Enroll(report.agents));
  SHUTTLE_RETURN_IF_ERROR(Converge(report));
  if (!absl::GetFlag(FLAGS_skip_throughput)) {
    absl::Status status = Throughput(report);
    if (!status.ok()) report.failures.push_back(std::string(status.message()));
  }
  return absl::OkStatus();
}

void FleetBench::Stop(Report& report) {
  if (fleet_ != nullptr) {
    absl::Status stopped = fleet_->Stop();
    if (!stopped.ok()) {
      report.failures.push_back(std::string(stopped.message()));
      (void)fleet_.release();  // gRPC may still call into it.
    }
  }
  for (std::unique_ptr<ChildProcess>* child : {&echo_, &controller_}) {
    if (*child == nullptr) continue;
    // A server that ended by itself, or failed to stop cleanly, is a failure of its own unless
    // another was reported already (e.g. it died or hung during start-up).
    const bool ended_early = (*child)->Exited();
    absl::StatusOr<int> exit = (*child)->Stop(absl::Seconds(15));
    if (!exit.ok()) {
      report.failures.push_back(std::string(exit.status().message()));
    } else if (ended_early && report.failures.empty()) {
      report.failures.push_back(absl::StrCat((*child)->name(), " ended during the run (status ",
                                             *exit, "); its log ends:\n", (*child)->LogTail(10)));
    } else if (!ended_early && *exit != 0 && report.failures.empty()) {
      report.failures.push_back(absl::StrCat((*child)->name(), " exited with status ", *exit,
                                             " after SIGTERM; its log ends:\n",
                                             (*child)->LogTail(10)));
    }
  }
  g_children[0] = 0;
  g_children[1] = 0;
}

void PrintResult(const std::string& metric, const std::string& value, const std::string& target,
                 const char* verdict) {
  std::printf("RESULT %-32s %14s   %-12s %s\n", metric.c_str(), value.c_str(), target.c_str(),
              verdict);
}

void PrintReport(Report& report) {
  const double target = absl::ToDoubleSeconds(absl::GetFlag(FLAGS_p99_target));
  const std::string target_text = "<= " + FormatMillis(target);
  std::printf("\n");
  // Sorted now, so back() is the maximum below.
  std::sort(report.from_return.begin(), report.from_return.end());
  std::sort(report.from_call.begin(), report.from_call.end());
  if (!report.from_return.empty()) {
    std::printf(
        "Convergence: time until each agent sent its ACK of the new version, %zu samples (%d "
        "agents x %d rounds)\n",
        report.from_return.size(), report.agents, report.rounds);
    std::printf("  from Apply's return: p50 %s, p99 %s, max %s\n",
                FormatMillis(Percentile(report.from_return, 0.5)).c_str(),
                FormatMillis(Percentile(report.from_return, 0.99)).c_str(),
                FormatMillis(report.from_return.back()).c_str());
    std::printf("  from Apply's call:   p50 %s, p99 %s, max %s\n",
                FormatMillis(Percentile(report.from_call, 0.5)).c_str(),
                FormatMillis(Percentile(report.from_call, 0.99)).c_str(),
                FormatMillis(report.from_call.back()).c_str());
    std::printf(
        "  of which Apply's return -> push read by the agent: p50 %s, p99 %s; "
        "push read -> ACK sent: p50 %s, p99 %s\n",
        FormatMillis(Percentile(report.push_delay, 0.5)).c_str(),
        FormatMillis(Percentile(report.push_delay, 0.99)).c_str(),
        FormatMillis(Percentile(report.ack_delay, 0.5)).c_str(),
        FormatMillis(Percentile(report.ack_delay, 0.99)).c_str());
    if (report.push_ack.count > 0) {
      const PromHistogram& h = report.push_ack;
      std::printf(
          "  controller's shuttle_controller_push_ack_seconds over the rounds: %.0f ACKs, "
          "mean %s, p50 <= %s, p99 <= %s (bucket bounds)\n",
          h.count, FormatMillis(h.count > 0 ? h.sum / h.count : 0).c_str(),
          FormatMillis(QuantileUpperBound(h, 0.5)).c_str(),
          FormatMillis(QuantileUpperBound(h, 0.99)).c_str());
    }
  }
  if (!report.histogram_error.empty()) {
    std::printf("  controller histogram unavailable: %s\n", report.histogram_error.c_str());
  }
  double authz = 0, echo = 0;
  int authz_runs = 0, echo_runs = 0;
  if (!report.runs.empty()) {
    std::printf("\nAuthorize vs echo: %d outstanding calls, %s per run, same client; %s\n",
                absl::GetFlag(FLAGS_concurrency),
                absl::FormatDuration(absl::GetFlag(FLAGS_duration)).c_str(),
                report.throughput_note.c_str());
    for (const Report::Run& run : report.runs) {
      std::printf(
          "  %-9s %9.0f calls/s  (%llu calls; latency p50 %s, p99 %s; server CPU %.1f us/call)\n",
          run.what == 'A' ? "Authorize" : "Echo", run.result.calls_per_second,
          static_cast<unsigned long long>(run.result.calls),
          FormatMillis(run.result.p50_seconds).c_str(),
          FormatMillis(run.result.p99_seconds).c_str(), CpuMicrosPerCall(run));
      const double window = absl::ToDoubleSeconds(absl::GetFlag(FLAGS_duration));
      if (run.what == 'E' && window > 0) {
        std::printf(
            "            controller meanwhile (agents connected, no calls): %.1f%% of a core\n",
            100 * run.controller_background_cpu_seconds / window);
      }
      (run.what == 'A' ? authz : echo) += run.result.calls_per_second;
      ++(run.what == 'A' ? authz_runs : echo_runs);
    }
    if (report.authorize.count > 0) {
      // Time inside the handler vs per call: what the rest (gRPC, TLS, interceptors) costs.
      const PromHistogram& h = report.authorize;
      std::printf(
          "  the controller's own %s over the Authorize runs: %.0f calls, mean %s, "
          "p99 <= %s\n",
          kAuthorizeHistogram, h.count, FormatMillis(h.sum / h.count).c_str(),
          FormatMillis(QuantileUpperBound(h, 0.99)).c_str());
    }
  }
  std::printf("\n");
  if (!report.from_return.empty()) {
    const double p99_return = Percentile(report.from_return, 0.99);
    const double p99_call = Percentile(report.from_call, 0.99);
    const std::string n = absl::StrCat("N=", report.agents);
    PrintResult("convergence_p50 (" + n + ")", FormatMillis(Percentile(report.from_return, 0.5)),
                "-", "");
    PrintResult("convergence_p99 (" + n + ")", FormatMillis(p99_return), target_text,
                p99_return <= target ? "PASS" : "MISS");
    PrintResult("convergence_p99_from_call (" + n + ")", FormatMillis(p99_call), target_text,
                p99_call <= target ? "PASS" : "MISS");
    PrintResult("convergence_max (" + n + ")", FormatMillis(report.from_return.back()), "-", "");
  }
  if (authz_runs > 0 && echo_runs > 0) {
    authz /= authz_runs;
    echo /= echo_runs;
    // Runs come as (A, E) pairs: the ratio is the median of the pairs' ratios.
    std::vector<double> pair_ratios;
    std::vector<double> cpu_ratios;  // Echo's server CPU per call / Authorize's, per pair.
    for (size_t i = 0; i + 1 < report.runs.size(); i += 2) {
      const Report::Run& a = report.runs[i];
      const Report::Run& e = report.runs[i + 1];
      if (a.what == 'A' && e.what == 'E' && e.result.calls_per_second > 0) {
        pair_ratios.push_back(a.result.calls_per_second / e.result.calls_per_second);
        if (CpuMicrosPerCall(a) > 0) {
          cpu_ratios.push_back(CpuMicrosPerCall(e) / CpuMicrosPerCall(a));
        }
      }
    }
    const double ratio = pair_ratios.empty() ? 0 : Percentile(pair_ratios, 0.5);
    const double want = absl::GetFlag(FLAGS_ratio_target);
    PrintResult("authorize_calls_per_s", absl::StrFormat("%.0f", authz), "-", "");
    PrintResult("echo_calls_per_s", absl::StrFormat("%.0f", echo), "-", "");
    PrintResult("authorize_echo_ratio_of_means",
                absl::StrFormat("%.3f", echo > 0 ? authz / echo : 0), "-", "");
    PrintResult(absl::StrCat("authorize_echo_ratio (median of ", pair_ratios.size(), " pairs)"),
                absl::StrFormat("%.3f", ratio), absl::StrFormat(">= %.2f", want),
                ratio >= want ? "PASS" : "MISS");
    if (!cpu_ratios.empty()) {
      // Informational: how the servers' CPU cost per call compares (echo / Authorize); on an
      // idle machine the throughput ratio tends to it.
      PrintResult(absl::StrCat("server_cpu_per_call_echo_over_authorize (median of ",
                               cpu_ratios.size(), " pairs)"),
                  absl::StrFormat("%.3f", Percentile(cpu_ratios, 0.5)), "-", "");
    }
  }
  for (const std::string& failure : report.failures) {
    std::printf("FAILED: %s\n", failure.c_str());
  }
  std::fflush(stdout);
}

absl::Status CheckFlags() {
  if (absl::GetFlag(FLAGS_controller).empty()) {
    return absl::InvalidArgumentError(
        "--controller PATH (the shuttle-controller binary) is required");
  }
  if (::access(absl::GetFlag(FLAGS_controller).c_str(), X_OK) != 0) {
    return absl::InvalidArgumentError("--controller " + absl::GetFlag(FLAGS_controller) +
                                      " is not an executable file");
  }
  if (absl::GetFlag(FLAGS_agents) < 1 || absl::GetFlag(FLAGS_agents) > 20000) {
    return absl::InvalidArgumentError("--agents must be 1..20000");
  }
  if (absl::GetFlag(FLAGS_rounds) < 1) return absl::InvalidArgumentError("--rounds must be >= 1");
  if (absl::GetFlag(FLAGS_rules) < 1) return absl::InvalidArgumentError("--rules must be >= 1");
  if (absl::GetFlag(FLAGS_concurrency) < 1 || absl::GetFlag(FLAGS_concurrency) > 10000) {
    return absl::InvalidArgumentError("--concurrency must be 1..10000");
  }
  if (absl::GetFlag(FLAGS_duration) <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--duration must be positive");
  }
  if (absl::GetFlag(FLAGS_pairs) < 1 || absl::GetFlag(FLAGS_pairs) > 100) {
    return absl::InvalidArgumentError("--pairs must be 1..100");
  }
  if (absl::GetFlag(FLAGS_heartbeat) <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--heartbeat must be positive");
  }
  const std::string work = absl::GetFlag(FLAGS_agent_work);
  if (work != "ack" && work != "compile") {
    return absl::InvalidArgumentError("--agent-work must be 'ack' or 'compile', not '" + work +
                                      "'");
  }
  return absl::OkStatus();
}

// Each agent stream is a socket on both ends: make room (the controller inherits the limit).
void RaiseFileLimit(int agents) {
  rlimit limit;
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  const rlim_t want = static_cast<rlim_t>(agents) * 2 + 1024;
  if (limit.rlim_cur >= want) return;
  limit.rlim_cur = std::min(want, limit.rlim_max);
  ::setrlimit(RLIMIT_NOFILE, &limit);
  if (limit.rlim_cur < want) {
    std::fprintf(stderr, "warning: open files limited to %llu; %d agents need about %llu\n",
                 static_cast<unsigned long long>(limit.rlim_cur), agents,
                 static_cast<unsigned long long>(want));
  }
}

int BenchMain() {
  if (absl::Status flags = CheckFlags(); !flags.ok()) {
    std::fprintf(stderr, "shuttle_bench_fleet: %s\n", std::string(flags.message()).c_str());
    return 2;
  }
  Report report;
  report.agents = absl::GetFlag(FLAGS_agents);
  report.rounds = absl::GetFlag(FLAGS_rounds);
  RaiseFileLimit(report.agents);

  std::string base = absl::GetFlag(FLAGS_work_dir);
  if (base.empty()) base = getenv("TMPDIR") != nullptr ? getenv("TMPDIR") : "/tmp";
  std::string pattern = base + "/shuttle-bench-fleet.XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "shuttle_bench_fleet: cannot create a directory in %s: %s\n", base.c_str(),
                 std::strerror(errno));
    return 1;
  }
  const std::string work = pattern;
  const bool keep = absl::GetFlag(FLAGS_keep_work_dir);
  if (!keep) {
    absl::MutexLock lock(&g_cleanup_mu);
    g_cleanup_dir = work;
  }
  StartSignalThread();

  const std::string throughput =
      absl::GetFlag(FLAGS_skip_throughput)
          ? std::string("no throughput runs")
          : absl::StrFormat("Authorize vs echo: C=%d, D=%s", absl::GetFlag(FLAGS_concurrency),
                            absl::FormatDuration(absl::GetFlag(FLAGS_duration)));
  std::printf(
      "shuttle_bench_fleet: N=%d agents, K=%d policy changes, agents %s; %s; load average "
      "%s; work dir %s\n",
      report.agents, report.rounds,
      absl::GetFlag(FLAGS_agent_work) == "compile" ? "compile every push" : "ACK at once",
      throughput.c_str(), LoadAverage().c_str(), work.c_str());
  std::fflush(stdout);
  {
    FleetBench bench(work);
    absl::Status status = bench.Run(report);
    if (!status.ok()) report.failures.insert(report.failures.begin(), status.ToString());
    bench.Stop(report);
  }
  PrintReport(report);
  if (keep) {
    std::printf("work dir kept: %s\n", work.c_str());
  } else {
    RemoveWorkDir();
  }
  return report.failures.empty() ? 0 : 1;
}

}  // namespace
}  // namespace shuttle::bench

int main(int argc, char** argv) {
  // Block the stop signals before any thread starts: only the signal thread (or, in the echo
  // mode, sigwait) takes them.
  sigset_t stop = shuttle::bench::StopSignals();
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  absl::SetProgramUsageMessage(
      "Fleet benchmark (issue 4 point 9): convergence of N simulated agents after a policy "
      "change, and Authorize throughput against a plain gRPC echo service.\n"
      "  shuttle_bench_fleet --controller PATH [--agents N] [--rounds K] [--concurrency C] "
      "[--duration D]");
  std::vector<std::string> normalized = shuttle::NormalizeFlagNames(argc, argv);
  std::vector<char*> normalized_argv = shuttle::FlagArgv(normalized);
  absl::ParseCommandLine(static_cast<int>(normalized.size()), normalized_argv.data());
  shuttle::ConfigureRuntimeForProduction();
  if (absl::GetFlag(FLAGS_serve_echo)) {
    absl::Status status = shuttle::bench::ServeEcho();
    if (!status.ok()) {
      std::fprintf(stderr, "shuttle_bench_fleet --serve-echo: %s\n",
                   std::string(status.message()).c_str());
      return 1;
    }
    return 0;
  }
  return shuttle::bench::BenchMain();
}
