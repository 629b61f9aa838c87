#include "agent/vm/proc_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "agent/vm/vm_state.h"

namespace shuttle::agent::vm_internal {
namespace {

constexpr idtype_t kPidfdIdType = static_cast<idtype_t>(3);  // P_PIDFD (Linux 5.4)

// nftw() takes no context argument: the failure of the walk in progress on this thread.
thread_local int tl_remove_errno = 0;
thread_local std::string* tl_remove_failed = nullptr;

int RemoveOne(const char* path, const struct stat* st, int type, struct FTW* ftw) {
  int rc = (type == FTW_DP) ? rmdir(path) : unlink(path);
  if (rc != 0 && errno != ENOENT) {
    tl_remove_errno = errno;
    *tl_remove_failed = path;
    return 1;  // Stop the walk.
  }
  return 0;
}

}  // namespace

absl::Status ErrnoError(int err, absl::string_view what) { return absl::ErrnoToStatus(err, what); }

absl::StatusOr<int> PidfdOpen(pid_t pid) {
  const int64_t fd = syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("pidfd_open ", pid));
  return static_cast<int>(fd);
}

absl::Status PidfdSendSignal(int pidfd, int sig) {
  if (syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) != 0) {
    if (errno == ESRCH) return absl::NotFoundError("process is gone");
    return ErrnoError(errno, absl::StrCat("pidfd_send_signal ", sig));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> PidfdGetfd(int pidfd, int target_fd) {
  const int64_t fd = syscall(SYS_pidfd_getfd, pidfd, target_fd, 0);
  if (fd < 0 && errno == EBADF) {
    return absl::NotFoundError(absl::StrCat("fd ", target_fd, " is not open"));
  }
  if (fd < 0) return ErrnoError(errno, absl::StrCat("pidfd_getfd of fd ", target_fd));
  return static_cast<int>(fd);
}

bool WaitPidfdExit(int pidfd, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    struct pollfd p = {pidfd, POLLIN, 0};
    int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms < 0) ms = 0;
    int n = poll(&p, 1, static_cast<int>(ms));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return false;
  }
}

void ReapIfChild(int pidfd) {
  siginfo_t info = {};
  // ECHILD (not ours, or already reaped) is fine: then whoever is the parent reaps it.
  while (waitid(kPidfdIdType, static_cast<id_t>(pidfd), &info, WEXITED | WNOHANG) != 0 &&
         errno == EINTR) {
  }
}

absl::StatusOr<uint64_t> ReadStartTime(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/stat");
  absl::StatusOr<std::string> text = ReadSmallFile(path);
  if (!text.ok()) return text.status();
  // comm (field 2) may hold spaces and parentheses: fields 3.. start after the last ')'.
  size_t close = text->rfind(')');
  if (close == std::string::npos) return absl::InternalError(absl::StrCat(path, ": no comm"));
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(*text).substr(close + 1), ' ', absl::SkipEmpty());
  // fields[0] is field 3 (state); field 22 is fields[19].
  uint64_t start = 0;
  if (fields.size() < 20 || !absl::SimpleAtoi(fields[19], &start)) {
    return absl::InternalError(absl::StrCat(path, ": cannot parse field 22"));
  }
  return start;
}

absl::StatusOr<uint64_t> NsInode(pid_t pid, const char* kind) {
  const std::string path = absl::StrCat("/proc/", pid, "/ns/", kind);
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoError(errno, absl::StrCat("stat ", path));
  return static_cast<uint64_t>(st.st_ino);
}

absl::StatusOr<VmNamespaces> ReadNamespaces(pid_t pid) {
  VmNamespaces ns;
  struct Entry {
    const char* kind;
    uint64_t* out;
  };
  for (const Entry& e : {Entry{"mnt", &ns.mnt}, Entry{"net", &ns.net}, Entry{"ipc", &ns.ipc},
                         Entry{"uts", &ns.uts}, Entry{"pid", &ns.pid}}) {
    absl::StatusOr<uint64_t> ino = NsInode(pid, e.kind);
    if (!ino.ok()) return ino.status();
    *e.out = *ino;
  }
  return ns;
}

std::vector<pid_t> ListPids() {
  std::vector<pid_t> pids;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return pids;
  while (struct dirent* e = readdir(dir)) {
    pid_t pid = 0;
    if (absl::SimpleAtoi(e->d_name, &pid) && pid > 0) pids.push_back(pid);
  }
  closedir(dir);
  return pids;
}

absl::Status RemoveTree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(errno, absl::StrCat("stat ", path));
  }
  if (!S_ISDIR(st.st_mode)) {
    if (unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(errno, absl::StrCat("unlink ", path));
    }
    return absl::OkStatus();
  }
  std::string failed;
  tl_remove_errno = 0;
  tl_remove_failed = &failed;
  int rc = nftw(path.c_str(), RemoveOne, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
  int walk_errno = errno;
  tl_remove_failed = nullptr;
  if (rc == 0) return absl::OkStatus();
  if (tl_remove_errno != 0) return ErrnoError(tl_remove_errno, absl::StrCat("remove ", failed));
  return ErrnoError(walk_errno, absl::StrCat("walk ", path));
}

}  // namespace shuttle::agent::vm_internal
