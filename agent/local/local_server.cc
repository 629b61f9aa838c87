#include "agent/local/local_server.h"

#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "agent/deps/service_spec.h"
#include "agent/deps/user_lookup.h"
#include "agent/intercept/launcher.h"
#include "agent/local/run_in_vm.h"
#include "common/logging.h"
#include "common/seqpacket.h"
#include "google/protobuf/util/time_util.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

namespace shuttle::agent {
namespace {

using intercept::UniqueFd;

v1::LocalResponse ErrorResponse(const absl::Status& status) {
  v1::LocalResponse response;
  response.set_code(static_cast<int>(status.code()));
  response.set_message(std::string(status.message()));
  return response;
}

std::string ErrnoText(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

}  // namespace

LocalServer::LocalServer(LocalServerOptions options, VmManager& vms,
                         intercept::InterceptionSource& source, prometheus::Registry& metrics)
    : options_(std::move(options)),
      vms_(vms),
      source_(source),
      requests_(prometheus::BuildCounter()
                    .Name("shuttle_agent_local_requests_total")
                    .Help("Local API requests, by request and outcome code")
                    .Register(metrics)) {}

LocalServer::~LocalServer() { Stop(); }

absl::Status LocalServer::Start() {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (options_.socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError("socket path too long: " + options_.socket_path);
  }
  std::memcpy(addr.sun_path, options_.socket_path.c_str(), options_.socket_path.size() + 1);

  // A live agent answers a connect; a stale file from a dead one does not.
  absl::StatusOr<int> probe = ConnectSeqpacket(options_.socket_path);
  if (probe.ok()) {
    ::close(*probe);
    return absl::FailedPreconditionError("another agent is serving " + options_.socket_path);
  }
  ::unlink(options_.socket_path.c_str());

  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return absl::InternalError(ErrnoText("socket"));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(ErrnoText(("bind " + options_.socket_path).c_str()));
  }
  gid_t socket_gid = 0;
  if (!options_.socket_group.empty()) {
    struct group* gr = ::getgrnam(options_.socket_group.c_str());
    if (gr == nullptr) return absl::NotFoundError("no such group: " + options_.socket_group);
    socket_gid = gr->gr_gid;
  }
  if (::chown(options_.socket_path.c_str(), 0, socket_gid) != 0 ||
      ::chmod(options_.socket_path.c_str(), 0660) != 0) {
    return absl::InternalError(ErrnoText(("chmod/chown " + options_.socket_path).c_str()));
  }
  if (::listen(fd.get(), 64) != 0) return absl::InternalError(ErrnoText("listen"));
  stop_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd_) return absl::InternalError(ErrnoText("eventfd"));
  listen_fd_ = std::move(fd);
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  SHUTTLE_LOG(INFO) << "local API on " << options_.socket_path;
  return absl::OkStatus();
}

void LocalServer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ || !listen_fd_) return;
    stopping_ = true;
  }
  uint64_t one = 1;
  ssize_t unused = ::write(stop_fd_.get(), &one, sizeof(one));
  (void)unused;
  if (accept_thread_.joinable()) accept_thread_.join();
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
  ::unlink(options_.socket_path.c_str());
}

void LocalServer::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      SHUTTLE_LOG(ERROR) << ErrnoText("local API poll");
      return;
    }
    if (fds[1].revents != 0) return;
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    threads_.emplace_back([this, c = std::move(conn)]() mutable { Serve(std::move(c)); });
  }
}

void LocalServer::Serve(UniqueFd conn) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    SHUTTLE_LOG(WARNING) << ErrnoText("SO_PEERCRED");
    return;
  }
  const Peer peer{cred.pid, cred.uid, cred.gid};
  pollfd fds[2] = {{conn.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
  while (::poll(fds, 2, -1) >= 0 || errno == EINTR) {
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    v1::LocalRequest request;
    std::vector<int> raw_fds;
    absl::Status received = ReceiveMessage(conn.get(), &request, &raw_fds, 3);
    std::vector<UniqueFd> stdio;
    for (int fd : raw_fds) stdio.emplace_back(fd);
    if (absl::IsNotFound(received)) return;  // The client hung up.
    if (!received.ok()) {
      requests_.Add({{"request", "malformed"}, {"code", "INVALID_ARGUMENT"}}).Increment();
      (void)SendMessage(conn.get(), ErrorResponse(received));
      return;
    }
    if (request.has_run()) {
      HandleRun(conn.get(), request.run(), peer, std::move(stdio));
      return;  // One run per connection: its exit status ends the conversation.
    }
    const bool is_service =
        request.has_service_add() || request.has_service_remove() || request.has_service_list();
    v1::LocalResponse response =
        is_service ? HandleService(request, peer) : HandleVm(request, peer);
    requests_
        .Add({{"request", request.has_vm_create()        ? "vm_create"
                          : request.has_vm_remove()      ? "vm_remove"
                          : request.has_vm_list()        ? "vm_list"
                          : request.has_service_add()    ? "service_add"
                          : request.has_service_remove() ? "service_remove"
                          : request.has_service_list()   ? "service_list"
                                                         : "other"},
              {"code", response.code() == 0 ? "OK" : std::to_string(response.code())}})
        .Increment();
    if (!SendMessage(conn.get(), response).ok()) return;
  }
}

v1::LocalResponse LocalServer::HandleVm(const v1::LocalRequest& request, const Peer& peer) {
  auto to_proto = [](const VmInfo& info) {
    v1::LocalVm vm;
    vm.set_name(info.name);
    vm.set_init_pid(static_cast<uint32_t>(info.init_pid));
    vm.set_upper_dir(info.upper_dir);
    *vm.mutable_created() =
        google::protobuf::util::TimeUtil::SecondsToTimestamp(absl::ToUnixSeconds(info.created));
    return vm;
  };
  v1::LocalResponse response;
  if (request.has_vm_list()) {
    for (const VmInfo& info : vms_.List()) *response.mutable_vm_list()->add_vms() = to_proto(info);
    return response;
  }
  if (peer.uid != 0) {
    return ErrorResponse(absl::PermissionDeniedError(
        "only root may create or remove VMs (caller uid " + std::to_string(peer.uid) + ")"));
  }
  if (request.has_vm_create()) {
    absl::StatusOr<VmInfo> created = vms_.Create(request.vm_create().name());
    if (!created.ok()) return ErrorResponse(created.status());
    SHUTTLE_LOG(INFO) << "vm " << created->name << " created (init pid " << created->init_pid
                      << ") for pid " << peer.pid;
    *response.mutable_vm() = to_proto(*created);
    return response;
  }
  if (request.has_vm_remove()) {
    absl::Status removed = vms_.Destroy(request.vm_remove().name());
    if (!removed.ok()) return ErrorResponse(removed);
    SHUTTLE_LOG(INFO) << "vm " << request.vm_remove().name() << " removed for pid " << peer.pid;
    return response;
  }
  return ErrorResponse(absl::InvalidArgumentError("empty or unknown request"));
}

v1::LocalResponse LocalServer::HandleService(const v1::LocalRequest& request, const Peer& peer) {
  if (services_ == nullptr) {
    return ErrorResponse(absl::UnimplementedError("this agent does not manage services"));
  }
  v1::LocalResponse response;
  if (request.has_service_list()) {
    for (const v1::LocalService& service : services_->List()) {
      v1::LocalServiceStatus* status = response.mutable_service_list()->add_services();
      *status->mutable_service() = service;
      status->set_vm_missing(!vms_.Get(service.vm()).ok());
      const deps::ServiceRunState run = services_->RunStateOf(service.vm(), service.name());
      status->set_state(deps::PhaseName(run.phase));
      status->set_pid(static_cast<uint32_t>(run.pid));
      status->set_starts(run.starts);
      status->set_last_exit(run.last_exit);
    }
    return response;
  }
  if (peer.uid != 0) {
    return ErrorResponse(absl::PermissionDeniedError(
        "only root may add or remove services (caller uid " + std::to_string(peer.uid) + ")"));
  }
  if (request.has_service_add()) {
    const v1::LocalService& service = request.service_add().service();
    // A user that does not exist would only fail at the first start: say so now.
    if (!service.user().empty()) {
      absl::StatusOr<deps::ResolvedUser> user = deps::ResolveUser(service.user());
      if (!user.ok()) return ErrorResponse(user.status());
    }
    absl::StatusOr<v1::LocalService> added = services_->Add(service);
    if (!added.ok()) return ErrorResponse(added.status());
    SHUTTLE_LOG(INFO) << "service " << deps::ServiceLabel(*added) << " registered (ready at "
                      << added->ready() << ") for pid " << peer.pid;
    *response.mutable_service() = *std::move(added);
    return response;
  }
  const v1::LocalRequest::ServiceRemove& remove = request.service_remove();
  absl::Status removed = services_->Remove(remove.vm(), remove.name());
  if (!removed.ok()) return ErrorResponse(removed);
  SHUTTLE_LOG(INFO) << "service " << remove.vm() << "/" << remove.name() << " removed for pid "
                    << peer.pid;
  return response;
}

void LocalServer::HandleRun(int conn, const v1::LocalRequest::Run& run, const Peer& peer,
                            std::vector<UniqueFd> stdio) {
  auto fail = [&](const absl::Status& status) {
    requests_.Add({{"request", "run"}, {"code", std::to_string(static_cast<int>(status.code()))}})
        .Increment();
    (void)SendMessage(conn, ErrorResponse(status));
  };
  if (stdio.size() != 3) {
    return fail(
        absl::InvalidArgumentError("run needs exactly 3 descriptors (stdin, stdout, "
                                   "stderr), got " +
                                   std::to_string(stdio.size())));
  }
  if (run.argv_size() == 0 || run.argv(0).empty()) {
    return fail(absl::InvalidArgumentError("run: no command given"));
  }
  absl::StatusOr<deps::ResolvedUser> user =
      deps::ResolveUser(run.user().empty() ? std::to_string(peer.uid) : run.user());
  if (!user.ok()) return fail(user.status());
  if (peer.uid != 0 && user->uid != peer.uid) {
    return fail(absl::PermissionDeniedError("uid " + std::to_string(peer.uid) +
                                            " may only run programs as itself"));
  }

  intercept::LaunchSpec spec;
  spec.launcher_path = options_.launcher_path;
  deps::RunAs(*user, spec);
  spec.cwd = run.cwd();
  spec.argv.assign(run.argv().begin(), run.argv().end());
  spec.env = std::vector<std::string>(run.env().begin(), run.env().end());
  spec.stdin_fd = stdio[0].get();
  spec.stdout_fd = stdio[1].get();
  spec.stderr_fd = stdio[2].get();
  absl::StatusOr<intercept::LaunchedProcess> launched =
      RunInVm(vms_, source_, run.vm(), std::move(spec));
  if (!launched.ok()) return fail(launched.status());
  stdio.clear();  // The launcher has its own copies; the program's I/O never passes through us.
  requests_.Add({{"request", "run"}, {"code", "OK"}}).Increment();
  SHUTTLE_LOG(INFO) << "run in vm " << run.vm() << " as uid " << user->uid << ": " << run.argv(0)
                    << " (pid " << launched->process_pid << ") for pid " << peer.pid;
  v1::LocalResponse started;
  started.mutable_run_started()->set_pid(static_cast<uint32_t>(launched->launcher_pid));
  (void)SendMessage(conn, started);

  // Wait for the launcher (which exits with the program's status), forwarding signals the
  // client sends. If the client goes away the program keeps running and is still reaped here.
  bool client_gone = false;
  while (true) {
    pollfd fds[2] = {{launched->launcher_pidfd.get(), POLLIN, 0},
                     {client_gone ? -1 : conn, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents != 0) break;
    if (fds[1].revents != 0) {
      v1::LocalRequest request;
      std::vector<int> extra;
      absl::Status received = ReceiveMessage(conn, &request, &extra, 0);
      for (int fd : extra) ::close(fd);
      if (!received.ok()) {
        client_gone = true;
        continue;
      }
      int signo = request.signal().signal();
      if (request.has_signal() && signo > 0 && signo < NSIG) {
        ::kill(launched->launcher_pid, signo);
      }
    }
  }
  int exit_code = WaitLaunched(*launched);
  if (exit_code < 0) {
    SHUTTLE_LOG(ERROR) << ErrnoText("waitid launcher");
    return;
  }
  if (!client_gone) {
    v1::LocalResponse exited;
    exited.mutable_run_exited()->set_exit_code(exit_code);
    (void)SendMessage(conn, exited);
  }
}

}  // namespace shuttle::agent
