#include "agent/vm/vm_manager.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/vm/proc_util.h"
#include "agent/vm/vm_state.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace shuttle::agent {

using vm_internal::ErrnoError;

namespace {

// The init's descriptor layout and deposit protocol; must match driver-shim/linux/vm_init.c.
constexpr int kInitRecvFd = 3;  // The init's end of the deposit socket pair.
constexpr int kInitSendFd = 4;  // The agent's end, kept by the init for pidfd_getfd.
constexpr int kInitSetupFd = 5;
constexpr uint32_t kMsgMagic = 0x31564853u;  // "SHV1"
constexpr uint32_t kMsgDeposit = 1;
constexpr uint32_t kAckTruncated = 1;
struct InitMsg {
  uint32_t magic;
  uint32_t type;
  uint64_t cookie;
};
struct InitAck {
  uint32_t magic;
  uint32_t type;
  uint64_t cookie;
  uint32_t accepted;
  uint32_t rejected;
  uint32_t held;
  uint32_t flags;
};
static_assert(sizeof(InitMsg) == 16 && sizeof(InitAck) == 32, "wire sizes of vm_init.c");

constexpr absl::Duration kDepositTimeout = absl::Seconds(5);
constexpr const char* kSeccompListenerLink = "anon_inode:seccomp notify";

// Closes an fd on scope exit unless released.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& other) noexcept : fd_(other.Release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = other.Release();
    }
    return *this;
  }
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

absl::Status VmError(const std::string& name, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("vm ", name, ": ", status.message()));
}

absl::Status MakeDir(const std::string& path, mode_t mode) {
  if (mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return ErrnoError(errno, absl::StrCat("mkdir ", path));
  }
  return absl::OkStatus();
}

absl::Status MakeDirs(const std::string& path, mode_t mode) {
  for (size_t pos = 1; pos != std::string::npos;) {
    pos = path.find('/', pos + 1);
    SHUTTLE_RETURN_IF_ERROR(MakeDir(path.substr(0, pos), mode));
  }
  return absl::OkStatus();
}

// Kills and waits for every process outside the VM's PID namespace that still shares one of its
// other namespaces (e.g. one that joined only its mount namespace), which would keep the VM's
// mounts alive. Must run while the init is alive: only then do the inodes name these namespaces
// for sure (the kernel reuses namespace inode numbers once they are freed).
std::vector<int> CollectStragglers(const std::string& name, const VmNamespaces& ns) {
  std::vector<int> pidfds;
  const pid_t self = getpid();
  for (pid_t pid : vm_internal::ListPids()) {
    if (pid == self) continue;
    absl::StatusOr<VmNamespaces> theirs = vm_internal::ReadNamespaces(pid);
    if (!theirs.ok() || theirs->pid == ns.pid) continue;
    if (theirs->mnt != ns.mnt && theirs->net != ns.net && theirs->ipc != ns.ipc &&
        theirs->uts != ns.uts) {
      continue;
    }
    absl::StatusOr<int> pidfd = vm_internal::PidfdOpen(pid);
    if (!pidfd.ok()) continue;
    // Re-check through the pidfd's process: the pid may have been reused in between.
    absl::StatusOr<VmNamespaces> again = vm_internal::ReadNamespaces(pid);
    if (!again.ok() || !(*again == *theirs) || !vm_internal::PidfdSendSignal(*pidfd, 0).ok()) {
      close(*pidfd);
      continue;
    }
    SHUTTLE_LOG(WARNING) << "vm " << name << ": killing pid " << pid
                         << ", which joined some of its namespaces from outside";
    pidfds.push_back(*pidfd);
  }
  return pidfds;
}

// State dirs held by a VmManager of this process.
absl::Mutex open_dirs_mu(absl::kConstInit);
absl::flat_hash_set<std::string>& OpenDirs() ABSL_EXCLUSIVE_LOCKS_REQUIRED(open_dirs_mu) {
  static auto* dirs = new absl::flat_hash_set<std::string>();
  return *dirs;
}

bool ClaimStateDir(const std::string& dir) {
  absl::MutexLock lock(&open_dirs_mu);
  return OpenDirs().insert(dir).second;
}

void ReleaseStateDir(const std::string& dir) {
  absl::MutexLock lock(&open_dirs_mu);
  OpenDirs().erase(dir);
}

// The child's side of Start(), pid 1 of the new PID namespace: puts `sources` at fds 0..5 and
// execs the init. It runs between clone3 and execve in a copy of a possibly multi-threaded
// agent, so it makes raw system calls only: no libc function that may take a lock, and no
// sanitizer interceptor, since another thread may have held either at clone time.
[[noreturn]] void ExecInitChild(const int (&sources)[6], char* const* argv, char* const* envp,
                                const std::string& exec_error_prefix) {
  int moved[6];
  // First out of the way (to fds >= 16 that close at exec), then into place.
  for (int i = 0; i < 6; ++i) {
    moved[i] = static_cast<int>(syscall(SYS_fcntl, sources[i], F_DUPFD_CLOEXEC, 16));
    if (moved[i] < 0) syscall(SYS_exit_group, 126);
  }
  for (int i = 0; i < 6; ++i) {
    if (syscall(SYS_dup3, moved[i], i, 0) < 0) syscall(SYS_exit_group, 126);
  }
  const uint64_t no_signals = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &no_signals, nullptr, sizeof(no_signals));
  syscall(SYS_execve, argv[0], argv, envp);
  // Report "Eexec PATH: errno N" as one message (strerror is not async-signal-safe).
  char digits[16];
  size_t n = sizeof(digits);
  int err = errno;
  do {
    digits[--n] = static_cast<char>('0' + err % 10);
    err /= 10;
  } while (err > 0 && n > 0);
  struct iovec iov[2] = {{const_cast<char*>(exec_error_prefix.data()), exec_error_prefix.size()},
                         {digits + n, sizeof(digits) - n}};
  syscall(SYS_writev, kInitSetupFd, iov, 2);
  syscall(SYS_exit_group, 127);
  __builtin_unreachable();
}

}  // namespace

struct VmManager::Vm {
  VmInfo info;
  uint64_t init_start_time = 0;
  int pidfd = -1;  // Owned; identifies the init for its whole life.

  absl::Mutex deposit_mu;
  int deposit_fd ABSL_GUARDED_BY(deposit_mu) = -1;  // Our copy of the init's fd 4, lazily.

  ~Vm() {
    if (pidfd >= 0) close(pidfd);
    absl::MutexLock lock(&deposit_mu);
    if (deposit_fd >= 0) close(deposit_fd);
  }
};

absl::Status ValidateVmName(const std::string& name) {
  if (name.empty() || name.size() > 31) {
    return absl::InvalidArgumentError(
        absl::StrCat("vm name '", name, "': must be 1 to 31 characters"));
  }
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && i > 0);
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("vm name '", name, "': only a-z, 0-9 and '-' (not first) are allowed"));
    }
  }
  if (name == "host") {
    return absl::InvalidArgumentError("vm name 'host' is reserved for the host itself");
  }
  return absl::OkStatus();
}

VmManager::VmManager(VmManagerOptions options, int lock_fd)
    : options_(std::move(options)), lock_fd_(lock_fd) {}

VmManager::~VmManager() {
  close(lock_fd_);  // Releases the record lock.
  ReleaseStateDir(options_.state_dir);
}

std::string VmManager::VmDir(const std::string& name) const {
  return absl::StrCat(options_.state_dir, "/", name);
}

absl::StatusOr<std::unique_ptr<VmManager>> VmManager::Open(VmManagerOptions options) {
  if (options.state_dir.empty() || options.state_dir[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("vm state dir '", options.state_dir, "' must be an absolute path"));
  }
  SHUTTLE_RETURN_IF_ERROR(MakeDirs(options.state_dir, 0700));
  char real[PATH_MAX];
  if (realpath(options.state_dir.c_str(), real) == nullptr) {
    return ErrnoError(errno, absl::StrCat("resolve vm state dir ", options.state_dir));
  }
  options.state_dir = real;
  for (char c : options.state_dir) {
    if (c == ',' || c == ':' || c == '\\' || c == ' ' || c == '\t' || c == '\n') {
      return absl::InvalidArgumentError(absl::StrCat(
          "vm state dir ", options.state_dir,
          ": may not contain ',', ':', '\\' or whitespace (it goes into overlay mount options)"));
    }
  }
  if (options.hidden_paths.size() > 8) {
    return absl::InvalidArgumentError("at most 8 hidden paths may be given for VMs");
  }
  for (const std::string& path : options.hidden_paths) {
    if (path.empty() || path[0] != '/' || path.find("/..") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("hidden path '", path, "' must be absolute and free of '..'"));
    }
  }
  if (access(options.init_binary.c_str(), X_OK) != 0) {
    return ErrnoError(errno, absl::StrCat("vm init binary ", options.init_binary));
  }
  // Exclusive use of the state dir: a process-wide registry against a second manager in this
  // process, and a POSIX record lock against another process. Record locks, unlike flock(),
  // are not inherited by forked children, so a child of this agent that outlives it (or one
  // forked without exec) cannot keep a restarted agent from re-adopting its VMs.
  if (!ClaimStateDir(options.state_dir)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "vm state dir ", options.state_dir, " is in use by another VM manager in this process"));
  }
  const std::string lock_path = options.state_dir + "/.lock";
  int lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) {
    int err = errno;
    ReleaseStateDir(options.state_dir);
    return ErrnoError(err, absl::StrCat("open ", lock_path));
  }
  struct flock lock = {};
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;
  if (fcntl(lock_fd, F_SETLK, &lock) != 0) {
    int err = errno;
    close(lock_fd);
    ReleaseStateDir(options.state_dir);
    if (err == EACCES || err == EAGAIN) {
      lock = {};
      lock.l_type = F_WRLCK;
      lock.l_whence = SEEK_SET;
      int probe = open(lock_path.c_str(), O_RDONLY | O_CLOEXEC);
      pid_t holder = 0;
      if (probe >= 0 && fcntl(probe, F_GETLK, &lock) == 0) holder = lock.l_pid;
      if (probe >= 0) close(probe);
      return absl::FailedPreconditionError(absl::StrCat("vm state dir ", options.state_dir,
                                                        " is in use by another VM manager (pid ",
                                                        holder, ")"));
    }
    return ErrnoError(err, absl::StrCat("lock ", lock_path));
  }
  std::unique_ptr<VmManager> manager(new VmManager(std::move(options), lock_fd));
  SHUTTLE_RETURN_IF_ERROR(manager->Adopt());
  return manager;
}

absl::Status VmManager::Adopt() {
  DIR* dir = opendir(options_.state_dir.c_str());
  if (dir == nullptr) return ErrnoError(errno, absl::StrCat("open ", options_.state_dir));
  std::vector<std::string> names;
  while (struct dirent* e = readdir(dir)) {
    std::string entry = e->d_name;
    if (entry == "." || entry == ".." || entry == ".lock") continue;
    names.push_back(std::move(entry));
  }
  closedir(dir);
  std::sort(names.begin(), names.end());

  for (const std::string& name : names) {
    const std::string vm_dir = VmDir(name);
    auto discard = [&](absl::string_view why) {
      absl::Status removed = vm_internal::RemoveTree(vm_dir);
      if (removed.ok()) {
        SHUTTLE_LOG(INFO) << "vm " << name << ": " << why << "; removed " << vm_dir;
      } else {
        SHUTTLE_LOG(ERROR) << "vm " << name << ": " << why << "; could not remove it: " << removed;
      }
    };
    if (!ValidateVmName(name).ok()) {
      SHUTTLE_LOG(WARNING) << "ignoring " << vm_dir << ": not a VM name";
      continue;
    }
    const std::string state_path = vm_dir + "/state";
    absl::StatusOr<std::string> text = ReadSmallFile(state_path);
    if (!text.ok()) {
      // A VM whose Create never committed: its init exits by itself once the creating agent's
      // end of the setup channel is closed, so only the directories are left.
      discard(absl::StrCat("no state (", text.status().message(), ")"));
      continue;
    }
    absl::StatusOr<VmRecord> record = ParseVmRecord(*text);
    if (!record.ok() || record->name != name) {
      discard(absl::StrCat("unreadable state ", state_path, ": ",
                           record.ok() ? "name mismatch" : record.status().message()));
      continue;
    }
    absl::StatusOr<int> pidfd = vm_internal::PidfdOpen(record->init_pid);
    if (!pidfd.ok()) {
      discard(absl::StrCat("init ", record->init_pid, " is gone"));
      continue;
    }
    Fd pidfd_owner(*pidfd);
    absl::StatusOr<uint64_t> start = vm_internal::ReadStartTime(record->init_pid);
    absl::StatusOr<VmNamespaces> ns = vm_internal::ReadNamespaces(record->init_pid);
    // Checked after pidfd_open: if the pid still names the recorded init now, and that process
    // is alive through the pidfd afterwards, the pidfd is the init's.
    if (!start.ok() || *start != record->init_start_time || !ns.ok() || !(*ns == record->ns) ||
        !vm_internal::PidfdSendSignal(pidfd_owner.get(), 0).ok()) {
      discard(
          absl::StrCat("init ", record->init_pid, " is gone (pid reused or namespaces differ)"));
      continue;
    }
    auto vm = std::make_shared<Vm>();
    vm->info.name = name;
    vm->info.init_pid = record->init_pid;
    vm->info.ns = record->ns;
    vm->info.upper_dir = vm_dir + "/upper";
    vm->info.created = record->created;
    vm->init_start_time = record->init_start_time;
    vm->pidfd = pidfd_owner.Release();
    absl::MutexLock lock(&mu_);
    IndexLocked(*vm);
    vms_[name] = std::move(vm);
    SHUTTLE_LOG(INFO) << "vm " << name << ": adopted (init pid " << record->init_pid << ")";
  }
  return absl::OkStatus();
}

void VmManager::IndexLocked(const Vm& vm) {
  by_mnt_ns_[vm.info.ns.mnt] = vm.info.name;
  by_pid_ns_[vm.info.ns.pid] = vm.info.name;
}

void VmManager::UnindexLocked(const Vm& vm) {
  by_mnt_ns_.erase(vm.info.ns.mnt);
  by_pid_ns_.erase(vm.info.ns.pid);
}

absl::StatusOr<std::shared_ptr<VmManager::Vm>> VmManager::Find(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = vms_.find(name);
  if (it == vms_.end()) return absl::NotFoundError(absl::StrCat("vm ", name, ": no such VM"));
  return it->second;
}

absl::StatusOr<VmInfo> VmManager::Create(const std::string& name) {
  SHUTTLE_RETURN_IF_ERROR(ValidateVmName(name));
  {
    absl::MutexLock lock(&mu_);
    if (vms_.contains(name) || busy_.contains(name)) {
      return absl::AlreadyExistsError(absl::StrCat("vm ", name, ": already exists"));
    }
    busy_.insert(name);
  }
  absl::StatusOr<std::shared_ptr<Vm>> vm = Start(name);
  std::function<void()> changed;
  {
    absl::MutexLock lock(&mu_);
    busy_.erase(name);
    if (!vm.ok()) return vm.status();
    IndexLocked(**vm);
    vms_[name] = *vm;
    changed = on_change_;
  }
  SHUTTLE_LOG(INFO) << "vm " << name << ": created (init pid " << (*vm)->info.init_pid << ")";
  if (changed) changed();
  return (*vm)->info;
}

void VmManager::set_on_change(std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  on_change_ = std::move(callback);
}

// Builds VM `name`: its directories, the init in new namespaces (clone3), the init's report,
// the state file, the commit. On failure kills what it started and removes the directories.
absl::StatusOr<std::shared_ptr<VmManager::Vm>> VmManager::Start(const std::string& name) {
  const std::string vm_dir = VmDir(name);
  // Leftovers of an earlier failure (no live VM: Open adopted or removed every VM dir).
  absl::Status cleared = vm_internal::RemoveTree(vm_dir);
  if (!cleared.ok()) return VmError(name, cleared);
  auto fail = [&](const absl::Status& status) -> absl::Status {
    absl::Status removed = vm_internal::RemoveTree(vm_dir);
    if (!removed.ok()) {
      SHUTTLE_LOG(ERROR) << "vm " << name << ": cleanup: " << removed;
    }
    return VmError(name, status);
  };
  for (const char* sub : {"", "/upper", "/work", "/merged"}) {
    absl::Status made = MakeDir(vm_dir + sub, sub[0] == '\0' ? 0700 : 0755);
    if (!made.ok()) return fail(made);
  }
  const std::string log_path = vm_dir + "/init.log";
  Fd log(open(log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
  if (log.get() < 0) return fail(ErrnoError(errno, absl::StrCat("open ", log_path)));
  Fd devnull(open("/dev/null", O_RDWR | O_CLOEXEC));
  if (devnull.get() < 0) return fail(ErrnoError(errno, "open /dev/null"));
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
    return fail(ErrnoError(errno, "deposit socketpair"));
  }
  Fd init_recv(pair[0]), init_send(pair[1]);
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
    return fail(ErrnoError(errno, "setup socketpair"));
  }
  Fd setup(pair[0]), setup_child(pair[1]);

  // Everything the child touches is prepared here: between clone3 and execve it may only make
  // raw system calls (see ExecInitChild).
  std::vector<std::string> args = {
      options_.init_binary, "--name", name, "--vm-dir", vm_dir, "--hide", options_.state_dir};
  for (const std::string& path : options_.hidden_paths) {
    args.push_back("--hide");
    args.push_back(path);
  }
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  char env_path[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  char* envp[] = {env_path, nullptr};
  const std::string exec_error_prefix = absl::StrCat("Eexec ", options_.init_binary, ": errno ");
  const int sources[6] = {devnull.get(),   log.get(),       log.get(),
                          init_recv.get(), init_send.get(), setup_child.get()};
  static_assert(kInitRecvFd == 3 && kInitSendFd == 4 && kInitSetupFd == 5);

  int pidfd = -1;
  struct clone_args cl = {};
  cl.flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWPID | CLONE_PIDFD;
  cl.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  cl.exit_signal = SIGCHLD;
  const int64_t pid = syscall(SYS_clone3, &cl, sizeof(cl));
  if (pid == 0) ExecInitChild(sources, argv.data(), envp, exec_error_prefix);
  if (pid < 0) return fail(ErrnoError(errno, "clone3 with new namespaces"));
  Fd pidfd_owner(pidfd);
  setup_child.Reset();
  init_recv.Reset();
  log.Reset();
  devnull.Reset();

  auto kill_and_fail = [&](const absl::Status& status) -> absl::Status {
    (void)vm_internal::PidfdSendSignal(pidfd_owner.get(), SIGKILL);
    if (!vm_internal::WaitPidfdExit(pidfd_owner.get(), options_.destroy_timeout)) {
      SHUTTLE_LOG(ERROR) << "vm " << name << ": init " << pid << " survived SIGKILL";
    }
    vm_internal::ReapIfChild(pidfd_owner.get());
    return fail(status);
  };

  // The init's report: "K" or "E<step>: <error>"; EOF if it died first.
  struct pollfd p = {setup.get(), POLLIN, 0};
  int ready;
  do {
    ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(options_.setup_timeout)));
  } while (ready < 0 && errno == EINTR);
  if (ready == 0) {
    return kill_and_fail(absl::DeadlineExceededError(absl::StrCat(
        "init did not finish setup within ", absl::FormatDuration(options_.setup_timeout))));
  }
  char report[1024];
  ssize_t n = recv(setup.get(), report, sizeof(report), MSG_DONTWAIT);
  if (n <= 0) {
    return kill_and_fail(absl::InternalError(
        absl::StrCat("init exited during setup without a report; see ", log_path)));
  }
  if (report[0] != 'K') {
    std::string what(report + 1, static_cast<size_t>(n - 1));
    return kill_and_fail(absl::InternalError(what));
  }

  auto vm = std::make_shared<Vm>();
  vm->info.name = name;
  vm->info.init_pid = static_cast<pid_t>(pid);
  vm->info.upper_dir = vm_dir + "/upper";
  vm->info.created = absl::Now();
  absl::StatusOr<uint64_t> start = vm_internal::ReadStartTime(vm->info.init_pid);
  if (!start.ok()) return kill_and_fail(start.status());
  vm->init_start_time = *start;
  absl::StatusOr<VmNamespaces> ns = vm_internal::ReadNamespaces(vm->info.init_pid);
  if (!ns.ok()) return kill_and_fail(ns.status());
  vm->info.ns = *ns;

  VmRecord record;
  record.name = name;
  record.init_pid = vm->info.init_pid;
  record.init_start_time = vm->init_start_time;
  record.ns = vm->info.ns;
  record.created = vm->info.created;
  absl::Status written = WriteFileAtomically(vm_dir + "/state", SerializeVmRecord(record));
  if (!written.ok()) return kill_and_fail(written);
  if (send(setup.get(), "C", 1, MSG_NOSIGNAL) != 1) {
    return kill_and_fail(ErrnoError(errno, "commit to init"));
  }
  vm->pidfd = pidfd_owner.Release();
  {
    absl::MutexLock lock(&vm->deposit_mu);
    vm->deposit_fd = init_send.Release();
  }
  return vm;
}

absl::Status VmManager::Destroy(const std::string& name) {
  std::shared_ptr<Vm> vm;
  {
    absl::MutexLock lock(&mu_);
    auto it = vms_.find(name);
    if (it == vms_.end() || busy_.contains(name)) {
      return absl::NotFoundError(absl::StrCat("vm ", name, ": no such VM"));
    }
    vm = it->second;
    busy_.insert(name);
  }
  auto finish = [&](bool gone) {
    absl::MutexLock lock(&mu_);
    busy_.erase(name);
    if (gone) {
      UnindexLocked(*vm);
      vms_.erase(name);
    }
  };

  std::vector<int> stragglers = CollectStragglers(name, vm->info.ns);
  absl::Status killed = vm_internal::PidfdSendSignal(vm->pidfd, SIGKILL);
  if (!killed.ok() && killed.code() != absl::StatusCode::kNotFound) {
    for (int fd : stragglers) close(fd);
    finish(false);
    return VmError(name, absl::Status(killed.code(), absl::StrCat("kill init ", vm->info.init_pid,
                                                                  ": ", killed.message())));
  }
  bool exited = vm_internal::WaitPidfdExit(vm->pidfd, options_.destroy_timeout);
  vm_internal::ReapIfChild(vm->pidfd);
  for (int fd : stragglers) {
    (void)vm_internal::PidfdSendSignal(fd, SIGKILL);
    // Not reaped here: such a process is someone else's child, and its exit status theirs.
    if (!vm_internal::WaitPidfdExit(fd, options_.destroy_timeout)) {
      SHUTTLE_LOG(ERROR) << "vm " << name << ": a process sharing its namespaces survived SIGKILL";
    }
    close(fd);
  }
  if (!exited) {
    finish(false);
    return absl::DeadlineExceededError(
        absl::StrCat("vm ", name, ": init ", vm->info.init_pid, " did not exit within ",
                     absl::FormatDuration(options_.destroy_timeout), " of SIGKILL"));
  }
  // The VM is gone from here on, whatever happens to its directories.
  finish(true);
  std::function<void()> changed;
  {
    absl::MutexLock lock(&mu_);
    changed = on_change_;
  }
  if (changed) changed();
  absl::Status removed = vm_internal::RemoveTree(VmDir(name));
  if (!removed.ok()) return VmError(name, removed);
  SHUTTLE_LOG(INFO) << "vm " << name << ": destroyed";
  return absl::OkStatus();
}

std::vector<VmInfo> VmManager::List() const {
  std::vector<VmInfo> out;
  {
    absl::ReaderMutexLock lock(&mu_);
    out.reserve(vms_.size());
    for (const auto& [name, vm] : vms_) out.push_back(vm->info);
  }
  std::sort(out.begin(), out.end(),
            [](const VmInfo& a, const VmInfo& b) { return a.name < b.name; });
  return out;
}

absl::StatusOr<VmInfo> VmManager::Get(const std::string& name) const {
  SHUTTLE_ASSIGN_OR_RETURN(std::shared_ptr<Vm> vm, Find(name));
  return vm->info;
}

namespace {

// The inode number of /proc/PID/ns/KIND from the link's text ("mnt:[4026531841]"): the same
// number stat() gives, without making the kernel build and free a namespace inode and dentry
// on every call (stat follows the link; readlink does not). 0 if the process is gone.
uint64_t NamespaceInode(pid_t pid, const char* kind) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/ns/%s", static_cast<int>(pid), kind);
  char link[64];
  ssize_t n = readlink(path, link, sizeof(link) - 1);
  if (n <= 0) return 0;
  link[n] = '\0';
  const char* open = strchr(link, '[');
  if (open == nullptr) return 0;
  char* end = nullptr;
  unsigned long long inode = strtoull(open + 1, &end, 10);
  return (end != nullptr && *end == ']') ? static_cast<uint64_t>(inode) : 0;
}

}  // namespace

std::optional<std::string> VmManager::VmOfPid(pid_t pid) const {
  const uint64_t mnt = NamespaceInode(pid, "mnt");
  if (mnt == 0) return std::nullopt;
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = by_mnt_ns_.find(mnt);
    if (it != by_mnt_ns_.end()) return it->second;
  }
  // Not in a VM's mount namespace: maybe a process that joined only its PID namespace.
  const uint64_t pid_ns = NamespaceInode(pid, "pid");
  if (pid_ns == 0) return std::nullopt;
  absl::ReaderMutexLock lock(&mu_);
  auto it = by_pid_ns_.find(pid_ns);
  if (it != by_pid_ns_.end()) return it->second;
  return std::nullopt;
}

absl::Status VmManager::DepositFd(const std::string& name, int fd) {
  SHUTTLE_ASSIGN_OR_RETURN(std::shared_ptr<Vm> vm, Find(name));
  if (fd < 0 || fcntl(fd, F_GETFD) < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vm ", name, ": deposit fd ", fd, ": not an open descriptor"));
  }
  // Unique across agent restarts, so a stale reply left in the socket by an earlier agent is
  // never taken for ours.
  static std::atomic<uint64_t> counter{0};
  const uint64_t cookie = (static_cast<uint64_t>(getpid()) << 40) ^
                          (static_cast<uint64_t>(absl::ToUnixNanos(absl::Now())) << 8) ^
                          counter.fetch_add(1);
  absl::MutexLock lock(&vm->deposit_mu);
  if (vm->deposit_fd < 0) {
    absl::StatusOr<int> got = vm_internal::PidfdGetfd(vm->pidfd, kInitSendFd);
    if (!got.ok()) {
      return VmError(
          name, absl::Status(got.status().code(),
                             absl::StrCat("take deposit socket from init ", vm->info.init_pid, ": ",
                                          got.status().message())));
    }
    vm->deposit_fd = *got;
  }
  InitMsg msg = {kMsgMagic, kMsgDeposit, cookie};
  struct iovec iov = {&msg, sizeof(msg)};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control = {};
  struct msghdr mh = {};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control.buf;
  mh.msg_controllen = sizeof(control.buf);
  struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  ssize_t sent;
  do {
    sent = sendmsg(vm->deposit_fd, &mh, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent != static_cast<ssize_t>(sizeof(msg))) {
    return VmError(
        name, ErrnoError(errno, absl::StrCat("deposit fd ", fd, " with init ", vm->info.init_pid)));
  }
  const absl::Time deadline = absl::Now() + kDepositTimeout;
  for (;;) {
    struct pollfd p = {vm->deposit_fd, POLLIN, 0};
    int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
    int ready = poll(&p, 1, static_cast<int>(ms));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return VmError(name, ErrnoError(errno, "poll deposit socket"));
    if (ready == 0) {
      return absl::DeadlineExceededError(absl::StrCat(
          "vm ", name, ": init ", vm->info.init_pid, " did not acknowledge the deposit of fd ", fd,
          " within ", absl::FormatDuration(kDepositTimeout)));
    }
    InitAck ack = {};
    ssize_t n = recv(vm->deposit_fd, &ack, sizeof(ack), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("vm ", name, ": init ", vm->info.init_pid, " is gone"));
    }
    if (n != sizeof(ack) || ack.magic != kMsgMagic || ack.cookie != cookie) continue;  // Stale.
    if (ack.flags & kAckTruncated) {
      return absl::InternalError(absl::StrCat("vm ", name, ": init ", vm->info.init_pid,
                                              " lost the deposited fd (control data truncated)"));
    }
    if (ack.accepted != 1) {
      return absl::ResourceExhaustedError(absl::StrCat("vm ", name, ": init ", vm->info.init_pid,
                                                       " already holds its maximum of ", ack.held,
                                                       " fds"));
    }
    return absl::OkStatus();
  }
}

absl::StatusOr<std::vector<int>> VmManager::ReclaimFds(const std::string& name) {
  SHUTTLE_ASSIGN_OR_RETURN(std::shared_ptr<Vm> vm, Find(name));
  const std::string fd_dir = absl::StrCat("/proc/", vm->info.init_pid, "/fd");
  DIR* dir = opendir(fd_dir.c_str());
  if (dir == nullptr) return VmError(name, ErrnoError(errno, absl::StrCat("open ", fd_dir)));
  std::vector<int> targets;
  while (struct dirent* e = readdir(dir)) {
    int target = -1;
    if (!absl::SimpleAtoi(e->d_name, &target)) continue;
    char link[256];
    ssize_t n = readlinkat(dirfd(dir), e->d_name, link, sizeof(link) - 1);
    if (n <= 0) continue;
    if (absl::string_view(link, static_cast<size_t>(n)) == kSeccompListenerLink) {
      targets.push_back(target);
    }
  }
  closedir(dir);
  std::vector<int> out;
  for (int target : targets) {
    absl::StatusOr<int> got = vm_internal::PidfdGetfd(vm->pidfd, target);
    if (got.ok()) {
      out.push_back(*got);
    } else if (got.status().code() != absl::StatusCode::kNotFound) {  // Closed meanwhile: skip.
      for (int fd : out) close(fd);
      return VmError(name,
                     absl::Status(got.status().code(),
                                  absl::StrCat("take fd ", target, " from init ", vm->info.init_pid,
                                               ": ", got.status().message())));
    }
  }
  return out;
}

absl::StatusOr<int> VmManager::InitPidfd(const std::string& name) const {
  SHUTTLE_ASSIGN_OR_RETURN(std::shared_ptr<Vm> vm, Find(name));
  int fd = fcntl(vm->pidfd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return VmError(name, ErrnoError(errno, "duplicate the init's pidfd"));
  return fd;
}

}  // namespace shuttle::agent
