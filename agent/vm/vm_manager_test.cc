// End-to-end tests of the VM manager with real namespaces, mounts and processes: needs root and
// a kernel with namespaces, overlayfs, pidfds and seccomp user notification (CI runs as root).
#include "agent/vm/vm_manager.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/vm/proc_util.h"
#include "agent/vm/vm_state.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace shuttle::agent {
namespace {

using ::shuttle::testing::IsOk;
using ::shuttle::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr int kPollMs = 10'000;  // Bound on every wait in this file.

struct RunResult {
  int exit_code = -1;
  std::string out;
};

// Starts `args` (looked up in PATH) with the given stdin and stdout (-1: /dev/null for stdin,
// inherited stdout); returns its pid, or -1.
pid_t Spawn(const std::vector<std::string>& args, int stdin_fd, int stdout_fd) {
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  argv.reserve(copy.size() + 1);
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (stdin_fd >= 0) {
    posix_spawn_file_actions_adddup2(&fa, stdin_fd, 0);
  } else {
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  }
  if (stdout_fd >= 0) posix_spawn_file_actions_adddup2(&fa, stdout_fd, 1);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

// nsenter into VM `init_pid`'s namespaces (`flags`, e.g. {"-m"}) running `sh -c cmd`.
std::vector<std::string> NsenterArgs(pid_t init_pid, std::vector<std::string> flags,
                                     const std::string& cmd) {
  std::vector<std::string> args = {"nsenter", "-t", std::to_string(init_pid)};
  args.insert(args.end(), flags.begin(), flags.end());
  args.insert(args.end(), {"--", "sh", "-c", cmd});
  return args;
}

const std::vector<std::string> kAllNs = {"-m", "-u", "-i", "-n", "-p"};

// Runs argv with stdout captured (stderr passes through); waits for it.
RunResult Run(const std::vector<std::string>& args) {
  RunResult result;
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return result;
  pid_t pid = Spawn(args, -1, out[1]);
  close(out[1]);
  if (pid < 0) {
    close(out[0]);
    return result;
  }
  char buf[4096];
  for (;;) {
    ssize_t n = read(out[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.out.append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// Runs `sh -c cmd` inside every namespace of the VM whose init is `init_pid`.
RunResult InVm(pid_t init_pid, const std::string& cmd) {
  return Run(NsenterArgs(init_pid, kAllNs, cmd));
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::set<std::string> MountInfo() {
  std::set<std::string> lines;
  std::ifstream in("/proc/self/mountinfo");
  for (std::string line; std::getline(in, line);) lines.insert(line);
  return lines;
}

uint64_t HostNs(const char* kind) {
  struct stat st;
  if (stat(absl::StrCat("/proc/self/ns/", kind).c_str(), &st) != 0) return 0;
  return st.st_ino;
}

// Every process whose parent is `parent` (field 4 of /proc/PID/stat).
std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> children;
  for (pid_t pid : vm_internal::ListPids()) {
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    std::getline(stat, line);
    size_t close_paren = line.rfind(')');
    if (close_paren == std::string::npos || close_paren + 2 >= line.size()) continue;
    std::vector<std::string> fields = absl::StrSplit(line.substr(close_paren + 2), ' ');
    if (fields.size() > 1 && fields[1] == std::to_string(parent)) children.push_back(pid);
  }
  return children;
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

// Whether unshare of all VM namespaces works here (util-linux unshare, so that a sanitizer's
// helper thread in this process cannot make unshare(CLONE_NEWNS) fail).
bool NamespacesWork() {
  return Run({"unshare", "--mount", "--ipc", "--net", "--uts", "--pid", "--fork", "true"})
             .exit_code == 0;
}

class VmManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "vm_manager_test creates kernel namespaces and mounts: run it "
                                "as root (CI does)";
    ASSERT_TRUE(NamespacesWork())
        << "unshare(NEWNS|NEWIPC|NEWNET|NEWUTS|NEWPID) fails here: this e2e test needs a "
           "kernel and a container that allow namespaces";
    // Under /var/tmp (not /tmp) so that the VMs' view of it goes through the overlay and the
    // hiding of the state dir inside VMs is exercised too.
    char tmpl[] = "/var/tmp/shuttle-vm-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr) << strerror(errno);
    root_ = tmpl;
    options_.state_dir = root_ + "/vms";
    options_.init_binary = SHUTTLE_VM_INIT_PATH;
    options_.hidden_paths = {root_ + "/secret", "/tmp/not-visible-in-vms-anyway"};
    ASSERT_EQ(mkdir((root_ + "/secret").c_str(), 0700), 0);
    { std::ofstream(root_ + "/secret/key") << "agent secret\n"; }
    mounts_before_ = MountInfo();
    auto manager = VmManager::Open(options_);
    ASSERT_THAT(manager, IsOk());
    manager_ = std::move(*manager);
  }

  void TearDown() override {
    if (manager_ == nullptr && !root_.empty()) {
      auto manager = VmManager::Open(options_);
      if (manager.ok()) {
        manager_ = std::move(*manager);
      } else {
        ADD_FAILURE() << "cannot reopen the VM manager to clean up: " << manager.status();
        KillRecordedInits();
      }
    }
    if (manager_ != nullptr) {
      for (const VmInfo& vm : manager_->List()) {
        EXPECT_THAT(manager_->Destroy(vm.name), IsOk());
      }
      manager_.reset();
    }
    ExpectHostMountsUntouched();
    if (!root_.empty()) {
      EXPECT_THAT(vm_internal::RemoveTree(root_), IsOk());
    }
  }

  // Last resort when no manager can be opened: SIGKILL every init recorded in the state dir
  // (if its start time still matches), so that a failing test leaves no VM running.
  void KillRecordedInits() {
    DIR* dir = opendir(options_.state_dir.c_str());
    if (dir == nullptr) return;
    while (struct dirent* e = readdir(dir)) {
      absl::StatusOr<std::string> text =
          ReadSmallFile(absl::StrCat(options_.state_dir, "/", e->d_name, "/state"));
      if (!text.ok()) continue;
      absl::StatusOr<VmRecord> record = ParseVmRecord(*text);
      if (!record.ok()) continue;
      absl::StatusOr<int> pidfd = vm_internal::PidfdOpen(record->init_pid);
      if (!pidfd.ok()) continue;
      absl::StatusOr<uint64_t> start = vm_internal::ReadStartTime(record->init_pid);
      if (start.ok() && *start == record->init_start_time) {
        (void)vm_internal::PidfdSendSignal(*pidfd, SIGKILL);
        vm_internal::WaitPidfdExit(*pidfd, absl::Seconds(10));
        vm_internal::ReapIfChild(*pidfd);
      }
      close(*pidfd);
    }
    closedir(dir);
  }

  // No mount the test's VMs made may ever show in the host's mount table: nothing under the
  // test's directory, and no new mount of a type a VM mounts (other tests may run at the same
  // time, but none of them should mount these on the host either).
  void ExpectHostMountsUntouched() {
    for (const std::string& line : MountInfo()) {
      if (mounts_before_.contains(line)) continue;
      const bool ours = line.find(root_) != std::string::npos;
      bool vm_type = false;
      for (const char* type :
           {" - overlay ", " - proc ", " - sysfs ", " - tmpfs ", " - devpts ", " - mqueue "}) {
        vm_type = vm_type || line.find(type) != std::string::npos;
      }
      EXPECT_FALSE(ours || vm_type) << "a VM mount leaked to the host: " << line;
    }
  }

  std::string root_;
  VmManagerOptions options_;
  std::set<std::string> mounts_before_;
  std::unique_ptr<VmManager> manager_;
};

TEST_F(VmManagerTest, TwoVmsHaveTheirOwnNamespacesHostnameAndLoopback) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Create("vm-a"));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo b, manager_->Create("vm-b"));
  ExpectHostMountsUntouched();
  EXPECT_EQ(a.name, "vm-a");
  EXPECT_EQ(a.upper_dir, options_.state_dir + "/vm-a/upper");
  EXPECT_GT(a.init_pid, 0);
  EXPECT_NE(a.init_pid, b.init_pid);
  EXPECT_LE(absl::Now() - a.created, absl::Minutes(1));

  const VmNamespaces host = {HostNs("mnt"), HostNs("net"), HostNs("ipc"), HostNs("uts"),
                             HostNs("pid")};
  for (const VmInfo* vm : {&a, &b}) {
    EXPECT_NE(vm->ns.mnt, host.mnt);
    EXPECT_NE(vm->ns.net, host.net);
    EXPECT_NE(vm->ns.ipc, host.ipc);
    EXPECT_NE(vm->ns.uts, host.uts);
    EXPECT_NE(vm->ns.pid, host.pid);
    SHUTTLE_ASSERT_OK_AND_ASSIGN(VmNamespaces seen, vm_internal::ReadNamespaces(vm->init_pid));
    EXPECT_EQ(seen, vm->ns);

    RunResult hostname = InVm(vm->init_pid, "hostname");
    EXPECT_EQ(hostname.exit_code, 0);
    EXPECT_EQ(Trim(hostname.out), vm->name);
    // Only lo, and it is up.
    RunResult links = InVm(vm->init_pid, "ip -o link show");
    EXPECT_EQ(links.exit_code, 0);
    EXPECT_THAT(links.out, HasSubstr("lo: <LOOPBACK,UP,LOWER_UP>"));
    EXPECT_EQ(std::count(links.out.begin(), links.out.end(), '\n'), 1) << links.out;
    // The init is pid 1 of the VM; the VM sees its own /proc.
    RunResult one = InVm(vm->init_pid, "cat /proc/1/comm");
    EXPECT_EQ(one.exit_code, 0);
    EXPECT_THAT(one.out, HasSubstr("shuttle-vm-init"));
    // Private /dev with the usual nodes, a devpts instance and a per-VM mqueue fs; the state dir
    // (and so other VMs' upper dirs) is hidden.
    RunResult dev = InVm(
        vm->init_pid,
        "test -c /dev/null && test -c /dev/urandom && test -d /dev/pts && test -L /dev/ptmx && "
        "grep -q ' /dev/mqueue mqueue ' /proc/mounts && grep -q ' /dev/shm tmpfs ' /proc/mounts && "
        "echo ok > /dev/null && find " +
            options_.state_dir + " " + root_ + "/secret -mindepth 1 | wc -l");
    EXPECT_EQ(dev.exit_code, 0) << dev.out;
    EXPECT_EQ(Trim(dev.out), "0");
  }
  EXPECT_NE(a.ns.mnt, b.ns.mnt);
  EXPECT_NE(a.ns.net, b.ns.net);
  EXPECT_NE(a.ns.ipc, b.ns.ipc);
  EXPECT_NE(a.ns.uts, b.ns.uts);
  EXPECT_NE(a.ns.pid, b.ns.pid);

  std::vector<VmInfo> list = manager_->List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, "vm-a");
  EXPECT_EQ(list[1].name, "vm-b");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo got, manager_->Get("vm-b"));
  EXPECT_EQ(got.init_pid, b.init_pid);
  EXPECT_EQ(got.ns, b.ns);
  ExpectHostMountsUntouched();
}

TEST_F(VmManagerTest, WritesStayInTheVmAndTmpRunShmDevArePrivate) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Create("cow-a"));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo b, manager_->Create("cow-b"));
  const std::string tag = absl::StrCat("shuttle-cow-test-", getpid());

  ASSERT_EQ(InVm(a.init_pid, "echo x > /etc/" + tag).exit_code, 0);
  RunResult in_a = InVm(a.init_pid, "cat /etc/" + tag);
  EXPECT_EQ(in_a.exit_code, 0);
  EXPECT_EQ(in_a.out, "x\n");
  EXPECT_FALSE(Exists("/etc/" + tag)) << "a VM's write reached the host";
  EXPECT_NE(InVm(b.init_pid, "test -e /etc/" + tag).exit_code, 0) << "visible in the other VM";
  EXPECT_TRUE(Exists(a.upper_dir + "/etc/" + tag));
  EXPECT_FALSE(Exists(b.upper_dir + "/etc/" + tag));

  // A host file is visible (read through the lower layer) and a VM's change to it stays there.
  const std::string host_file = root_ + "/host-file";
  { std::ofstream(host_file) << "host\n"; }
  ASSERT_EQ(InVm(a.init_pid, "cat " + host_file).out, "host\n");
  ASSERT_EQ(InVm(a.init_pid, "echo vm > " + host_file).exit_code, 0);
  EXPECT_EQ(InVm(a.init_pid, "cat " + host_file).out, "vm\n");
  EXPECT_EQ(InVm(b.init_pid, "cat " + host_file).out, "host\n");
  std::ifstream host_in(host_file);
  std::string host_content;
  std::getline(host_in, host_content);
  EXPECT_EQ(host_content, "host");

  for (const char* dir : {"/tmp", "/run", "/dev/shm", "/dev"}) {
    const std::string path = absl::StrCat(dir, "/", tag);
    ASSERT_EQ(InVm(a.init_pid, "mkfifo " + path).exit_code, 0) << path;
    EXPECT_EQ(InVm(a.init_pid, "test -p " + path).exit_code, 0) << path;
    EXPECT_NE(InVm(b.init_pid, "test -e " + path).exit_code, 0) << path << " visible in vm b";
    EXPECT_FALSE(Exists(path)) << path << " visible on the host";
    EXPECT_FALSE(Exists(a.upper_dir + path)) << path << " went to the upper dir";
  }
  // POSIX message queues are per VM (mqueue fs of the VM's IPC namespace).
  EXPECT_EQ(
      InVm(a.init_pid, "touch /dev/mqueue/" + tag + " && test -e /dev/mqueue/" + tag).exit_code, 0);
  EXPECT_NE(InVm(b.init_pid, "test -e /dev/mqueue/" + tag).exit_code, 0);
  ExpectHostMountsUntouched();
}

TEST_F(VmManagerTest, VmOfPidComesFromTheKernel) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Create("pid-a"));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo b, manager_->Create("pid-b"));
  EXPECT_EQ(manager_->VmOfPid(a.init_pid), "pid-a");
  EXPECT_EQ(manager_->VmOfPid(b.init_pid), "pid-b");
  EXPECT_EQ(manager_->VmOfPid(getpid()), std::nullopt);
  EXPECT_EQ(manager_->VmOfPid(1), std::nullopt);

  // A process started inside VM a: nsenter forks it into the PID namespace; it says "ready"
  // once it runs, then waits for its stdin to close.
  int in[2], out[2];
  ASSERT_EQ(pipe2(in, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  pid_t nsenter =
      Spawn(NsenterArgs(a.init_pid, kAllNs, "echo ready; exec cat > /dev/null"), in[0], out[1]);
  ASSERT_GT(nsenter, 0);
  close(in[0]);
  close(out[1]);
  struct pollfd p = {out[0], POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, kPollMs), 1);
  char buf[16] = {};
  ASSERT_GT(read(out[0], buf, sizeof(buf)), 0);
  EXPECT_STREQ(buf, "ready\n");
  // The VM process is nsenter's child.
  std::vector<pid_t> children = ChildrenOf(nsenter);
  ASSERT_EQ(children.size(), 1u);
  const pid_t inside = children[0];
  ASSERT_GT(inside, 0);
  EXPECT_EQ(manager_->VmOfPid(inside), "pid-a");
  // nsenter itself joined the mount namespace but not the PID namespace: still VM a's.
  EXPECT_EQ(manager_->VmOfPid(nsenter), "pid-a");
  close(in[1]);
  close(out[0]);
  int status = 0;
  ASSERT_EQ(waitpid(nsenter, &status, 0), nsenter);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(manager_->VmOfPid(inside), std::nullopt) << "a process that is gone";
}

// A child that installs a seccomp filter with a user-notify listener for getppid(), sends the
// listener to the parent, then calls getppid() once told to and exits with 42 if the answer was
// 4242 (the value the test's supervisor sends).
struct ListenerChild {
  pid_t pid = -1;
  int listener = -1;
  int control = -1;  // Write a byte to make the child call getppid().
  // A failing test must not leave the child blocked forever.
  ~ListenerChild() {
    if (control >= 0) close(control);
    if (pid > 0 && waitpid(pid, nullptr, WNOHANG) == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

int RecvFd(int sock) {
  char byte;
  struct iovec iov = {&byte, 1};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control = {};
  struct msghdr mh = {};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control.buf;
  mh.msg_controllen = sizeof(control.buf);
  if (recvmsg(sock, &mh, MSG_CMSG_CLOEXEC) != 1) return -1;
  struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
  if (c == nullptr || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof(fd));
  return fd;
}

void StartListenerChild(ListenerChild& child) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return;
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getppid, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof(filter) / sizeof(filter[0]), filter};
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(1);
    const int64_t listener =
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (listener < 0) _exit(2);
    char byte = 0;
    struct iovec iov = {&byte, 1};
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
    int fd = static_cast<int>(listener);
    memcpy(CMSG_DATA(c), &fd, sizeof(fd));
    if (sendmsg(sv[1], &mh, 0) != 1) _exit(3);
    close(fd);
    if (read(sv[1], &byte, 1) != 1) _exit(4);
    _exit(syscall(SYS_getppid) == 4242 ? 42 : 5);
  }
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    return;
  }
  child.pid = pid;
  child.control = sv[0];
  child.listener = RecvFd(sv[0]);
}

std::string FdLink(int fd) {
  char link[256];
  ssize_t n = readlink(absl::StrCat("/proc/self/fd/", fd).c_str(), link, sizeof(link) - 1);
  return n > 0 ? std::string(link, static_cast<size_t>(n)) : "";
}

TEST_F(VmManagerTest, ReadoptsVmsAndHandsBackDepositedSeccompListeners) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Create("keep-a"));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo b, manager_->Create("keep-b"));

  ListenerChild child;
  StartListenerChild(child);
  ASSERT_GT(child.pid, 0);
  ASSERT_GE(child.listener, 0);
  ASSERT_EQ(FdLink(child.listener), "anon_inode:seccomp notify");
  ASSERT_THAT(manager_->DepositFd("keep-a", child.listener), IsOk());
  close(child.listener);  // Only the init of keep-a holds it now (and the filter's task).
  // An eventfd goes through the same channel, but is not a listener: not handed back.
  int efd = eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  ASSERT_THAT(manager_->DepositFd("keep-a", efd), IsOk());
  close(efd);

  // The agent "restarts": a second manager on the same state dir is refused meanwhile.
  EXPECT_THAT(VmManager::Open(options_),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("in use")));
  manager_.reset();
  SHUTTLE_ASSERT_OK_AND_ASSIGN(manager_, VmManager::Open(options_));
  std::vector<VmInfo> list = manager_->List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, "keep-a");
  EXPECT_EQ(list[0].init_pid, a.init_pid);
  EXPECT_EQ(list[0].ns, a.ns);
  EXPECT_EQ(list[0].upper_dir, a.upper_dir);
  EXPECT_EQ(absl::ToUnixNanos(list[0].created), absl::ToUnixNanos(a.created));
  EXPECT_EQ(list[1].name, "keep-b");
  EXPECT_EQ(list[1].init_pid, b.init_pid);
  EXPECT_EQ(manager_->VmOfPid(b.init_pid), "keep-b");

  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<int> fds, manager_->ReclaimFds("keep-a"));
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_EQ(FdLink(fds[0]), "anon_inode:seccomp notify");
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<int> none, manager_->ReclaimFds("keep-b"));
  EXPECT_THAT(none, IsEmpty());

  // The reclaimed fd is the child's listener: answer its getppid() with 4242.
  ASSERT_EQ(write(child.control, "g", 1), 1);
  struct pollfd p = {fds[0], POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, kPollMs), 1);
  struct seccomp_notif req = {};
  ASSERT_EQ(ioctl(fds[0], SECCOMP_IOCTL_NOTIF_RECV, &req), 0) << strerror(errno);
  EXPECT_EQ(static_cast<pid_t>(req.pid), child.pid);
  EXPECT_EQ(req.data.nr, __NR_getppid);
  struct seccomp_notif_resp resp = {};
  resp.id = req.id;
  resp.val = 4242;
  ASSERT_EQ(ioctl(fds[0], SECCOMP_IOCTL_NOTIF_SEND, &resp), 0) << strerror(errno);
  int status = 0;
  ASSERT_EQ(waitpid(child.pid, &status, 0), child.pid);
  child.pid = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 42) << status;

  // With its last user gone the listener reports POLLHUP, and the init lets go of its copy.
  p = {fds[0], 0, 0};
  ASSERT_EQ(poll(&p, 1, kPollMs), 1);
  EXPECT_TRUE(p.revents & POLLHUP);
  close(fds[0]);
  // A deposit is acknowledged after the init has handled the hang-up: a barrier, no sleeping.
  int barrier = eventfd(0, EFD_CLOEXEC);
  ASSERT_THAT(manager_->DepositFd("keep-a", barrier), IsOk());
  close(barrier);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(std::vector<int> after, manager_->ReclaimFds("keep-a"));
  EXPECT_THAT(after, IsEmpty());
  for (int fd : after) close(fd);

  SHUTTLE_ASSERT_OK_AND_ASSIGN(int pidfd, manager_->InitPidfd("keep-b"));
  EXPECT_EQ(FdLink(pidfd), "anon_inode:[pidfd]");
  close(pidfd);
  ExpectHostMountsUntouched();
}

TEST_F(VmManagerTest, DestroyLeavesNothingBehind) {
  // The change callback sees each change, after it (List() from inside it shows the new set).
  std::vector<size_t> seen;
  manager_->set_on_change([&] { seen.push_back(manager_->List().size()); });
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Create("gone"));
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo keep, manager_->Create("stays"));
  EXPECT_THAT(manager_->Create("stays"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("stays")));
  EXPECT_THAT(seen, ElementsAre(1u, 2u));  // Nothing for the refused Create.
  // Something running in the VM, and a process that joined only its mount namespace.
  ASSERT_EQ(
      InVm(a.init_pid, "echo data > /tmp/f && mkdir -p /var/lib/x && echo y > /etc/zz").exit_code,
      0);
  // nsenter without -p does not fork: it execs sh in the VM's mount namespace only.
  int in[2], out[2];
  ASSERT_EQ(pipe2(in, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(out, O_CLOEXEC), 0);
  pid_t half = Spawn(NsenterArgs(a.init_pid, {"-m"}, "echo joined; exec cat"), in[0], out[1]);
  ASSERT_GT(half, 0);
  close(in[0]);
  close(out[1]);
  int half_pidfd = -1;
  { SHUTTLE_ASSERT_OK_AND_ASSIGN(half_pidfd, vm_internal::PidfdOpen(half)); }
  struct pollfd jp = {out[0], POLLIN, 0};
  ASSERT_EQ(poll(&jp, 1, kPollMs), 1);
  char buf[16] = {};
  ASSERT_GT(read(out[0], buf, sizeof(buf)), 0);
  ASSERT_STREQ(buf, "joined\n") << "the process could not join the VM's mount namespace";
  close(out[0]);
  EXPECT_EQ(vm_internal::NsInode(half, "pid").value_or(0), HostNs("pid"));
  EXPECT_EQ(manager_->VmOfPid(half), "gone");

  ASSERT_THAT(manager_->Destroy("gone"), IsOk());
  EXPECT_THAT(seen, ElementsAre(1u, 2u, 1u));
  manager_->set_on_change(nullptr);

  EXPECT_EQ(kill(a.init_pid, 0), -1);
  EXPECT_EQ(errno, ESRCH) << "init still exists";
  struct pollfd p = {half_pidfd, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, kPollMs), 1) << "the half-joined process was not killed";
  int status = 0;
  EXPECT_EQ(waitpid(half, &status, 0), half) << "the manager must not reap others' children";
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  close(half_pidfd);
  close(in[1]);
  EXPECT_FALSE(Exists(options_.state_dir + "/gone"));
  EXPECT_TRUE(Exists(options_.state_dir + "/stays/state"));
  std::set<uint64_t> ns = {a.ns.mnt, a.ns.net, a.ns.ipc, a.ns.uts, a.ns.pid};
  for (pid_t pid : vm_internal::ListPids()) {
    for (const char* kind : {"mnt", "net", "ipc", "uts", "pid", "pid_for_children"}) {
      absl::StatusOr<uint64_t> ino = vm_internal::NsInode(pid, kind);
      if (ino.ok()) {
        EXPECT_FALSE(ns.contains(*ino)) << "pid " << pid << " still in ns " << kind;
      }
    }
  }
  ExpectHostMountsUntouched();
  EXPECT_THAT(manager_->List(), ElementsAre(::testing::Field(&VmInfo::name, "stays")));
  EXPECT_EQ(manager_->VmOfPid(keep.init_pid), "stays");

  // The name is free again.
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo again, manager_->Create("gone"));
  EXPECT_NE(again.init_pid, a.init_pid);
  EXPECT_NE(InVm(again.init_pid, "test -e /etc/zz").exit_code, 0) << "old upper dir reused";
}

TEST_F(VmManagerTest, OpenCleansUpVmsWhoseInitDied) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Create("dies"));
  manager_.reset();
  // The init dies while no agent runs (only SIGKILL from outside can do that).
  SHUTTLE_ASSERT_OK_AND_ASSIGN(int pidfd, vm_internal::PidfdOpen(a.init_pid));
  ASSERT_THAT(vm_internal::PidfdSendSignal(pidfd, SIGKILL), IsOk());
  ASSERT_TRUE(vm_internal::WaitPidfdExit(pidfd, absl::Seconds(10)));
  vm_internal::ReapIfChild(pidfd);
  close(pidfd);
  // A leftover dir of a Create that never committed.
  ASSERT_EQ(mkdir((options_.state_dir + "/half").c_str(), 0700), 0);
  SHUTTLE_ASSERT_OK_AND_ASSIGN(manager_, VmManager::Open(options_));
  EXPECT_THAT(manager_->List(), IsEmpty());
  EXPECT_FALSE(Exists(options_.state_dir + "/dies"));
  EXPECT_FALSE(Exists(options_.state_dir + "/half"));
}

TEST_F(VmManagerTest, InitIgnoresSignalsFromInsideTheVm) {
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Create("sturdy"));
  EXPECT_EQ(InVm(a.init_pid, "kill -TERM 1; kill -INT 1; kill -HUP 1; kill -USR1 1; echo sent").out,
            "sent\n");
  // Still alive and serving: a deposit round trip works.
  int efd = eventfd(0, EFD_CLOEXEC);
  EXPECT_THAT(manager_->DepositFd("sturdy", efd), IsOk());
  close(efd);
  EXPECT_EQ(kill(a.init_pid, 0), 0);

  // Orphans of the VM are reaped by its init. The orphan (a cat reading our pipe, left behind
  // by a subshell) exits when we close the pipe; the init must then reap it.
  int in[2];
  ASSERT_EQ(pipe2(in, O_CLOEXEC), 0);
  pid_t nsenter = Spawn(
      NsenterArgs(a.init_pid, kAllNs, "exec 3<&0; (cat <&3 >/dev/null &); exit 0"), in[0], -1);
  ASSERT_GT(nsenter, 0);
  close(in[0]);
  int status = 0;
  ASSERT_EQ(waitpid(nsenter, &status, 0), nsenter);
  // The subshell has exited (sh waited for it), so its child now belongs to the init; it may
  // not have exec'd cat yet, which does not matter.
  std::vector<pid_t> orphans = ChildrenOf(a.init_pid);
  ASSERT_EQ(orphans.size(), 1u) << "expected one orphan adopted by the init";
  const pid_t orphan = orphans[0];
  SHUTTLE_ASSERT_OK_AND_ASSIGN(int orphan_pidfd, vm_internal::PidfdOpen(orphan));
  close(in[1]);
  ASSERT_TRUE(vm_internal::WaitPidfdExit(orphan_pidfd, absl::Seconds(10)));
  // Each deposit round trip lets the init run its loop (SIGCHLD is handled before deposits).
  bool reaped = false;
  for (int i = 0; i < 100 && !reaped; ++i) {
    int barrier = eventfd(0, EFD_CLOEXEC);
    ASSERT_THAT(manager_->DepositFd("sturdy", barrier), IsOk());
    close(barrier);
    reaped = !Exists(absl::StrCat("/proc/", orphan));
  }
  close(orphan_pidfd);
  EXPECT_TRUE(reaped) << "the init left orphan " << orphan << " a zombie";
}

TEST_F(VmManagerTest, ConcurrentCallsAreSafe) {
  // Two threads race to create each name: exactly one wins; readers run all along.
  constexpr int kNames = 3;
  std::atomic<int> created{0}, already{0};
  std::atomic<bool> done{false}, destroying{false};
  std::vector<std::thread> threads;
  threads.reserve(size_t{2} * kNames);
  for (int t = 0; t < 2 * kNames; ++t) {
    threads.emplace_back([&, t] {
      absl::StatusOr<VmInfo> vm = manager_->Create(absl::StrCat("race-", t % kNames));
      if (vm.ok()) {
        created++;
      } else if (vm.status().code() == absl::StatusCode::kAlreadyExists) {
        already++;
      } else {
        ADD_FAILURE() << vm.status();
      }
    });
  }
  std::thread reader([&] {
    while (!done.load()) {
      for (const VmInfo& vm : manager_->List()) {
        std::optional<std::string> of = manager_->VmOfPid(vm.init_pid);
        // Once destruction starts, a listed VM's init may already be dead (nullopt).
        if (of.has_value() || !destroying.load()) {
          EXPECT_EQ(of, vm.name);
        }
      }
      EXPECT_EQ(manager_->VmOfPid(getpid()), std::nullopt);
    }
  });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(created.load(), kNames);
  EXPECT_EQ(already.load(), kNames);
  destroying = true;
  std::vector<std::thread> destroyers;
  destroyers.reserve(kNames);
  for (int t = 0; t < kNames; ++t) {
    destroyers.emplace_back(
        [&, t] { EXPECT_THAT(manager_->Destroy(absl::StrCat("race-", t)), IsOk()); });
  }
  for (std::thread& t : destroyers) t.join();
  done = true;
  reader.join();
  EXPECT_THAT(manager_->List(), IsEmpty());
}

TEST_F(VmManagerTest, RejectsBadInput) {
  for (const char* bad :
       {"", "Web", "-x", "a_b", "../x", "host", "abcdefghijklmnopqrstuvwxyz0123456"}) {
    EXPECT_THAT(manager_->Create(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vm name")))
        << bad;
  }
  SHUTTLE_ASSERT_OK_AND_ASSIGN(VmInfo a, manager_->Create("dup"));
  EXPECT_THAT(manager_->Create("dup"),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("vm dup: already exists")));
  EXPECT_THAT(manager_->Destroy("nope"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("vm nope: no such VM")));
  EXPECT_THAT(manager_->Get("nope"), StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(manager_->DepositFd("nope", 0),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(manager_->ReclaimFds("nope"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(manager_->InitPidfd("nope"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nope")));
  EXPECT_THAT(manager_->DepositFd("dup", -1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("vm dup: deposit fd -1")));
  EXPECT_THAT(manager_->DepositFd("dup", 1000000),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not an open descriptor")));
  EXPECT_GT(a.init_pid, 0);

  VmManagerOptions relative = options_;
  relative.state_dir = "relative/dir";
  EXPECT_THAT(VmManager::Open(relative),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("absolute")));
  VmManagerOptions comma = options_;
  comma.state_dir = root_ + "/a,b";
  EXPECT_THAT(VmManager::Open(comma),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("overlay mount options")));
  VmManagerOptions no_init = options_;
  no_init.state_dir = root_ + "/other";
  no_init.init_binary = root_ + "/no-such-init";
  EXPECT_THAT(VmManager::Open(no_init),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no-such-init: No such file")));
}

TEST_F(VmManagerTest, FailedSetupIsReportedAndLeavesNothing) {
  // An init that exits at once without reporting.
  VmManagerOptions options = options_;
  options.state_dir = root_ + "/false";
  options.init_binary = "/bin/false";
  SHUTTLE_ASSERT_OK_AND_ASSIGN(auto manager, VmManager::Open(options));
  EXPECT_THAT(manager->Create("broken"),
              StatusIs(absl::StatusCode::kInternal,
                       HasSubstr("vm broken: init exited during setup without a report")));
  EXPECT_FALSE(Exists(options.state_dir + "/broken"));
  EXPECT_THAT(manager->List(), IsEmpty());
  manager.reset();

  // An init that cannot even be executed (no #! line, not ELF): the errno comes back.
  const std::string garbage = root_ + "/garbage-init";
  { std::ofstream(garbage) << "not a program\n"; }
  ASSERT_EQ(chmod(garbage.c_str(), 0755), 0);
  options.init_binary = garbage;
  SHUTTLE_ASSERT_OK_AND_ASSIGN(manager, VmManager::Open(options));
  EXPECT_THAT(manager->Create("broken"),
              StatusIs(absl::StatusCode::kInternal,
                       HasSubstr(absl::StrCat("vm broken: exec ", garbage, ": errno ", ENOEXEC))));
  EXPECT_FALSE(Exists(options.state_dir + "/broken"));
}

}  // namespace
}  // namespace shuttle::agent
