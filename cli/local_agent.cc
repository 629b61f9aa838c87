#include "cli/local_agent.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/output.h"
#include "common/seqpacket.h"
#include "common/status_macros.h"
#include "google/protobuf/util/time_util.h"
#include "shuttle/v1/local.pb.h"

extern char** environ;

namespace shuttle::cli {
namespace {

// Closes a descriptor when it goes out of scope.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string SocketPath(const Invocation& inv) {
  if (!inv.global.agent_socket.empty()) return inv.global.agent_socket;
  const char* env = std::getenv(kAgentSocketEnv);
  return env != nullptr && *env != '\0' ? env : kDefaultAgentSocket;
}

absl::Status FromResponse(const v1::LocalResponse& response) {
  if (response.code() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(response.code()), response.message());
}

absl::StatusOr<v1::LocalResponse> Call(const std::string& socket, const v1::LocalRequest& request) {
  SHUTTLE_ASSIGN_OR_RETURN(int raw, ConnectSeqpacket(socket));
  Fd conn(raw);
  SHUTTLE_RETURN_IF_ERROR(SendMessage(conn.get(), request));
  v1::LocalResponse response;
  std::vector<int> fds;
  absl::Status received = ReceiveMessage(conn.get(), &response, &fds, 0);
  if (absl::IsNotFound(received)) {
    return absl::UnavailableError("the agent closed the connection without answering");
  }
  SHUTTLE_RETURN_IF_ERROR(received);
  SHUTTLE_RETURN_IF_ERROR(FromResponse(response));
  return response;
}

std::string Time(const google::protobuf::Timestamp& ts) {
  return google::protobuf::util::TimeUtil::ToString(ts);
}

absl::StatusOr<int> VmList(const Invocation& inv, std::ostream& out) {
  v1::LocalRequest request;
  request.mutable_vm_list();
  SHUTTLE_ASSIGN_OR_RETURN(v1::LocalResponse response, Call(SocketPath(inv), request));
  if (inv.global.output == OutputFormat::kJson) {
    SHUTTLE_ASSIGN_OR_RETURN(std::string json, ToJson(response.vm_list()));
    out << json;
    return 0;
  }
  Table table({"NAME", "INIT PID", "CREATED", "WRITES IN"});
  for (const v1::LocalVm& vm : response.vm_list().vms()) {
    table.AddRow({vm.name(), std::to_string(vm.init_pid()), Time(vm.created()), vm.upper_dir()});
  }
  out << table.Render();
  return 0;
}

absl::StatusOr<int> VmCreate(const Invocation& inv, std::ostream& out) {
  v1::LocalRequest request;
  request.mutable_vm_create()->set_name(inv.args[0]);
  SHUTTLE_ASSIGN_OR_RETURN(v1::LocalResponse response, Call(SocketPath(inv), request));
  if (inv.global.output == OutputFormat::kJson) {
    SHUTTLE_ASSIGN_OR_RETURN(std::string json, ToJson(response.vm()));
    out << json;
  } else {
    out << "vm " << response.vm().name() << " created (init pid " << response.vm().init_pid()
        << ")\n";
  }
  return 0;
}

absl::StatusOr<int> VmRemove(const Invocation& inv, std::ostream& out) {
  v1::LocalRequest request;
  request.mutable_vm_remove()->set_name(inv.args[0]);
  SHUTTLE_ASSIGN_OR_RETURN(v1::LocalResponse response, Call(SocketPath(inv), request));
  if (inv.global.output == OutputFormat::kJson) {
    out << "{}\n";
  } else {
    out << "vm " << inv.args[0] << " removed\n";
  }
  return 0;
}

absl::StatusOr<int> Run(const Invocation& inv, std::ostream& out) {
  if (inv.passthrough.empty()) return absl::InvalidArgumentError("no command after --");
  // Signals for the program arrive on a signalfd instead of killing shuttlectl.
  sigset_t forwarded;
  sigemptyset(&forwarded);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&forwarded, s);
  if (sigprocmask(SIG_BLOCK, &forwarded, nullptr) != 0) {
    return absl::InternalError(absl::StrCat("sigprocmask: ", std::strerror(errno)));
  }
  Fd signals(::signalfd(-1, &forwarded, SFD_CLOEXEC));
  if (signals.get() < 0)
    return absl::InternalError(absl::StrCat("signalfd: ", std::strerror(errno)));

  SHUTTLE_ASSIGN_OR_RETURN(int raw, ConnectSeqpacket(SocketPath(inv)));
  Fd conn(raw);
  v1::LocalRequest request;
  v1::LocalRequest::Run* run = request.mutable_run();
  run->set_vm(inv.Get("vm"));
  run->set_user(inv.Get("user"));
  for (const std::string& arg : inv.passthrough) run->add_argv(arg);
  for (char** env = environ; *env != nullptr; ++env) run->add_env(*env);
  SHUTTLE_RETURN_IF_ERROR(
      SendMessage(conn.get(), request, {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO}));
  bool started = false;
  while (true) {
    pollfd fds[2] = {{conn.get(), POLLIN, 0}, {signals.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("poll: ", std::strerror(errno)));
    }
    if (fds[1].revents != 0) {
      signalfd_siginfo info{};
      if (::read(signals.get(), &info, sizeof(info)) == sizeof(info) && started) {
        v1::LocalRequest forward;
        forward.mutable_signal()->set_signal(static_cast<int>(info.ssi_signo));
        (void)SendMessage(conn.get(), forward);
      }
    }
    if (fds[0].revents == 0) continue;
    v1::LocalResponse response;
    std::vector<int> extra;
    absl::Status received = ReceiveMessage(conn.get(), &response, &extra, 0);
    if (absl::IsNotFound(received)) {
      return absl::UnavailableError(started ? "the agent went away before the program ended"
                                            : "the agent closed the connection without answering");
    }
    SHUTTLE_RETURN_IF_ERROR(received);
    SHUTTLE_RETURN_IF_ERROR(FromResponse(response));
    if (response.has_run_started()) started = true;
    if (response.has_run_exited()) return response.run_exited().exit_code();
  }
}

absl::StatusOr<int> ServiceAdd(const Invocation& inv, std::ostream& out) {
  if (inv.passthrough.empty()) return absl::InvalidArgumentError("no command after --");
  v1::LocalRequest request;
  v1::LocalService* service = request.mutable_service_add()->mutable_service();
  service->set_vm(inv.Get("vm"));
  service->set_name(inv.Get("name"));
  service->set_ready(inv.Get("ready"));
  service->set_user(inv.Get("user"));
  service->set_cwd(inv.Get("cwd"));
  for (const std::string& arg : inv.passthrough) service->add_argv(arg);
  if (std::optional<absl::Duration> timeout = inv.GetDuration("start-timeout")) {
    *service->mutable_start_timeout() =
        google::protobuf::util::TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(*timeout));
  }
  SHUTTLE_ASSIGN_OR_RETURN(v1::LocalResponse response, Call(SocketPath(inv), request));
  if (inv.global.output == OutputFormat::kJson) {
    SHUTTLE_ASSIGN_OR_RETURN(std::string json, ToJson(response.service()));
    out << json;
  } else {
    out << "service " << response.service().vm() << "/" << response.service().name()
        << " registered (ready at " << response.service().ready() << ")\n";
  }
  return 0;
}

absl::StatusOr<int> ServiceList(const Invocation& inv, std::ostream& out) {
  v1::LocalRequest request;
  request.mutable_service_list();
  SHUTTLE_ASSIGN_OR_RETURN(v1::LocalResponse response, Call(SocketPath(inv), request));
  if (inv.global.output == OutputFormat::kJson) {
    SHUTTLE_ASSIGN_OR_RETURN(std::string json, ToJson(response.service_list()));
    out << json;
    return 0;
  }
  Table table({"VM", "NAME", "READY", "STATE", "PID", "STARTS", "LAST EXIT", "USER", "COMMAND"});
  for (const v1::LocalServiceStatus& status : response.service_list().services()) {
    const v1::LocalService& service = status.service();
    table.AddRow({status.vm_missing() ? absl::StrCat(service.vm(), " (missing)") : service.vm(),
                  service.name(), service.ready(), status.state(),
                  status.pid() == 0 ? "" : std::to_string(status.pid()),
                  std::to_string(status.starts()), status.last_exit(),
                  service.user().empty() ? "root" : service.user(),
                  absl::StrJoin(service.argv(), " ")});
  }
  out << table.Render();
  return 0;
}

absl::StatusOr<int> ServiceRemove(const Invocation& inv, std::ostream& out) {
  v1::LocalRequest request;
  request.mutable_service_remove()->set_vm(inv.Get("vm"));
  request.mutable_service_remove()->set_name(inv.Get("name"));
  SHUTTLE_ASSIGN_OR_RETURN(v1::LocalResponse response, Call(SocketPath(inv), request));
  if (inv.global.output == OutputFormat::kJson) {
    out << "{}\n";
  } else {
    out << "service " << inv.Get("vm") << "/" << inv.Get("name") << " removed\n";
  }
  return 0;
}

}  // namespace

absl::StatusOr<int> RunLocalAgentVerb(const Invocation& inv, std::ostream& out) {
  const std::string& name = std::string(inv.command->name);
  if (name == "vm ls") return VmList(inv, out);
  if (name == "vm create") return VmCreate(inv, out);
  if (name == "vm rm") return VmRemove(inv, out);
  if (name == "run") return Run(inv, out);
  if (name == "service add") return ServiceAdd(inv, out);
  if (name == "service ls") return ServiceList(inv, out);
  if (name == "service rm") return ServiceRemove(inv, out);
  return absl::InternalError("no local handler for " + name);
}

}  // namespace shuttle::cli
