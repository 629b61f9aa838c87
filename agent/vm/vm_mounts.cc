// VmMounter: bind mounts between VMs (see vm_mounts.h). Paths are resolved from the agent
// through /proc/INIT/root with openat2; the mount itself is made by a forked child that only
// issues raw system calls (it runs in a copy of a multi-threaded process).
#include "agent/vm/vm_mounts.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "agent/intercept/unique_fd.h"
#include "agent/vm/proc_util.h"
#include "common/status_macros.h"

namespace shuttle::agent {
namespace {

using intercept::UniqueFd;

// Set on a mount point Bind created, so that Unbind (of this or a later agent) removes only
// those. trusted.* needs CAP_SYS_ADMIN, which the agent has; tmpfs and overlayfs keep it.
constexpr char kMountPointXattr[] = "trusted.shuttle.mount-point";
// openat2 fails with EAGAIN when a rename raced one of its ".." steps under RESOLVE_IN_ROOT.
constexpr int kResolveAttempts = 8;

// "VM 'a', path '/x': what: strerror(err)", with the code that fits a path lookup: ELOOP and
// EXDEV mean the path tried to leave the root (a magic link, a loop), which is a refusal.
absl::Status PathError(const std::string& vm, const std::string& path, int err,
                       absl::string_view what) {
  const std::string message =
      absl::StrCat("VM '", vm, "', path '", path, "': ", what, ": ", strerror(err));
  switch (err) {
    case ELOOP:
    case EXDEV:
      return absl::PermissionDeniedError(
          absl::StrCat(message, " (a /proc magic link, a symlink loop or an escape)"));
    case ENOENT:
      return absl::NotFoundError(message);
    case ENOTDIR:
    case EISDIR:
    case EEXIST:
      return absl::FailedPreconditionError(message);
    default:  // ErrnoToStatus appends strerror itself.
      return absl::ErrnoToStatus(err, absl::StrCat("VM '", vm, "', path '", path, "': ", what));
  }
}

// Checks that `path` is absolute, bounded and does not climb above "/" with "..", and returns
// its components ("." and empty ones dropped, ".." kept: the kernel resolves them, since a
// component before one may be a symlink).
absl::StatusOr<std::vector<std::string>> CheckPath(const std::string& vm, const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("VM '", vm, "', path '", path, "': not an absolute path"));
  }
  if (path.size() >= PATH_MAX || path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("VM '", vm, "', path '", path, "': too long or contains a NUL byte"));
  }
  std::vector<std::string> parts;
  int depth = 0;
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    if (part == ".") continue;
    depth += part == ".." ? -1 : 1;
    if (depth < 0) {
      return absl::PermissionDeniedError(
          absl::StrCat("VM '", vm, "', path '", path, "': '..' climbs above the VM's root"));
    }
    parts.emplace_back(part);
  }
  return parts;
}

// A VM's (or the host's) root directory, opened from the agent, and the VM init's pidfd (to
// enter its mount namespace; invalid for the host).
struct VmRoot {
  UniqueFd root;
  UniqueFd pidfd;
};

absl::StatusOr<VmRoot> OpenRoot(VmManager& vms, const std::string& vm) {
  VmRoot out;
  if (vm == kHostVm) {
    out.root.reset(open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!out.root) return PathError(vm, "/", errno, "opening the host's root");
    return out;
  }
  SHUTTLE_ASSIGN_OR_RETURN(VmInfo info, vms.Get(vm));
  SHUTTLE_ASSIGN_OR_RETURN(int pidfd, vms.InitPidfd(vm));
  out.pidfd.reset(pidfd);
  const std::string root_link = absl::StrCat("/proc/", info.init_pid, "/root");
  out.root.reset(open(root_link.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  const int open_errno = errno;
  // The pid may have been reused between Get and open: the pidfd tells whether the process we
  // opened /proc/PID of is still the init (a pidfd's process cannot be replaced under it).
  if (syscall(SYS_pidfd_send_signal, out.pidfd.get(), 0, nullptr, 0) != 0) {
    return absl::NotFoundError(absl::StrCat("VM '", vm, "': its init has exited"));
  }
  if (!out.root) return PathError(vm, "/", open_errno, absl::StrCat("opening ", root_link));
  return out;
}

// openat2(root, path) with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS: ".." stops at the root,
// absolute symlinks start there, /proc magic links are refused.
absl::StatusOr<UniqueFd> ResolveInRoot(int root_fd, const std::string& vm, const std::string& path,
                                       int flags) {
  open_how how = {};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  // openat2 refuses a mode without O_CREAT or O_TMPFILE (which contains O_DIRECTORY's bit).
  if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) how.mode = 0644;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  UniqueFd fd;
  for (int attempt = 0; attempt < kResolveAttempts && !fd; ++attempt) {
    fd.reset(static_cast<int>(syscall(SYS_openat2, root_fd, path.c_str(), &how, sizeof(how))));
    if (!fd && errno != EAGAIN) break;
  }
  if (!fd) return PathError(vm, path, errno, "resolving the path in the VM's root");
  return fd;
}

std::string JoinPath(const std::vector<std::string>& parts, size_t count) {
  return absl::StrCat("/", absl::StrJoin(parts.begin(), parts.begin() + count, "/"));
}

absl::StatusOr<struct stat> Stat(int fd, const std::string& vm, const std::string& path) {
  struct stat st;
  if (fstat(fd, &st) != 0) return PathError(vm, path, errno, "fstat");
  return st;
}

// Whether `fd` is the root of a mount (something is mounted on the path it was opened by).
absl::StatusOr<bool> IsMountRoot(int fd, const std::string& vm, const std::string& path) {
  struct statx stx;
  if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &stx) != 0) {
    return PathError(vm, path, errno, "statx");
  }
  if ((stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) == 0) {
    return absl::InternalError("the kernel does not report STATX_ATTR_MOUNT_ROOT (Linux < 5.8)");
  }
  return (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
}

// The target path of a mount: absolute, not "/" and without ".." (its parents are created
// component by component, which needs the lexical path to be the real one).
absl::StatusOr<std::vector<std::string>> CheckTargetPath(const std::string& vm,
                                                         const std::string& path) {
  SHUTTLE_ASSIGN_OR_RETURN(std::vector<std::string> parts, CheckPath(vm, path));
  if (parts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("VM '", vm, "', path '", path, "': cannot mount over a VM's root"));
  }
  for (const std::string& part : parts) {
    if (part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("VM '", vm, "', path '", path, "': a mount target must not contain '..'"));
    }
  }
  return parts;
}

// Marks a mount point we created (best effort: without xattrs it merely stays after Unbind).
void MarkCreated(int parent_fd, const std::string& name, bool directory) {
  UniqueFd fd(openat(parent_fd, name.c_str(),
                     (directory ? O_RDONLY | O_DIRECTORY : O_WRONLY) | O_NOFOLLOW | O_CLOEXEC));
  if (fd) (void)fsetxattr(fd.get(), kMountPointXattr, "1", 1, 0);
}

// Resolves `parts` in the VM root, creating missing parents (0755) and the last component (an
// empty directory when `directory`, else an empty file) if absent. Returns an O_PATH fd.
absl::StatusOr<UniqueFd> EnsureMountPoint(int root_fd, const std::string& vm,
                                          const std::string& path,
                                          const std::vector<std::string>& parts, bool directory) {
  UniqueFd parent;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string prefix = JoinPath(parts, i + 1);
    const bool last = i + 1 == parts.size();
    absl::StatusOr<UniqueFd> fd = ResolveInRoot(root_fd, vm, prefix, O_PATH);
    if (absl::IsNotFound(fd.status())) {
      // Create it in the parent resolved in the previous step: a plain name, so nothing is
      // followed (mkdirat and O_CREAT|O_EXCL never follow a final symlink).
      const int dir_fd = i == 0 ? root_fd : parent.get();
      int rc;
      if (!last || directory) {
        rc = mkdirat(dir_fd, parts[i].c_str(), 0755);
      } else {
        UniqueFd created(openat(dir_fd, parts[i].c_str(),
                                O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644));
        rc = created ? 0 : -1;
      }
      if (rc != 0 && errno != EEXIST) {
        return PathError(vm, prefix, errno, "creating the mount point");
      }
      if (rc == 0 && last) MarkCreated(dir_fd, parts[i], directory);
      fd = ResolveInRoot(root_fd, vm, prefix, O_PATH);
    }
    if (!fd.ok()) return fd.status();
    SHUTTLE_ASSIGN_OR_RETURN(struct stat st, Stat(fd->get(), vm, prefix));
    if (!last && !S_ISDIR(st.st_mode)) {
      return PathError(vm, prefix, ENOTDIR, "a parent of the mount point");
    }
    if (last && S_ISDIR(st.st_mode) != directory) {
      return absl::FailedPreconditionError(
          absl::StrCat("VM '", vm, "', path '", path, "': the mount point is ",
                       directory ? "not a directory but the source is one"
                                 : "a directory but the source is not"));
    }
    parent = std::move(*fd);
  }
  return parent;
}

// What the forked child does, prepared by the parent (the child allocates nothing).
struct ChildPlan {
  enum Op { kBind, kUnmount } op = kBind;
  int source_ns = -1;     // pidfd whose mount namespace to enter first; -1: stay (the host).
  int source_fd = -1;     // kBind: what to clone.
  bool read_only = true;  // kBind.
  int target_ns = -1;     // pidfd of the target VM's init.
  int target_fd = -1;     // kBind: O_PATH fd of the mount point.
  int proc_fd = -1;       // kUnmount: the agent's /proc, to reach target_fd by a magic link.
  const char* unmount_path = nullptr;  // kUnmount: "self/fd/N" relative to proc_fd.
  int report_fd = -1;                  // Write end of the pipe for a ChildReport.
};

struct ChildReport {
  int step = 0;
  int err = 0;
};

constexpr const char* kStepNames[] = {
    "done",
    "entering the source VM's mount namespace",
    "cloning the source (open_tree OPEN_TREE_CLONE)",
    "making the clone read-only (mount_setattr)",
    "entering the target VM's mount namespace",
    "attaching the clone (move_mount)",
    "changing to /proc",
    "unmounting (umount2 MNT_DETACH)",
};

[[noreturn]] void ChildFail(const ChildPlan& plan, int step) {
  ChildReport report{step, errno};
  (void)!write(plan.report_fd, &report, sizeof(report));
  _exit(1);
}

// Runs in the child: raw system calls only.
[[noreturn]] void ChildMain(const ChildPlan& plan) {
  if (plan.op == ChildPlan::kBind) {
    if (plan.source_ns >= 0 && setns(plan.source_ns, CLONE_NEWNS) != 0) ChildFail(plan, 1);
    const int tree =
        open_tree(plan.source_fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH);
    if (tree < 0) ChildFail(plan, 2);
    if (plan.read_only) {
      struct mount_attr attr = {};
      attr.attr_set = MOUNT_ATTR_RDONLY;
      if (mount_setattr(tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) != 0) ChildFail(plan, 3);
    }
    if (setns(plan.target_ns, CLONE_NEWNS) != 0) ChildFail(plan, 4);
    if (move_mount(tree, "", plan.target_fd, "",
                   MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) != 0) {
      ChildFail(plan, 5);
    }
  } else {
    // umount2 takes only a path, which must name a mount of the caller's namespace: the
    // agent's /proc/self/fd/N link leads to the mount point the parent resolved, without
    // resolving its name again (the target VM's own /proc does not show this process).
    if (setns(plan.target_ns, CLONE_NEWNS) != 0) ChildFail(plan, 4);
    if (fchdir(plan.proc_fd) != 0) ChildFail(plan, 6);
    if (umount2(plan.unmount_path, MNT_DETACH) != 0) ChildFail(plan, 7);
  }
  ChildReport report;
  (void)!write(plan.report_fd, &report, sizeof(report));
  _exit(0);
}

// Forks a child running `plan` and waits for it. `where` prefixes errors.
absl::Status RunChild(ChildPlan plan, const std::string& where) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return vm_internal::ErrnoError(errno, "pipe2");
  UniqueFd read_end(pipe_fds[0]);
  UniqueFd write_end(pipe_fds[1]);
  plan.report_fd = write_end.get();
  // A raw clone, not fork(): no atfork handlers run (they may take locks another thread of
  // the agent holds), and the child uses nothing of libc beyond system call wrappers.
  const pid_t pid = static_cast<pid_t>(syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, 0));
  if (pid < 0) return vm_internal::ErrnoError(errno, absl::StrCat(where, ": clone"));
  if (pid == 0) ChildMain(plan);
  write_end.reset();
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return vm_internal::ErrnoError(errno, absl::StrCat(where, ": waitpid"));
  }
  ChildReport report;
  ssize_t n;
  do {
    n = read(read_end.get(), &report, sizeof(report));
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof(report))) {
    return absl::InternalError(absl::StrCat(
        where, ": the mount helper process died without a report (wait status ", status, ")"));
  }
  if (report.step == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    return absl::OkStatus();
  }
  const int step =
      report.step > 0 && report.step < static_cast<int>(std::size(kStepNames)) ? report.step : 0;
  return absl::ErrnoToStatus(report.err, absl::StrCat(where, ": ", kStepNames[step]));
}

// Detaches the mount on `target_fd` (the root of a mount) in the namespace of `target_ns`.
absl::Status Unmount(int target_ns, int target_fd, const std::string& where) {
  UniqueFd proc(open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!proc) return vm_internal::ErrnoError(errno, "open /proc");
  const std::string link = absl::StrCat("self/fd/", target_fd);
  ChildPlan plan;
  plan.op = ChildPlan::kUnmount;
  plan.target_ns = target_ns;
  plan.proc_fd = proc.get();
  plan.unmount_path = link.c_str();
  return RunChild(plan, where);
}

}  // namespace

absl::StatusOr<int> VmMounter::OpenInVm(const std::string& vm, const std::string& path, int flags) {
  SHUTTLE_RETURN_IF_ERROR(CheckPath(vm, path).status());
  SHUTTLE_ASSIGN_OR_RETURN(VmRoot root, OpenRoot(vms_, vm));
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd fd, ResolveInRoot(root.root.get(), vm, path, flags));
  return fd.release();
}

absl::Status VmMounter::Bind(const BindSpec& spec) {
  SHUTTLE_RETURN_IF_ERROR(CheckPath(spec.source_vm, spec.source_path).status());
  SHUTTLE_ASSIGN_OR_RETURN(VmRoot source, OpenRoot(vms_, spec.source_vm));
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd source_fd, ResolveInRoot(source.root.get(), spec.source_vm,
                                                             spec.source_path, O_PATH));
  return BindFd(spec.source_vm, source_fd.get(), spec.target_vm, spec.target_path, spec.read_only);
}

absl::Status VmMounter::BindFd(const std::string& source_vm, int source_fd,
                               const std::string& target_vm, const std::string& target_path,
                               bool read_only) {
  if (target_vm == kHostVm) {
    return absl::InvalidArgumentError(
        absl::StrCat("bind onto '", target_path, "': the target must be a VM, not the host"));
  }
  SHUTTLE_ASSIGN_OR_RETURN(std::vector<std::string> parts, CheckTargetPath(target_vm, target_path));
  const std::string where = absl::StrCat("bind from VM '", source_vm, "' onto VM '", target_vm,
                                         "', path '", target_path, "'");
  struct stat source_st;
  if (fstat(source_fd, &source_st) != 0) {
    return vm_internal::ErrnoError(errno, absl::StrCat(where, ": fstat of the source"));
  }
  VmRoot source;
  if (source_vm != kHostVm) {
    // Only the namespace is needed: the source is already open.
    SHUTTLE_ASSIGN_OR_RETURN(int pidfd, vms_.InitPidfd(source_vm));
    source.pidfd.reset(pidfd);
  }
  SHUTTLE_ASSIGN_OR_RETURN(VmRoot target, OpenRoot(vms_, target_vm));

  absl::MutexLock lock(&mu_);
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd target_fd,
                           EnsureMountPoint(target.root.get(), target_vm, target_path, parts,
                                            S_ISDIR(source_st.st_mode)));
  SHUTTLE_ASSIGN_OR_RETURN(bool mounted, IsMountRoot(target_fd.get(), target_vm, target_path));
  if (mounted) {
    SHUTTLE_ASSIGN_OR_RETURN(struct stat target_st, Stat(target_fd.get(), target_vm, target_path));
    struct statvfs vfs;
    if (fstatvfs(target_fd.get(), &vfs) != 0) {
      return vm_internal::ErrnoError(errno, absl::StrCat(where, ": fstatvfs"));
    }
    const bool same_source =
        target_st.st_dev == source_st.st_dev && target_st.st_ino == source_st.st_ino;
    if (same_source && ((vfs.f_flag & ST_RDONLY) != 0) == read_only) return absl::OkStatus();
    // Something else (or the same file with the other flag): replace it.
    SHUTTLE_RETURN_IF_ERROR(Unmount(target.pidfd.get(), target_fd.get(), where));
    SHUTTLE_ASSIGN_OR_RETURN(target_fd,
                             ResolveInRoot(target.root.get(), target_vm, target_path, O_PATH));
  }
  ChildPlan plan;
  plan.op = ChildPlan::kBind;
  plan.source_ns = source.pidfd.get();
  plan.source_fd = source_fd;
  plan.read_only = read_only;
  plan.target_ns = target.pidfd.get();
  plan.target_fd = target_fd.get();
  return RunChild(plan, where);
}

absl::Status VmMounter::Unbind(const std::string& target_vm, const std::string& target_path) {
  if (target_vm == kHostVm) {
    return absl::InvalidArgumentError(
        absl::StrCat("unbind '", target_path, "': the host's mounts are never touched"));
  }
  SHUTTLE_ASSIGN_OR_RETURN(std::vector<std::string> parts, CheckTargetPath(target_vm, target_path));
  SHUTTLE_ASSIGN_OR_RETURN(VmRoot target, OpenRoot(vms_, target_vm));
  const std::string where =
      absl::StrCat("unbind in VM '", target_vm, "', path '", target_path, "'");

  absl::MutexLock lock(&mu_);
  absl::StatusOr<UniqueFd> target_fd =
      ResolveInRoot(target.root.get(), target_vm, target_path, O_PATH);
  if (absl::IsNotFound(target_fd.status())) return absl::OkStatus();
  if (!target_fd.ok()) return target_fd.status();
  SHUTTLE_ASSIGN_OR_RETURN(bool mounted, IsMountRoot(target_fd->get(), target_vm, target_path));
  if (mounted) {
    SHUTTLE_RETURN_IF_ERROR(Unmount(target.pidfd.get(), target_fd->get(), where));
  }
  // Remove the mount point if Bind created it, it is empty, and nothing else is mounted there.
  SHUTTLE_ASSIGN_OR_RETURN(UniqueFd parent,
                           ResolveInRoot(target.root.get(), target_vm,
                                         JoinPath(parts, parts.size() - 1), O_PATH | O_DIRECTORY));
  const std::string& name = parts.back();
  UniqueFd point(openat(parent.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!point) return absl::OkStatus();  // Already gone.
  SHUTTLE_ASSIGN_OR_RETURN(bool still_mounted, IsMountRoot(point.get(), target_vm, target_path));
  SHUTTLE_ASSIGN_OR_RETURN(struct stat st, Stat(point.get(), target_vm, target_path));
  if (still_mounted || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) return absl::OkStatus();
  // Only a regular file or a directory is opened for its xattr (opening a device or a FIFO
  // could have effects); an O_PATH descriptor cannot read xattrs.
  UniqueFd readable(openat(parent.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  struct stat readable_st;
  char mark[4];
  if (!readable || fstat(readable.get(), &readable_st) != 0 || readable_st.st_ino != st.st_ino ||
      readable_st.st_dev != st.st_dev ||
      fgetxattr(readable.get(), kMountPointXattr, mark, sizeof(mark)) < 0) {
    return absl::OkStatus();  // Not ours (no mark), or replaced meanwhile.
  }
  if (S_ISREG(st.st_mode) && st.st_size == 0) {
    if (unlinkat(parent.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
      return PathError(target_vm, target_path, errno, "removing the mount point");
    }
  } else if (S_ISDIR(st.st_mode)) {
    // rmdir fails on a directory that is not empty: then it stays, which is what we want.
    if (unlinkat(parent.get(), name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT &&
        errno != ENOTEMPTY && errno != EEXIST) {
      return PathError(target_vm, target_path, errno, "removing the mount point");
    }
  }
  return absl::OkStatus();
}

}  // namespace shuttle::agent
