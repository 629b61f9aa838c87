// End-to-end test of starting services on demand (service_starter.h) with real collaborators:
// VMs (VmManager, shuttle-vm-init), the seccomp interception source serving the service's
// listener, shuttle-launch, the broker probing readiness inside the VM, and the compiled policy
// with its audit. Needs root (namespaces, seccomp); fails, never skips, without it.
#include "agent/deps/service_starter.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "agent/audit/audit_testing.h"
#include "agent/intercept/fakes.h"
#include "agent/intercept/intercept_handler.h"
#include "agent/intercept/process_access.h"
#include "agent/intercept/seccomp_source.h"
#include "agent/vm/proc_util.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace shuttle::agent::deps {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::HasSubstr;

class VmsResolver final : public intercept::VmResolver {
 public:
  explicit VmsResolver(const VmManager& vms) : vms_(vms) {}
  std::optional<std::string> VmOfPid(pid_t pid) const override { return vms_.VmOfPid(pid); }

 private:
  const VmManager& vms_;
};

// The outcome of one StartFor, waited for by the test.
struct Outcome {
  absl::Notification done;
  absl::Status status;
  broker::OnDemandStarter::Done Callback() {
    return [this](absl::Status s) {
      status = std::move(s);
      done.Notify();
    };
  }
  absl::Status Wait() {
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)))
        << "StartFor never answered";
    return status;
  }
};

constexpr char kPolicy[] = R"(name: deps-test
rules:
  - name: web-needs-echo
    subject: { vm: web }
    kind: depend
    object: { vm: db, service: echo }
    action: allow
  - name: web-needs-slow
    subject: { vm: web }
    kind: depend
    object: { vm: db, service: slow }
    action: allow
  - name: web-needs-broken
    subject: { vm: web }
    kind: depend
    object: { vm: db, service: broken }
    action: allow
)";

// One set of VMs and collaborators for the whole suite (creating VMs takes a while).
class ServiceStarterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(::geteuid(), 0u) << "service_starter_test creates VMs and seccomp filters: run it "
                                  "as root (CI does)";
    char tmpl[] = "/var/tmp/shuttle-deps-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    env_ = new Env;
    env_->root = tmpl;
    ASSERT_EQ(::chmod(tmpl, 0755), 0);
    // The build tree may live under /tmp (a CI clone does), which every VM has private: the
    // service's binary must be where VM db sees it.
    env_->echo_server = env_->root + "/echo-server";
    std::error_code copied;
    std::filesystem::copy_file(SHUTTLE_ECHO_SERVER_PATH, env_->echo_server, copied);
    ASSERT_FALSE(copied) << "copying " << SHUTTLE_ECHO_SERVER_PATH << ": " << copied.message();
    ASSERT_EQ(::chmod(env_->echo_server.c_str(), 0755), 0);
    VmManagerOptions vm_options;
    vm_options.state_dir = env_->root + "/vms";
    vm_options.init_binary = SHUTTLE_VM_INIT_PATH;
    vm_options.hidden_paths = {env_->root + "/agent"};
    ASSERT_EQ(::mkdir((env_->root + "/agent").c_str(), 0700), 0);
    SHUTTLE_ASSERT_OK_AND_ASSIGN(env_->vms, VmManager::Open(vm_options));
    ASSERT_THAT(env_->vms->Create("db"), IsOk());
    ASSERT_THAT(env_->vms->Create("web"), IsOk());
    SHUTTLE_ASSERT_OK_AND_ASSIGN(env_->source, intercept::SeccompInterceptionSource::Create({}));
    env_->resolver = std::make_unique<VmsResolver>(*env_->vms);
    env_->handler = std::make_unique<intercept::InterceptHandler>(
        env_->memory, env_->fds, *env_->resolver, env_->continue_all);
    env_->loop = std::thread([] { (void)env_->source->Run(*env_->handler); });
    SHUTTLE_ASSERT_OK_AND_ASSIGN(env_->broker, broker::Broker::Create({}));

    const std::string policy_path = env_->root + "/agent/policy.yaml";
    std::ofstream(policy_path) << kPolicy;
    SHUTTLE_ASSERT_OK_AND_ASSIGN(auto compiled, LoadPolicyFile(policy_path, "", 1));
    env_->policy.Set(std::move(compiled));
    env_->decider = std::make_unique<PolicyDecider>(env_->policy, env_->metrics);
    env_->decider->set_audit_sink(&env_->audit);

    SHUTTLE_ASSERT_OK_AND_ASSIGN(env_->registry,
                                 ServiceRegistry::Open(env_->root + "/agent/services.json"));
    ASSERT_THAT(env_->registry->Add(Service("echo", "/run/echo.sock", {"--delay-ms", "300"})),
                IsOk());
    v1::LocalService slow = Service("slow", "/run/slow.sock", {"--never-listen"});
    slow.mutable_start_timeout()->set_seconds(2);
    ASSERT_THAT(env_->registry->Add(slow), IsOk());
    v1::LocalService broken = Service("broken", "/run/broken.sock", {});
    broken.set_argv(0, "/nonexistent/echo-server");
    ASSERT_THAT(env_->registry->Add(broken), IsOk());

    ServiceStarterOptions options;
    options.launcher_path = SHUTTLE_LAUNCH_PATH;
    options.log_dir = env_->root + "/agent/services";
    env_->starter = std::make_unique<ServiceStarter>(options, *env_->registry, *env_->vms,
                                                     *env_->source, *env_->broker, env_->policy,
                                                     *env_->decider, env_->metrics);
  }

  static void TearDownTestSuite() {
    if (env_ == nullptr) return;
    env_->starter.reset();
    if (env_->source != nullptr) env_->source->Stop();
    if (env_->loop.joinable()) env_->loop.join();
    if (env_->vms != nullptr) {
      for (const VmInfo& vm : env_->vms->List()) EXPECT_THAT(env_->vms->Destroy(vm.name), IsOk());
    }
    env_->broker.reset();
    env_->source.reset();
    env_->vms.reset();
    EXPECT_THAT(vm_internal::RemoveTree(env_->root), IsOk());
    delete env_;
    env_ = nullptr;
  }

  static v1::LocalService Service(const std::string& name, const std::string& path,
                                  std::vector<std::string> args) {
    v1::LocalService service;
    service.set_vm("db");
    service.set_name(name);
    service.add_argv(env_->echo_server);
    service.add_argv(path);
    for (const std::string& arg : args) service.add_argv(arg);
    service.set_ready("unix:" + path);
    return service;
  }

  static broker::BrokerRequest UnixPath(const std::string& path) {
    return broker::UnixPathRequest{path, SOCK_STREAM};
  }

  // Connects to `path` in db through the broker and checks that the echo server answers.
  static void ExpectEchoes(const std::string& path) {
    SHUTTLE_ASSERT_OK_AND_ASSIGN(int pidfd, env_->vms->InitPidfd("db"));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo db, env_->vms->Get("db"));
    SHUTTLE_ASSERT_OK_AND_ASSIGN(
        broker::BrokerTargetPtr target,
        broker::BrokerTarget::ForVm("db", db.init_pid, intercept::UniqueFd(pidfd)));
    broker::OpenOptions options;
    options.deadline = absl::Now() + absl::Seconds(5);
    SHUTTLE_ASSERT_OK_AND_ASSIGN(intercept::UniqueFd fd,
                                 env_->broker->OpenAndWait(target, UnixPath(path), options));
    ASSERT_EQ(::write(fd.get(), "ping", 4), 4);
    char buf[8] = {};
    ASSERT_EQ(::read(fd.get(), buf, sizeof(buf)), 4);
    EXPECT_EQ(std::string(buf, 4), "ping");
  }

  // Polls the registry's run state (the supervisor's report) until `pred` holds or 15 s pass.
  template <typename Pred>
  static ServiceRunState AwaitState(const std::string& name, Pred pred) {
    const absl::Time until = absl::Now() + absl::Seconds(15);
    ServiceRunState state = env_->registry->RunStateOf("db", name);
    while (!pred(state) && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(20));
      state = env_->registry->RunStateOf("db", name);
    }
    return state;
  }

  static std::string Metrics() {
    return prometheus::TextSerializer().Serialize(env_->metrics.Collect());
  }

  struct Env {
    std::string root;
    std::string echo_server;  // A copy of the test server under root, visible in the VMs.
    std::unique_ptr<VmManager> vms;
    std::unique_ptr<intercept::SeccompInterceptionSource> source;
    intercept::RealProcessMemory memory;
    intercept::RealProcessFds fds;
    std::unique_ptr<VmsResolver> resolver;
    intercept::RecordingDecider continue_all;
    std::unique_ptr<intercept::InterceptHandler> handler;
    std::thread loop;
    std::unique_ptr<broker::Broker> broker;
    prometheus::Registry metrics;
    PolicyHolder policy;
    testing::RecordingSink audit;
    std::unique_ptr<PolicyDecider> decider;
    std::unique_ptr<ServiceRegistry> registry;
    std::unique_ptr<ServiceStarter> starter;
  };
  static Env* env_;
};

ServiceStarterTest::Env* ServiceStarterTest::env_ = nullptr;

TEST_F(ServiceStarterTest, ConcurrentCallersShareOneStartAndWaitForReadiness) {
  ASSERT_EQ(env_->registry->RunStateOf("db", "echo").starts, 0u);
  Outcome first;
  Outcome second;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  const absl::Time asked = absl::Now();
  std::thread a([&] {
    env_->starter->StartFor("web", ::getpid(), "db", UnixPath("/run/echo.sock"), deadline,
                            first.Callback());
  });
  std::thread b([&] {
    env_->starter->StartFor("web", ::getpid(), "db", UnixPath("/run/echo.sock"), deadline,
                            second.Callback());
  });
  a.join();
  b.join();
  EXPECT_THAT(first.Wait(), IsOk());
  EXPECT_THAT(second.Wait(), IsOk());
  // The server listens only after its 300 ms delay: OK means readiness was awaited.
  EXPECT_GE(absl::Now() - asked, absl::Milliseconds(300));
  ExpectEchoes("/run/echo.sock");
  const ServiceRunState state = env_->registry->RunStateOf("db", "echo");
  EXPECT_EQ(state.starts, 1u) << "two callers, one start";
  EXPECT_EQ(state.phase, ServiceRunState::Phase::kRunning);
  // A must: kill(0, ...) below would signal this test's whole process group (ctest, make).
  ASSERT_GT(state.pid, 0);

  // Already running: answered without a second start.
  Outcome third;
  env_->starter->StartFor("web", ::getpid(), "db", UnixPath("/run/echo.sock"),
                          absl::Now() + absl::Seconds(10), third.Callback());
  EXPECT_THAT(third.Wait(), IsOk());
  EXPECT_EQ(env_->registry->RunStateOf("db", "echo").starts, 1u);

  const std::string metrics = Metrics();
  EXPECT_THAT(
      metrics,
      HasSubstr(R"(shuttle_agent_service_starts_total{result="ready",service="echo",vm="db"} 1)"));
  EXPECT_THAT(metrics, HasSubstr("shuttle_agent_services_running"));

  // Each decision was audited as a cross-VM `depend` allowed by the rule.
  bool audited = false;
  for (const v1::AuditRecord& record : env_->audit.records()) {
    if (record.interaction().kind() == v1::DEPEND && record.interaction().object_name() == "echo") {
      audited = true;
      EXPECT_EQ(record.interaction().subject_vm(), "web");
      EXPECT_EQ(record.interaction().object_vm(), "db");
      EXPECT_EQ(record.decision().verdict(), v1::VERDICT_ALLOW);
      EXPECT_EQ(record.decision().scope(), v1::CROSS_VM);
    }
  }
  EXPECT_TRUE(audited);

  // A service that exits is reaped, and the next connect starts it again.
  ::kill(state.pid, SIGTERM);
  ServiceRunState ended = AwaitState(
      "echo", [](const ServiceRunState& s) { return s.phase == ServiceRunState::Phase::kStopped; });
  EXPECT_EQ(ended.phase, ServiceRunState::Phase::kStopped);
  EXPECT_EQ(ended.last_exit, "signal 15");
  Outcome again;
  env_->starter->StartFor("web", ::getpid(), "db", UnixPath("/run/echo.sock"),
                          absl::Now() + absl::Seconds(20), again.Callback());
  EXPECT_THAT(again.Wait(), IsOk());
  EXPECT_EQ(env_->registry->RunStateOf("db", "echo").starts, 2u);
  ExpectEchoes("/run/echo.sock");
}

TEST_F(ServiceStarterTest, NoDependRuleRefusesAndAudits) {
  const size_t audited_before = env_->audit.records().size();
  Outcome denied;
  env_->starter->StartFor("other", ::getpid(), "db", UnixPath("/run/slow.sock"),
                          absl::Now() + absl::Seconds(5), denied.Callback());
  EXPECT_THAT(denied.Wait(), StatusIs(absl::StatusCode::kPermissionDenied,
                                      HasSubstr("no depend rule lets vm other depend on service "
                                                "slow of vm db")));
  EXPECT_EQ(env_->registry->RunStateOf("db", "slow").starts, 0u) << "nothing started";
  std::vector<v1::AuditRecord> records = env_->audit.records();
  ASSERT_GT(records.size(), audited_before);
  const v1::AuditRecord& record = records.back();
  EXPECT_EQ(record.interaction().kind(), v1::DEPEND);
  EXPECT_EQ(record.interaction().subject_vm(), "other");
  EXPECT_EQ(record.interaction().object_name(), "slow");
  EXPECT_EQ(record.decision().verdict(), v1::VERDICT_DENY);
  EXPECT_THAT(Metrics(), HasSubstr(R"(shuttle_agent_on_demand_total{result="denied"} 1)"));
}

TEST_F(ServiceStarterTest, UnregisteredAddressIsNotFound) {
  Outcome none;
  env_->starter->StartFor("web", ::getpid(), "db", UnixPath("/run/nothing.sock"),
                          absl::Now() + absl::Seconds(5), none.Callback());
  EXPECT_THAT(none.Wait(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no service of vm db is ready at")));
  Outcome other_vm;
  env_->starter->StartFor("db", ::getpid(), "web", UnixPath("/run/echo.sock"),
                          absl::Now() + absl::Seconds(5), other_vm.Callback());
  EXPECT_THAT(other_vm.Wait(), StatusIs(absl::StatusCode::kNotFound, HasSubstr("vm web")));
}

TEST_F(ServiceStarterTest, NotReadyByTheDeadlineIsDeadlineExceededThenStopped) {
  Outcome caller;
  const absl::Time asked = absl::Now();
  env_->starter->StartFor("web", ::getpid(), "db", UnixPath("/run/slow.sock"),
                          asked + absl::Milliseconds(500), caller.Callback());
  EXPECT_THAT(caller.Wait(),
              StatusIs(absl::StatusCode::kDeadlineExceeded,
                       HasSubstr("db/slow was not ready by the connect's deadline")));
  EXPECT_LT(absl::Now() - asked, absl::Seconds(2)) << "answered at the caller's deadline";
  // Past its own 2 s start timeout the service is stopped.
  ServiceRunState state = AwaitState("slow", [](const ServiceRunState& s) {
    return s.phase == ServiceRunState::Phase::kStopped && s.starts == 1;
  });
  EXPECT_EQ(state.phase, ServiceRunState::Phase::kStopped);
  EXPECT_EQ(state.last_exit, "signal 15");
  EXPECT_THAT(
      Metrics(),
      HasSubstr(
          R"(shuttle_agent_service_starts_total{result="not_ready",service="slow",vm="db"} 1)"));
}

TEST_F(ServiceStarterTest, AServiceThatCannotStartFailsItsCallers) {
  Outcome caller;
  env_->starter->StartFor("web", ::getpid(), "db", UnixPath("/run/broken.sock"),
                          absl::Now() + absl::Seconds(10), caller.Callback());
  absl::Status status = caller.Wait();
  EXPECT_FALSE(status.ok());
  EXPECT_FALSE(absl::IsDeadlineExceeded(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("db/broken"));
  ServiceRunState state = AwaitState("broken", [](const ServiceRunState& s) {
    return s.phase == ServiceRunState::Phase::kStopped;
  });
  EXPECT_EQ(state.phase, ServiceRunState::Phase::kStopped);
  EXPECT_FALSE(state.last_exit.empty());
}

}  // namespace
}  // namespace shuttle::agent::deps
