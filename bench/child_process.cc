#include "bench/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace shuttle::bench {
namespace {

std::string Errno(const char* what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

// Milliseconds left until `deadline`, for poll(); 0 once it has passed.
int MillisLeft(absl::Time deadline) {
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
}

void WriteAll(int fd, absl::string_view text) {
  while (!text.empty()) {
    ssize_t n = ::write(fd, text.data(), text.size());
    if (n <= 0) return;
    text.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv, const std::string& log_path) {
  if (argv.empty() || argv[0].empty()) {
    return absl::InvalidArgumentError("no program to start");
  }
  const std::string& program = argv[0];
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return absl::InternalError(Errno(("cannot open " + log_path).c_str()));
  // Everything the child needs is prepared here: after fork() it may only make
  // async-signal-safe calls (other threads may hold locks).
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const std::string exec_error = absl::StrCat("cannot execute ", program, "\n");
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    return absl::InternalError(Errno("fork"));
  }
  if (pid == 0) {
    // Child. Die with the benchmark, whatever ends it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    ::execv(args[0], args.data());
    WriteAll(STDERR_FILENO, exec_error);
    ::_exit(127);
  }
  ::close(log_fd);
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    std::string error = Errno("pidfd_open");
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return absl::InternalError(error);
  }
  std::string name = program.substr(program.rfind('/') + 1);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, pidfd, std::move(name), log_path));
}

ChildProcess::~ChildProcess() {
  if (!reaped_) Stop(absl::Seconds(10)).IgnoreError();
  ::close(pidfd_);
}

bool ChildProcess::Reap(bool block) {
  if (reaped_) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r != pid_) return false;
  reaped_ = true;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return true;
}

std::string ChildProcess::LogTail(int lines) const {
  std::ifstream in(log_path_);
  std::deque<std::string> tail;
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (static_cast<int>(tail.size()) > lines) tail.pop_front();
  }
  if (tail.empty()) return "  | (empty)";
  std::string out;
  for (const std::string& l : tail) absl::StrAppend(&out, out.empty() ? "" : "\n", "  | ", l);
  return out;
}

absl::Status ChildProcess::WaitForFile(const std::string& path, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  int inotify = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (inotify < 0) return absl::InternalError(Errno("inotify_init1"));
  // Watch first, then look: a file that appears in between is seen either way.
  if (::inotify_add_watch(inotify, dir.c_str(), IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE) < 0) {
    std::string error = Errno(("inotify_add_watch " + dir).c_str());
    ::close(inotify);
    return absl::InternalError(error);
  }
  absl::Status result;
  while (true) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0) break;
    pollfd fds[2] = {{inotify, POLLIN, 0}, {pidfd_, POLLIN, 0}};
    const int n = ::poll(fds, 2, MillisLeft(deadline));
    if (n < 0 && errno != EINTR) {
      result = absl::InternalError(Errno("poll"));
      break;
    }
    if (fds[1].revents != 0) {
      Reap(true);
      result = absl::FailedPreconditionError(absl::StrCat(name_, " exited with status ", exit_code_,
                                                          " before writing ", path,
                                                          "; its log ends:\n", LogTail(15)));
      break;
    }
    if (n == 0 && absl::Now() >= deadline) {
      result = absl::DeadlineExceededError(absl::StrCat(name_, " did not write ", path, " within ",
                                                        absl::FormatDuration(timeout),
                                                        "; its log ends:\n", LogTail(15)));
      break;
    }
    char buffer[4096];
    while (::read(inotify, buffer, sizeof(buffer)) > 0) {
    }
  }
  ::close(inotify);
  return result;
}

absl::StatusOr<int> ChildProcess::Stop(absl::Duration grace) {
  if (Reap(false)) return exit_code_;
  ::kill(pid_, SIGTERM);
  pollfd fd = {pidfd_, POLLIN, 0};
  const absl::Time deadline = absl::Now() + grace;
  while (true) {
    int n = ::poll(&fd, 1, MillisLeft(deadline));
    if (n > 0 || (n == 0 && absl::Now() >= deadline)) break;
    if (n < 0 && errno != EINTR) break;
  }
  if (!Reap(false)) {
    ::kill(pid_, SIGKILL);
    Reap(true);
    return absl::DeadlineExceededError(absl::StrCat(name_, " (pid ", pid_, ") did not stop within ",
                                                    absl::FormatDuration(grace),
                                                    " of SIGTERM; killed"));
  }
  return exit_code_;
}

absl::StatusOr<std::map<std::string, int>> ReadPortFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError("cannot read port file " + path);
  std::map<std::string, int> ports;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    int port = 0;
    if (kv.first.empty() || !absl::SimpleAtoi(kv.second, &port) || port <= 0 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": expected KEY=PORT, got '", line, "'"));
    }
    ports[kv.first] = port;
  }
  return ports;
}

}  // namespace shuttle::bench
