#include "agent/intercept/launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "driver-shim/abi/shuttle_abi.h"

extern char** environ;

namespace shuttle::agent::intercept {
namespace {

constexpr int kCtlFd = 3;  // The control socket's number in the launcher.

absl::Status ErrnoError(int err, std::string_view what) {
  return absl::InternalError(absl::StrCat("launch: ", std::string(what), ": ", std::strerror(err)));
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "ended";
}

// The launcher while the handshake runs: killed and reaped unless released.
class LauncherGuard {
 public:
  LauncherGuard(pid_t pid, UniqueFd pidfd) : pid_(pid), pidfd_(std::move(pidfd)) {}
  ~LauncherGuard() {
    if (pid_ <= 0) return;
    syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
    int status;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  int pidfd() const { return pidfd_.get(); }
  // If the launcher has exited, reaps it and says how it ended.
  std::optional<std::string> ExitIfDone() {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return DescribeExit(status);
    }
    return std::nullopt;
  }
  std::pair<pid_t, UniqueFd> Release() { return {std::exchange(pid_, -1), std::move(pidfd_)}; }

 private:
  pid_t pid_;
  UniqueFd pidfd_;
};

// Waits until `ctl` is readable, the launcher exits, or the deadline passes.
absl::Status WaitReadable(int ctl, LauncherGuard& launcher, absl::Time deadline, const char* step) {
  for (;;) {
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat("launch: timed out waiting for ", step));
    }
    pollfd fds[2] = {{ctl, POLLIN, 0}, {launcher.pidfd(), POLLIN, 0}};
    int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
    int n = poll(fds, 2, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "poll");
    }
    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) return absl::OkStatus();
    if ((fds[1].revents & POLLIN) != 0) {
      // The launcher is gone and its child (the only other holder of the socket) too, or the
      // socket would not be silent; report how it ended.
      std::optional<std::string> how = launcher.ExitIfDone();
      return absl::FailedPreconditionError(absl::StrCat("launch: shuttle-launch ",
                                                        how.value_or("ended"), " before ", step,
                                                        " (its reason is on the caller's stderr)"));
    }
  }
}

struct Received {
  shuttle_abi_message msg;
  bool has_creds = false;
  ucred creds{};
};

absl::StatusOr<Received> ReceiveMessage(int ctl, LauncherGuard& launcher, absl::Time deadline,
                                        uint16_t want_type, const char* step) {
  if (absl::Status s = WaitReadable(ctl, launcher, deadline, step); !s.ok()) return s;
  unsigned char buf[SHUTTLE_ABI_MAX_MESSAGE];
  union {
    char buf[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * 4)];
    cmsghdr align;
  } control;
  iovec iov{buf, sizeof(buf)};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control.buf;
  mh.msg_controllen = sizeof(control.buf);
  ssize_t n;
  do {
    n = recvmsg(ctl, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError(errno, absl::StrCat("receive ", step));
  Received out;
  // Close any descriptor someone tried to pass us; collect credentials.
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET) continue;
    if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
      std::memcpy(&out.creds, CMSG_DATA(c), sizeof(ucred));
      out.has_creds = true;
    } else if (c->cmsg_type == SCM_RIGHTS) {
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        close(fd);
      }
    }
  }
  if (n == 0) {
    // The channel closes a moment before the launcher becomes waitable; give it until the
    // deadline (it exits right after its child) so the error can say how it ended.
    pollfd p{launcher.pidfd(), POLLIN, 0};
    int left_ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (left_ms > 0) poll(&p, 1, left_ms);
    std::optional<std::string> how = launcher.ExitIfDone();
    return absl::FailedPreconditionError(
        absl::StrCat("launch: the launched process closed the control channel before ", step,
                     how ? absl::StrCat(" (shuttle-launch ", *how, ")") : std::string(),
                     "; its reason is on the caller's stderr"));
  }
  if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("launch: ", step, ": message truncated"));
  }
  int rc = shuttle_abi_decode(buf, static_cast<size_t>(n), &out.msg, nullptr);
  if (rc != SHUTTLE_ABI_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("launch: ", step, ": bad message: ", shuttle_abi_strerror(rc)));
  }
  if (out.msg.header.type != want_type) {
    return absl::InvalidArgumentError(
        absl::StrCat("launch: ", step, ": unexpected message type ", out.msg.header.type));
  }
  return out;
}

// Duplicates `fd` above the range posix_spawn's dup2 targets (0..3), close-on-exec.
absl::StatusOr<UniqueFd> DupHigh(int fd, std::string_view what) {
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 10);
  if (copy < 0) return ErrnoError(errno, absl::StrCat("dup ", std::string(what), " fd ", fd));
  return UniqueFd(copy);
}

}  // namespace

absl::StatusOr<LaunchedProcess> StartLaunch(const LaunchSpec& spec) {
  if (spec.launcher_path.empty()) return absl::InvalidArgumentError("launch: no launcher path");
  if (spec.argv.empty()) return absl::InvalidArgumentError("launch: no command");
  if (spec.init_pid <= 0) return absl::InvalidArgumentError("launch: no VM init pid");
  const absl::Time deadline = absl::Now() + spec.timeout;

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return ErrnoError(errno, "socketpair");
  }
  UniqueFd ctl(sv[0]);
  UniqueFd theirs(sv[1]);
  int one = 1;
  // Before the launcher can send: credentials are attached only if set when it sends.
  if (setsockopt(ctl.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0) {
    return ErrnoError(errno, "setsockopt(SO_PASSCRED)");
  }

  // Sources of fds 0..3, first moved out of the way so no dup2 clobbers a later source.
  UniqueFd src[4];
  const int wanted[4] = {spec.stdin_fd, spec.stdout_fd, spec.stderr_fd, theirs.get()};
  const char* names[4] = {"stdin", "stdout", "stderr", "control"};
  for (int i = 0; i < 4; ++i) {
    auto dup = DupHigh(wanted[i], names[i]);
    if (!dup.ok()) return dup.status();
    src[i] = std::move(dup).value();
  }

  std::vector<std::string> args = {
      spec.launcher_path,     "--init-pid", absl::StrCat(spec.init_pid), "--uid",
      absl::StrCat(spec.uid), "--gid",      absl::StrCat(spec.gid),      "--ctl-fd",
      absl::StrCat(kCtlFd)};
  if (!spec.groups.empty()) {
    args.push_back("--groups");
    args.push_back(absl::StrJoin(spec.groups, ","));
  }
  if (!spec.cwd.empty()) {
    args.push_back("--cwd");
    args.push_back(spec.cwd);
  }
  args.push_back("--");
  args.insert(args.end(), spec.argv.begin(), spec.argv.end());
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  std::vector<char*> envp;
  char** env = environ;
  if (spec.env.has_value()) {
    env_storage = *spec.env;
    envp.reserve(env_storage.size() + 1);
    for (std::string& e : env_storage) envp.push_back(e.data());
    envp.push_back(nullptr);
    env = envp.data();
  }

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  for (int i = 0; i < 4; ++i) posix_spawn_file_actions_adddup2(&actions, src[i].get(), i);
  posix_spawn_file_actions_addclosefrom_np(&actions, 4);
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigfillset(&defaults);
  sigdelset(&defaults, SIGKILL);
  sigdelset(&defaults, SIGSTOP);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, spec.launcher_path.c_str(), &actions, &attr, argv.data(), env);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return ErrnoError(rc, absl::StrCat("spawn ", spec.launcher_path));
  for (UniqueFd& s : src) s.reset();
  theirs.reset();

  // Our child, not yet reaped: its pid cannot be reused, so this pidfd is the launcher's.
  int lpidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (lpidfd < 0) {
    int err = errno;
    kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return ErrnoError(err, "pidfd_open(launcher)");
  }
  LauncherGuard launcher(pid, UniqueFd(lpidfd));

  auto hello = ReceiveMessage(ctl.get(), launcher, deadline, SHUTTLE_ABI_HELLO, "HELLO");
  if (!hello.ok()) return hello.status();
  if (hello->msg.u.hello.platform != SHUTTLE_ABI_PLATFORM_LINUX) {
    return absl::InvalidArgumentError("launch: HELLO from a non-Linux shim");
  }
  if (!hello->has_creds || hello->creds.pid <= 0) {
    return absl::InvalidArgumentError("launch: HELLO without the sender's credentials");
  }
  const pid_t child = hello->creds.pid;

  auto listener_msg =
      ReceiveMessage(ctl.get(), launcher, deadline, SHUTTLE_ABI_LISTENER, "LISTENER");
  if (!listener_msg.ok()) return listener_msg.status();
  const int remote_fd = listener_msg->msg.u.listener.fd;

  // The child sent LISTENER and now waits for our ACK, so it is alive; we make sure it still
  // is after pidfd_open (it holds the only other end of `ctl`), which proves that `child` had
  // not been reused by another process when the pidfd was made.
  UniqueFd child_pidfd(static_cast<int>(syscall(SYS_pidfd_open, child, 0)));
  if (!child_pidfd) return ErrnoError(errno, absl::StrCat("pidfd_open(", child, ")"));
  pollfd alive{ctl.get(), POLLRDHUP, 0};
  if (poll(&alive, 1, 0) < 0 || (alive.revents & (POLLHUP | POLLRDHUP | POLLERR)) != 0) {
    return absl::FailedPreconditionError("launch: the launched process died during the handshake");
  }
  UniqueFd listener(static_cast<int>(syscall(SYS_pidfd_getfd, child_pidfd.get(), remote_fd, 0)));
  if (!listener) {
    return ErrnoError(errno, absl::StrCat("pidfd_getfd(pid ", child, ", fd ", remote_fd, ")"));
  }
  char link[64] = {};
  std::string self = absl::StrCat("/proc/self/fd/", listener.get());
  ssize_t link_len = readlink(self.c_str(), link, sizeof(link) - 1);
  if (link_len < 0 ||
      std::string_view(link, static_cast<size_t>(link_len)) != "anon_inode:seccomp notify") {
    return absl::InvalidArgumentError(
        absl::StrCat("launch: fd ", remote_fd, " of pid ", child, " is not a seccomp listener"));
  }

  shuttle_abi_message ack{};
  ack.header.type = SHUTTLE_ABI_ACK;
  ack.header.seq = 1;
  ack.u.ack.seq_ref = listener_msg->msg.header.seq;
  ack.u.ack.status = 0;
  unsigned char buf[SHUTTLE_ABI_MAX_MESSAGE];
  size_t len = 0;
  if (shuttle_abi_encode(&ack, buf, sizeof(buf), &len) != SHUTTLE_ABI_OK) {
    return absl::InternalError("launch: cannot encode ACK");
  }
  ssize_t sent;
  do {
    sent = send(ctl.get(), buf, len, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent != static_cast<ssize_t>(len)) return ErrnoError(errno, "send ACK");

  LaunchedProcess out;
  auto [launcher_pid, launcher_pidfd] = launcher.Release();
  out.launcher_pid = launcher_pid;
  out.launcher_pidfd = std::move(launcher_pidfd);
  out.process_pid = child;
  out.listener = std::move(listener);
  return out;
}

}  // namespace shuttle::agent::intercept
