#include "agent/invoke/invoke_server.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/broker/broker.h"
#include "agent/broker/errors.h"
#include "agent/broker/injection.h"
#include "agent/invoke/invoke_plan.h"
#include "agent/invoke/name_transfer.h"
#include "agent/local/run_in_vm.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "driver-shim/abi/shuttle_invoke_abi.h"
#include "google/protobuf/util/time_util.h"

namespace shuttle::agent::invoke {

using intercept::UniqueFd;

namespace {

// What a stand-in asked for, decoded, with the stdio it attached.
struct Request {
  std::string cwd;
  std::vector<std::string> argv;
  std::vector<std::string> env;
  UniqueFd stdio[3];
};

constexpr size_t kMaxFdsPerMessage = 8;

// Milliseconds left until `deadline` for poll(), at least 0.
int MillisLeft(absl::Time deadline) {
  int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
  return ms < 0 ? 0 : static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

// Reads exactly `len` bytes by `deadline`, keeping any descriptors that come along (at most 3
// kept; the rest closed). DEADLINE_EXCEEDED, or UNAVAILABLE at EOF.
absl::Status ReadFull(int conn, unsigned char* buf, size_t len, absl::Time deadline,
                      std::vector<UniqueFd>* fds) {
  size_t have = 0;
  while (have < len) {
    pollfd p{conn, POLLIN, 0};
    int ready = ::poll(&p, 1, MillisLeft(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return absl::ErrnoToStatus(errno, "poll on the invocation socket");
    if (ready == 0) return absl::DeadlineExceededError("the stand-in's request did not arrive");
    iovec iov{buf + have, len - have};
    alignas(cmsghdr) char control[CMSG_SPACE(kMaxFdsPerMessage * sizeof(int))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::ErrnoToStatus(errno, "reading the stand-in's request");
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        UniqueFd owned(fd);
        if (fds->size() < 3) fds->push_back(std::move(owned));
      }
    }
    if (n == 0) return absl::UnavailableError("the stand-in closed the connection");
    have += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// The header and payload of one message from the stand-in.
absl::Status ReadMessage(int conn, absl::Time deadline, shuttle_invoke_header* header,
                         std::vector<unsigned char>* payload, std::vector<UniqueFd>* fds) {
  unsigned char head[SHUTTLE_INVOKE_HEADER_SIZE];
  SHUTTLE_RETURN_IF_ERROR(ReadFull(conn, head, sizeof(head), deadline, fds));
  int rc = shuttle_invoke_decode_header(head, sizeof(head), header);
  if (rc != SHUTTLE_ABI_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad message header from the stand-in: ", shuttle_abi_strerror(rc)));
  }
  payload->resize(header->length);
  return ReadFull(conn, payload->data(), payload->size(), deadline, fds);
}

absl::StatusOr<std::optional<std::string>> ReadLink(const std::string& path) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof(buf));
  if (n < 0) return absl::ErrnoToStatus(errno, absl::StrCat("readlink ", path));
  return std::optional<std::string>(std::string(buf, static_cast<size_t>(n)));
}

void SendAll(int conn, const unsigned char* buf, size_t len) {
  size_t sent = 0;
  while (sent < len) {
    ssize_t n = ::send(conn, buf + sent, len - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // The stand-in is gone; nobody to tell.
    sent += static_cast<size_t>(n);
  }
}

const char* OutcomeLabel(uint32_t outcome) {
  switch (outcome) {
    case SHUTTLE_INVOKE_EXITED:
      return "exited";
    case SHUTTLE_INVOKE_SIGNALED:
      return "signaled";
    case SHUTTLE_INVOKE_DENIED:
      return "denied";
    default:
      return "failed";
  }
}

absl::Status DecodeRequest(const std::vector<unsigned char>& payload, Request* out) {
  shuttle_invoke_request req;
  int rc = shuttle_invoke_decode_request(payload.data(), payload.size(), &req);
  if (rc != SHUTTLE_ABI_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad request from the stand-in: ", shuttle_abi_strerror(rc)));
  }
  const char* s = req.strings;
  out->cwd = s;
  s = shuttle_invoke_next_string(s);
  for (uint32_t i = 0; i < req.argc; ++i, s = shuttle_invoke_next_string(s)) {
    out->argv.emplace_back(s);
  }
  for (uint32_t i = 0; i < req.envc; ++i, s = shuttle_invoke_next_string(s)) {
    out->env.emplace_back(s);
  }
  return absl::OkStatus();
}

// How the launcher ended, as a RESULT.
std::pair<uint32_t, int32_t> OutcomeOf(const siginfo_t& info) {
  if (info.si_code == CLD_EXITED) return {SHUTTLE_INVOKE_EXITED, info.si_status & 0xff};
  return {SHUTTLE_INVOKE_SIGNALED, info.si_status};
}

}  // namespace

InvokeServer::InvokeServer(InvokeServerOptions options, VmManager& vms, VmMounter& mounter,
                           intercept::InterceptionSource& source, const PolicyHolder& policy,
                           AuditSink* audit, prometheus::Registry& metrics)
    : options_(std::move(options)),
      vms_(vms),
      mounter_(mounter),
      source_(source),
      policy_(policy),
      audit_(audit),
      invocations_(prometheus::BuildCounter()
                       .Name("shuttle_agent_invocations_total")
                       .Help("Invocations of programs placed in another VM, by result: exited, "
                             "signaled, denied (policy), failed (could not start)")
                       .Register(metrics)),
      transfers_(prometheus::BuildCounter()
                     .Name("shuttle_agent_name_transfers_total")
                     .Help("File names handed over by invocations, by result: bound, denied "
                           "(policy), failed")
                     .Register(metrics)) {}

InvokeServer::~InvokeServer() { Stop(); }

absl::Status InvokeServer::Start() {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (options_.socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError("invocation socket path too long: " + options_.socket_path);
  }
  std::memcpy(addr.sun_path, options_.socket_path.c_str(), options_.socket_path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (fd.get() < 0) return absl::ErrnoToStatus(errno, "invocation socket: socket");
  // Only one agent runs per data dir (the VM manager's lock), so a file here is a stale one.
  if (::unlink(options_.socket_path.c_str()) != 0 && errno != ENOENT) {
    return absl::ErrnoToStatus(errno, "invocation socket: unlink stale " + options_.socket_path);
  }
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::ErrnoToStatus(errno, "invocation socket: bind " + options_.socket_path);
  }
  if (::chmod(options_.socket_path.c_str(), 0666) != 0) {
    return absl::ErrnoToStatus(errno, "invocation socket: chmod " + options_.socket_path);
  }
  if (::listen(fd.get(), 128) != 0) {
    return absl::ErrnoToStatus(errno, "invocation socket: listen " + options_.socket_path);
  }
  stop_fd_.reset(::eventfd(0, EFD_CLOEXEC));
  if (stop_fd_.get() < 0) return absl::ErrnoToStatus(errno, "invocation socket: eventfd");
  listen_fd_ = std::move(fd);
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void InvokeServer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  if (stop_fd_.get() >= 0) {
    uint64_t one = 1;
    (void)!::write(stop_fd_.get(), &one, sizeof(one));
  }
  if (acceptor_.joinable()) acceptor_.join();
  std::list<std::unique_ptr<Worker>> workers;
  {
    absl::MutexLock lock(&mu_);
    workers.swap(workers_);
  }
  for (auto& worker : workers) worker->thread.join();
}

void InvokeServer::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      SHUTTLE_LOG(ERROR) << "invoke: poll: " << std::strerror(errno) << "; stop serving";
      return;
    }
    if (fds[1].revents != 0) return;
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (conn.get() < 0) continue;  // EAGAIN (another wakeup took it), ECONNABORTED...
    absl::MutexLock lock(&mu_);
    // Reap the workers that finished.
    for (auto it = workers_.begin(); it != workers_.end();) {
      if ((*it)->done.load()) {
        (*it)->thread.join();
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    if (workers_.size() >= options_.max_invocations) {
      Answer(
          conn.get(), SHUTTLE_INVOKE_FAILED, EAGAIN,
          absl::StrCat("too many invocations running (", options_.max_invocations, "); try again"));
      continue;
    }
    auto worker = std::make_unique<Worker>();
    Worker* raw = worker.get();
    raw->thread = std::thread([this, raw, fd = conn.release()]() mutable {
      Serve(UniqueFd(fd));
      raw->done.store(true);
    });
    workers_.push_back(std::move(worker));
  }
}

void InvokeServer::Answer(int conn, uint32_t outcome, int32_t value, const std::string& message) {
  invocations_.Add({{"result", OutcomeLabel(outcome)}}).Increment();
  unsigned char buf[SHUTTLE_INVOKE_HEADER_SIZE + SHUTTLE_INVOKE_RESULT_FIXED_SIZE +
                    SHUTTLE_INVOKE_MESSAGE_MAX];
  size_t written = 0;
  if (shuttle_invoke_encode_result(outcome, value, message.c_str(), buf, sizeof(buf), &written) !=
      SHUTTLE_ABI_OK) {
    SHUTTLE_LOG(ERROR) << "invoke: cannot encode result " << outcome << "/" << value;
    return;
  }
  SendAll(conn, buf, written);
}

void InvokeServer::AuditRecord(const v1::Interaction& interaction, v1::Decision decision,
                               std::string detail) const {
  if (audit_ == nullptr) return;
  v1::AuditRecord record;
  *record.mutable_time() = google::protobuf::util::TimeUtil::GetCurrentTime();
  *record.mutable_interaction() = interaction;
  *record.mutable_decision() = std::move(decision);
  record.set_detail(std::move(detail));
  audit_->Submit(std::move(record));
}

void InvokeServer::Serve(UniqueFd conn) {
  const int c = conn.get();
  // 1. The request and the caller's stdio.
  Request request;
  {
    shuttle_invoke_header header;
    std::vector<unsigned char> payload;
    std::vector<UniqueFd> fds;
    absl::Time deadline = absl::Now() + options_.request_timeout;
    absl::Status read = ReadMessage(c, deadline, &header, &payload, &fds);
    if (read.ok() && header.type != SHUTTLE_INVOKE_REQUEST) {
      read = absl::InvalidArgumentError("the stand-in's first message is not a REQUEST");
    }
    if (read.ok()) read = DecodeRequest(payload, &request);
    if (read.ok() && fds.size() != 3) {
      read = absl::InvalidArgumentError("the request did not carry the caller's fds 0, 1 and 2");
    }
    if (!read.ok()) {
      SHUTTLE_LOG(WARNING) << "invoke: " << read;
      Answer(c, SHUTTLE_INVOKE_FAILED, EPROTO, std::string(read.message()));
      return;
    }
    for (int i = 0; i < 3; ++i) request.stdio[i] = std::move(fds[i]);
  }

  // 2. Who asks, from the kernel.
  ucred peer{};
  socklen_t peer_len = sizeof(peer);
  if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0 || peer.pid <= 0) {
    Answer(c, SHUTTLE_INVOKE_FAILED, EPROTO, "cannot identify the caller (SO_PEERCRED)");
    return;
  }
  std::optional<std::string> caller_vm = vms_.VmOfPid(peer.pid);
  absl::StatusOr<std::optional<std::string>> exe =
      ReadLink(absl::StrCat("/proc/", peer.pid, "/exe"));
  absl::StatusOr<broker::Credentials> creds = broker::ReadCallerCredentials(peer.pid);
  if (!caller_vm.has_value() || !exe.ok() || !creds.ok()) {
    Answer(c, SHUTTLE_INVOKE_DENIED, 0,
           !caller_vm.has_value() ? "the caller is not in a VM: invocation across VMs is for "
                                    "programs started in one"
                                  : "the caller is gone");
    return;
  }
  const std::string& program = **exe;

  // 3. The invoke decision.
  std::shared_ptr<const policy::CompiledPolicy> compiled = policy_.Get();
  policy::InteractionView view;
  view.subject_vm = *caller_vm;
  view.program = program;
  view.uid = creds->uid;
  view.kind = v1::INVOKE;
  view.object_name = program;
  policy::Verdict verdict = compiled->Decide(view);
  std::string why;
  std::optional<InvokeTarget> target = TargetOf(verdict, *caller_vm, program, &why);
  v1::Decision decision = compiled->ToProto(verdict);
  if (target.has_value()) {
    if (std::optional<Placement> chained = PlacementOf(*compiled, target->vm, target->program)) {
      why = absl::StrCat(target->program, " would run in VM ", target->vm,
                         ", which hands it on to VM ", chained->target_vm, " (rule ", chained->rule,
                         "); chains of invocations are refused");
      target.reset();
      decision.set_verdict(v1::VERDICT_DENY);
      decision.clear_redirect();
      decision.set_reason(why);
    }
  }
  v1::Interaction interaction;
  interaction.set_subject_vm(*caller_vm);
  interaction.set_pid(static_cast<uint32_t>(peer.pid));
  interaction.set_program(program);
  interaction.set_uid(creds->uid);
  interaction.set_kind(v1::INVOKE);
  interaction.set_object_vm(target.has_value() ? target->vm : std::string());
  interaction.set_object_name(program);
  AuditRecord(
      interaction, std::move(decision),
      target.has_value() ? absl::StrCat("runs ", target->program, " in VM ", target->vm) : why);
  if (!target.has_value()) {
    SHUTTLE_LOG(INFO) << "invoke: VM " << *caller_vm << " pid " << peer.pid << ": " << why;
    Answer(c, SHUTTLE_INVOKE_DENIED, 0, why);
    return;
  }

  // 4. Names handed over: arguments, and values of the environment the rule passes.
  std::vector<std::string> env = FilterEnv(request.env, target->env_patterns);
  std::vector<std::string> argv = request.argv;
  argv[0] = target->program;
  const uint64_t id = next_id_.fetch_add(1);
  NameTransfer transfer(mounter_, *caller_vm, target->vm,
                        absl::StrCat(options_.transfer_dir, "/", peer.pid, "-", id));
  std::optional<policy::Verdict> transfer_verdict;
  int index = 0;
  auto translate = [&](std::string& value) {
    ++index;
    std::optional<std::string> named = transfer.Resolve(request.cwd, value);
    if (!named.has_value()) return;
    if (!transfer_verdict.has_value()) {
      policy::InteractionView tv = view;
      tv.kind = v1::NAME_TRANSFER;
      tv.object_vm = target->vm;
      transfer_verdict = compiled->Decide(tv);
    }
    const policy::Verdict& tv = *transfer_verdict;
    bool allowed = tv.rule != nullptr && tv.enforced && tv.verdict == v1::VERDICT_ALLOW;
    bool writable = allowed && tv.rule->rule->writable();
    v1::Interaction record = interaction;
    record.set_kind(v1::NAME_TRANSFER);
    record.set_object_vm(target->vm);
    std::string detail;
    if (allowed) {
      absl::StatusOr<Transferred> bound = transfer.Bind(*named, index, writable);
      if (bound.ok()) {
        detail = absl::StrCat(*caller_vm, ":", bound->caller_path, " -> ", target->vm, ":",
                              bound->target_path, writable ? " (read-write)" : " (read-only)");
        value = bound->target_path;
        transfers_.Add({{"result", "bound"}}).Increment();
      } else {
        detail =
            absl::StrCat(*caller_vm, ":", *named, " not handed over: ", bound.status().ToString());
        SHUTTLE_LOG(WARNING) << "invoke: " << detail;
        transfers_.Add({{"result", "failed"}}).Increment();
      }
    } else {
      detail = absl::StrCat(*caller_vm, ":", *named, " not handed over (",
                            absl::string_view(tv.reason.data(), tv.reason.size()), ")");
      transfers_.Add({{"result", "denied"}}).Increment();
    }
    AuditRecord(record, compiled->ToProto(tv), std::move(detail));
  };
  for (size_t i = 1; i < argv.size(); ++i) translate(argv[i]);
  for (std::string& entry : env) {
    size_t eq = entry.find('=');
    if (eq == std::string::npos || entry == kDefaultPath) continue;
    std::string value = entry.substr(eq + 1);
    translate(value);
    entry = absl::StrCat(entry.substr(0, eq + 1), value);
  }

  // 5. Start it in the target VM as the caller.
  intercept::LaunchSpec spec;
  spec.launcher_path = options_.launcher_path;
  spec.uid = creds->uid;
  spec.gid = creds->gid;
  spec.groups = creds->groups;
  spec.cwd = "/";
  spec.argv = std::move(argv);
  spec.env = std::move(env);
  spec.stdin_fd = request.stdio[0].get();
  spec.stdout_fd = request.stdio[1].get();
  spec.stderr_fd = request.stdio[2].get();
  absl::StatusOr<intercept::LaunchedProcess> launched =
      RunInVm(vms_, source_, target->vm, std::move(spec));
  for (UniqueFd& fd : request.stdio) fd.reset();  // The launcher has its own copies.
  if (!launched.ok()) {
    int err = broker::ErrnoForStatus(launched.status());
    Answer(c, SHUTTLE_INVOKE_FAILED, err > 0 ? err : EIO,
           absl::StrCat("starting ", target->program, " in VM ", target->vm, ": ",
                        launched.status().message()));
    return;
  }
  SHUTTLE_LOG(INFO) << "invoke: VM " << *caller_vm << " pid " << peer.pid << " runs " << program
                    << " in VM " << target->vm << " (pid " << launched->process_pid << ")";
  UniqueFd program_fd(static_cast<int>(::syscall(SYS_pidfd_open, launched->process_pid, 0)));

  // 6. Forward signals until it ends; kill it if the stand-in goes away or the agent stops.
  auto kill_program = [&] {
    if (program_fd.get() >= 0) {
      ::syscall(SYS_pidfd_send_signal, program_fd.get(), SIGKILL, nullptr, 0);
    } else {
      ::kill(launched->launcher_pid, SIGKILL);
    }
  };
  bool stand_in_gone = false;
  bool stopping = false;
  for (;;) {
    pollfd fds[3] = {{launched->launcher_pidfd.get(), POLLIN, 0},
                     {stand_in_gone ? -1 : c, POLLIN, 0},
                     {stopping ? -1 : stop_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      kill_program();
      break;
    }
    if (fds[0].revents != 0) break;
    if (fds[2].revents != 0) {
      stopping = true;
      kill_program();
      continue;
    }
    if (fds[1].revents == 0) continue;
    shuttle_invoke_header header;
    std::vector<unsigned char> payload;
    std::vector<UniqueFd> ignored;
    absl::Status read =
        ReadMessage(c, absl::Now() + options_.request_timeout, &header, &payload, &ignored);
    uint32_t signo = 0;
    if (read.ok() && header.type == SHUTTLE_INVOKE_SIGNAL &&
        shuttle_invoke_decode_signal(payload.data(), payload.size(), &signo) == SHUTTLE_ABI_OK) {
      if (program_fd.get() >= 0) {
        ::syscall(SYS_pidfd_send_signal, program_fd.get(), static_cast<int>(signo), nullptr, 0);
      }
      continue;
    }
    // The stand-in died (SIGKILL) or spoke nonsense: the invocation is over.
    stand_in_gone = true;
    kill_program();
  }
  siginfo_t info{};
  while (::waitid(static_cast<idtype_t>(P_PIDFD), launched->launcher_pidfd.get(), &info, WEXITED) !=
             0 &&
         errno == EINTR) {
  }
  if (stopping) {
    Answer(c, SHUTTLE_INVOKE_FAILED, ESHUTDOWN,
           "the Shuttle agent stopped; the program was killed");
    return;
  }
  auto [outcome, value] = OutcomeOf(info);
  Answer(c, outcome, value, "");
}

}  // namespace shuttle::agent::invoke
