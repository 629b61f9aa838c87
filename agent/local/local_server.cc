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

struct User {
  uid_t uid;
  gid_t gid;
  std::vector<gid_t> groups;
};

// Resolves a user name or number against the host's user database (VM roots are overlays of
// the host root, so they share it unless a VM changed its own copy).
absl::StatusOr<User> ResolveUser(const std::string& spec) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  uint32_t numeric = 0;
  int rc = absl::SimpleAtoi(spec, &numeric)
               ? ::getpwuid_r(numeric, &pw, buf.data(), buf.size(), &found)
               : ::getpwnam_r(spec.c_str(), &pw, buf.data(), buf.size(), &found);
  if (rc != 0) return absl::InternalError("user lookup of '" + spec + "': " + std::strerror(rc));
  if (found == nullptr) {
    if (absl::SimpleAtoi(spec, &numeric)) return User{numeric, numeric, {}};  // No passwd entry.
    return absl::NotFoundError("no such user: " + spec);
  }
  User user{pw.pw_uid, pw.pw_gid, {}};
  int count = 64;
  user.groups.resize(count);
  if (::getgrouplist(pw.pw_name, pw.pw_gid, user.groups.data(), &count) < 0) {
    user.groups.resize(count);
    ::getgrouplist(pw.pw_name, pw.pw_gid, user.groups.data(), &count);
  }
  user.groups.resize(count);
  return user;
}

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
    v1::LocalResponse response = HandleVm(request, peer);
    requests_
        .Add({{"request", request.has_vm_create()   ? "vm_create"
                          : request.has_vm_remove() ? "vm_remove"
                          : request.has_vm_list()   ? "vm_list"
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
  absl::StatusOr<User> user =
      ResolveUser(run.user().empty() ? std::to_string(peer.uid) : run.user());
  if (!user.ok()) return fail(user.status());
  if (peer.uid != 0 && user->uid != peer.uid) {
    return fail(absl::PermissionDeniedError("uid " + std::to_string(peer.uid) +
                                            " may only run programs as itself"));
  }

  intercept::LaunchSpec spec;
  spec.launcher_path = options_.launcher_path;
  spec.uid = user->uid;
  spec.gid = user->gid;
  spec.groups = user->groups;
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
