// shuttle-vm-init: pid 1 of one Shuttle VM. The agent's VM manager (agent/vm/) starts it with
// clone3() in fresh mount, IPC, network, UTS and PID namespaces; it builds the VM's root (an
// overlay of the host root with a per-VM upper dir, private /tmp, /run, /dev, /dev/shm,
// /dev/mqueue, fresh /proc and /sys), pivots into it, and then only holds the namespaces, reaps
// orphans and keeps the seccomp listener fds the agent deposits. C, links only libc.
//
// Usage (by the agent only):
//   shuttle-vm-init --name NAME --vm-dir DIR [--hide PATH]...
// DIR holds upper/, work/ and merged/ (created by the agent); each --hide PATH is covered inside
// the VM by an empty read-only tmpfs (the agent hides its own state dir, which the VM would
// otherwise see through the lower layer, including other VMs' upper dirs).
//
// Descriptors at exec (set up by the agent):
//   0 /dev/null; 1, 2 the VM's init.log (append);
//   3 the init's end of the deposit socket pair (AF_UNIX, SOCK_SEQPACKET);
//   4 the agent's end of that pair, kept here so that any agent, including one restarted
//     since, can take it with pidfd_getfd(init_pidfd, 4) and send fds with SCM_RIGHTS;
//   5 the setup channel (SOCK_SEQPACKET): the init sends one report, "K" (ready) or
//     "E<step>: <error>" and, after "K", waits for the agent's commit byte 'C'; EOF or anything
//     else before the commit means the agent gave up, and the init exits (so a crashed agent
//     never leaves a VM it has not recorded). Closed after the commit.
//   Every other inherited fd is closed at start.
//
// Deposit protocol (on fd 3/4; all integers in host byte order, one message per datagram):
//   request  struct vm_msg {u32 magic 'SHV1'; u32 type; u64 cookie}, 16 bytes, with
//            type 1 (DEPOSIT) and up to kMaxFdsPerMsg fds as SCM_RIGHTS, or type 2 (PING);
//   reply    struct vm_ack {u32 magic; u32 type; u64 cookie; u32 accepted; u32 rejected;
//            u32 held; u32 flags}, 32 bytes, echoing type and cookie (flags bit 0: the control
//            data was truncated, some fds were lost). Replies are sent without blocking.
// Held fds are polled with events = 0, so only POLLHUP/POLLERR wake the init (a seccomp
// listener reports POLLIN while notifications are pending, which must not spin us); each is
// closed on POLLHUP (all processes using that filter are gone). At most kMaxHeld are held.
//
// Signals: pid 1 only receives signals it handles; everything catchable is ignored except the
// synchronous fault signals, so only SIGKILL (from the agent, outside the PID namespace) ends
// the init and with it every process of the VM.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // NOLINT(bugprone-reserved-identifier): glibc's feature-test macro.
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
  kRecvFd = 3,
  kSendFd = 4,
  kSetupFd = 5,
  kFirstFreeFd = 6,
  kMaxHeld = 4096,
  kMaxFdsPerMsg = 64,
  kMaxHides = 16,
};

#define VM_MAGIC 0x31564853u  // "SHV1" little-endian
#define VM_MSG_DEPOSIT 1u
#define VM_MSG_PING 2u
#define VM_ACK_TRUNCATED 1u

struct vm_msg {
  uint32_t magic;
  uint32_t type;
  uint64_t cookie;
};

struct vm_ack {
  uint32_t magic;
  uint32_t type;
  uint64_t cookie;
  uint32_t accepted;
  uint32_t rejected;
  uint32_t held;
  uint32_t flags;
};

_Static_assert(sizeof(struct vm_msg) == 16, "wire size");
_Static_assert(sizeof(struct vm_ack) == 32, "wire size");

static const char* g_name = "?";

static void Log(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void Log(const char* fmt, ...) {
  char line[1024];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%SZ", &tm);
  n += snprintf(line + n, sizeof(line) - (size_t)n, " shuttle-vm-init %s: ", g_name);
  va_list ap;
  va_start(ap, fmt);
  if (n < (int)sizeof(line)) n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof(line) - 2) n = (int)sizeof(line) - 2;
  line[n++] = '\n';
  ssize_t ignored = write(STDERR_FILENO, line, (size_t)n);
  (void)ignored;
}

// Reports a failed setup step to the agent ("E<step>: <strerror>") and exits.
static void SetupFail(int err, const char* fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void SetupFail(int err, const char* fmt, ...) {
  char msg[1024];
  msg[0] = 'E';
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg + 1, sizeof(msg) - 1, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if (n > (int)sizeof(msg) - 2) n = (int)sizeof(msg) - 2;
  n += 1;
  if (err != 0) n += snprintf(msg + n, sizeof(msg) - (size_t)n, ": %s", strerror(err));
  if (n > (int)sizeof(msg) - 1) n = (int)sizeof(msg) - 1;
  msg[n] = '\0';
  Log("setup failed: %s", msg + 1);
  ssize_t ignored = send(kSetupFd, msg, (size_t)n, MSG_NOSIGNAL);
  (void)ignored;
  _exit(1);
}

static void JoinPath3(char* out, size_t size, const char* a, const char* b, const char* c) {
  int n = snprintf(out, size, "%s%s%s", a, b, c);
  if (n < 0 || (size_t)n >= size) SetupFail(ENAMETOOLONG, "path %s%s%s", a, b, c);
}

static void JoinPath(char* out, size_t size, const char* a, const char* b) {
  JoinPath3(out, size, a, b, "");
}

static void Mount(const char* source, const char* target, const char* type, unsigned long flags,
                  const char* data, const char* what) {
  if (mount(source, target, type, flags, data) != 0) {
    SetupFail(errno, "mount %s on %s", what, target);
  }
}

static void MakeDir(const char* path, mode_t mode) {
  if (mkdir(path, mode) != 0 && errno != EEXIST) SetupFail(errno, "mkdir %s", path);
  if (chmod(path, mode) != 0) SetupFail(errno, "chmod %s", path);
}

static void BringUpLoopback(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) SetupFail(errno, "socket for loopback");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) SetupFail(errno, "get flags of lo");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) SetupFail(errno, "bring lo up");
  close(s);
}

// A private /dev: a small tmpfs with the usual character devices, a new devpts instance, a
// private tmpfs on /dev/shm and a fresh mqueue fs (tied to the VM's IPC namespace). Binding the
// host's /dev would let a VM create nodes (FIFOs) that other VMs and the host see.
static void BuildDev(const char* root) {
  char dev[4096], path[4096];
  JoinPath(dev, sizeof(dev), root, "/dev");
  Mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m", "tmpfs (/dev)");
  static const struct {
    const char* name;
    unsigned major, minor;
  } kNodes[] = {{"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
                {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
  for (size_t i = 0; i < sizeof(kNodes) / sizeof(kNodes[0]); ++i) {
    JoinPath3(path, sizeof(path), dev, "/", kNodes[i].name);
    if (mknod(path, S_IFCHR | 0666, makedev(kNodes[i].major, kNodes[i].minor)) != 0) {
      SetupFail(errno, "mknod %s", path);
    }
    if (chmod(path, 0666) != 0) SetupFail(errno, "chmod %s", path);
  }
  JoinPath(path, sizeof(path), dev, "/pts");
  MakeDir(path, 0755);
  Mount("devpts", path, "devpts", MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5", "devpts");
  JoinPath(path, sizeof(path), dev, "/ptmx");
  if (symlink("pts/ptmx", path) != 0) SetupFail(errno, "symlink %s", path);
  JoinPath(path, sizeof(path), dev, "/shm");
  MakeDir(path, 01777);
  Mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", "tmpfs (/dev/shm)");
  JoinPath(path, sizeof(path), dev, "/mqueue");
  MakeDir(path, 01777);
  Mount("mqueue", path, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, "mqueue");
  static const struct {
    const char* name;
    const char* target;
  } kLinks[] = {{"fd", "/proc/self/fd"},
                {"stdin", "/proc/self/fd/0"},
                {"stdout", "/proc/self/fd/1"},
                {"stderr", "/proc/self/fd/2"}};
  for (size_t i = 0; i < sizeof(kLinks) / sizeof(kLinks[0]); ++i) {
    JoinPath3(path, sizeof(path), dev, "/", kLinks[i].name);
    if (symlink(kLinks[i].target, path) != 0) SetupFail(errno, "symlink %s", path);
  }
}

// Builds the VM's root under VMDIR/merged and pivots into it. Runs as pid 1 of the new PID
// namespace, in the new mount namespace (a copy of the agent's), before any VM process exists.
static void SetupRoot(const char* name, const char* vm_dir, const char* const* hides, int nhides) {
  if (getpid() != 1) SetupFail(0, "not pid 1 of a new PID namespace (pid %d)", (int)getpid());
  // Nothing mounted from here on may propagate back to the host.
  Mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL, "rprivate propagation");
  if (sethostname(name, strlen(name)) != 0) SetupFail(errno, "sethostname %s", name);
  BringUpLoopback();

  char root[4096], upper[4096], work[4096], path[4096], opts[8192];
  JoinPath(root, sizeof(root), vm_dir, "/merged");
  JoinPath(upper, sizeof(upper), vm_dir, "/upper");
  JoinPath(work, sizeof(work), vm_dir, "/work");
  int n = snprintf(opts, sizeof(opts), "lowerdir=/,upperdir=%s,workdir=%s", upper, work);
  if (n < 0 || (size_t)n >= sizeof(opts)) SetupFail(ENAMETOOLONG, "overlay options");
  Mount("overlay", root, "overlay", 0, opts, "overlay");

  JoinPath(path, sizeof(path), root, "/proc");
  Mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, "proc");
  JoinPath(path, sizeof(path), root, "/sys");
  Mount("sysfs", path, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, "sysfs");
  BuildDev(root);
  JoinPath(path, sizeof(path), root, "/tmp");
  Mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", "tmpfs (/tmp)");
  JoinPath(path, sizeof(path), root, "/run");
  Mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755", "tmpfs (/run)");
  JoinPath(path, sizeof(path), root, "/run/lock");
  MakeDir(path, 01777);

  for (int i = 0; i < nhides; ++i) {
    struct stat st;
    JoinPath(path, sizeof(path), root, hides[i]);
    // A path the private mounts above already replaced (under /tmp, say) is not visible.
    if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    Mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
          "size=4k,nr_inodes=1,mode=755", "tmpfs (hide)");
  }

  if (chdir(root) != 0) SetupFail(errno, "chdir %s", root);
  // pivot_root(".", "."): the old root ends up on top of the new one and is detached right away,
  // so no put_old directory has to exist in the VM's tree.
  if (syscall(SYS_pivot_root, ".", ".") != 0) SetupFail(errno, "pivot_root into %s", root);
  if (umount2(".", MNT_DETACH) != 0) SetupFail(errno, "detach the host root");
  if (chdir("/") != 0) SetupFail(errno, "chdir /");
}

// Sends "K", waits for the agent's commit ('C'), closes the setup channel.
static void FinishSetup(void) {
  if (send(kSetupFd, "K", 1, MSG_NOSIGNAL) != 1) {
    Log("report ready: %s", strerror(errno));
    _exit(1);
  }
  char c = 0;
  ssize_t n;
  do {
    n = recv(kSetupFd, &c, 1, 0);
  } while (n < 0 && errno == EINTR);
  if (n != 1 || c != 'C') {
    Log("agent gave up before committing the VM; exiting");
    _exit(1);
  }
  close(kSetupFd);
}

static void SetupSignals(int* sigfd) {
  struct sigaction ign;
  memset(&ign, 0, sizeof(ign));
  ign.sa_handler = SIG_IGN;
  sigemptyset(&ign.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    switch (sig) {
      case SIGKILL:
      case SIGSTOP:
      case SIGCHLD:
      case SIGSEGV:
      case SIGBUS:
      case SIGFPE:
      case SIGILL:
      case SIGABRT:
      case SIGTRAP:
      case SIGSYS:
        continue;
      default:
        sigaction(sig, &ign, NULL);  // Fails harmlessly for the few signals glibc reserves.
    }
  }
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &chld, NULL) != 0) SetupFail(errno, "block SIGCHLD");
  *sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
  if (*sigfd < 0) SetupFail(errno, "signalfd");
}

static int RaiseFdLimit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024 - 64;
  rlim_t want = kMaxHeld + 64;
  if (rl.rlim_cur < want) {
    rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  long cap = (long)rl.rlim_cur - 64;
  if (cap > kMaxHeld) cap = kMaxHeld;
  if (cap < 16) cap = 16;
  return (int)cap;
}

static void ReapChildren(void) {
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) continue;
    if (pid < 0 && errno == EINTR) continue;
    break;  // 0: children remain, none exited; -1/ECHILD: no children.
  }
}

struct Held {
  struct pollfd pfds[2 + kMaxHeld];  // [0] signalfd, [1] deposit socket, [2..] held fds
  int nheld;
  int cap;
};

static void SendAck(const struct vm_msg* msg, uint32_t accepted, uint32_t rejected, uint32_t flags,
                    int held) {
  struct vm_ack ack;
  memset(&ack, 0, sizeof(ack));
  ack.magic = VM_MAGIC;
  ack.type = msg->type;
  ack.cookie = msg->cookie;
  ack.accepted = accepted;
  ack.rejected = rejected;
  ack.held = (uint32_t)held;
  ack.flags = flags;
  if (send(kRecvFd, &ack, sizeof(ack), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
    Log("reply to cookie %llu dropped: %s", (unsigned long long)msg->cookie, strerror(errno));
  }
}

// Receives every queued deposit message without blocking.
static void HandleDeposits(struct Held* h) {
  for (;;) {
    struct vm_msg msg;
    union {
      char buf[CMSG_SPACE(sizeof(int) * kMaxFdsPerMsg)];
      struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = &msg, .iov_len = sizeof(msg)};
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control.buf;
    mh.msg_controllen = sizeof(control.buf);
    ssize_t n = recvmsg(kRecvFd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) Log("recvmsg: %s", strerror(errno));
      return;
    }
    int fds[kMaxFdsPerMsg];
    int nfds = 0;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* data = CMSG_DATA(c);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        memcpy(&fd, data + i * sizeof(int), sizeof(int));
        if (nfds < kMaxFdsPerMsg) {
          fds[nfds++] = fd;
        } else {
          close(fd);
        }
      }
    }
    uint32_t flags = (mh.msg_flags & MSG_CTRUNC) ? VM_ACK_TRUNCATED : 0;
    if (flags) Log("deposit control data truncated: some fds were lost");
    if (n != (ssize_t)sizeof(msg) || (mh.msg_flags & MSG_TRUNC) || msg.magic != VM_MAGIC ||
        (msg.type != VM_MSG_DEPOSIT && msg.type != VM_MSG_PING)) {
      Log("malformed message (%zd bytes) ignored; closing its %d fds", n, nfds);
      for (int i = 0; i < nfds; ++i) close(fds[i]);
      continue;
    }
    uint32_t accepted = 0, rejected = 0;
    for (int i = 0; i < nfds; ++i) {
      if (msg.type == VM_MSG_DEPOSIT && h->nheld < h->cap) {
        h->pfds[2 + h->nheld].fd = fds[i];
        h->pfds[2 + h->nheld].events = 0;  // POLLHUP/POLLERR only.
        h->pfds[2 + h->nheld].revents = 0;
        h->nheld++;
        accepted++;
      } else {
        close(fds[i]);
        rejected++;
      }
    }
    if (rejected > 0) Log("rejected %u fds (holding %d, cap %d)", rejected, h->nheld, h->cap);
    SendAck(&msg, accepted, rejected, flags, h->nheld);
  }
}

static int Serve(int sigfd, int cap) {
  static struct Held h;
  h.cap = cap;
  h.nheld = 0;
  h.pfds[0].fd = sigfd;
  h.pfds[0].events = POLLIN;
  h.pfds[1].fd = kRecvFd;
  h.pfds[1].events = POLLIN;
  ReapChildren();
  for (;;) {
    int n = poll(h.pfds, (nfds_t)h.nheld + 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      Log("poll: %s", strerror(errno));
      return 1;
    }
    if (h.pfds[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
      }
      ReapChildren();
    }
    // Hang-ups before deposits: a deposit's acknowledgement then also tells the agent that
    // every hang-up the kernel had signalled when it was sent has been handled.
    for (int i = h.nheld - 1; i >= 0; --i) {
      struct pollfd* p = &h.pfds[2 + i];
      if (p->revents & (POLLHUP | POLLERR | POLLNVAL)) {
        if (!(p->revents & POLLNVAL)) close(p->fd);
        h.pfds[2 + i] = h.pfds[2 + h.nheld - 1];
        h.nheld--;
      }
    }
    if (h.pfds[1].revents & POLLIN) HandleDeposits(&h);
    if (h.pfds[1].revents & (POLLHUP | POLLERR | POLLNVAL)) {
      // Cannot happen while we hold fd 4 ourselves; stop polling rather than spin.
      Log("deposit socket reported 0x%x; no longer accepting deposits", h.pfds[1].revents);
      h.pfds[1].fd = -1;
    }
  }
}

static void Usage(void) {
  fprintf(stderr,
          "usage: shuttle-vm-init --name NAME --vm-dir DIR [--hide PATH]...\n"
          "(started by shuttle-agent only)\n");
  exit(2);
}

int main(int argc, char** argv) {
  const char* name = NULL;
  const char* vm_dir = NULL;
  const char* hides[kMaxHides];
  int nhides = 0;
  for (int i = 1; i < argc; ++i) {
    if (i + 1 >= argc) Usage();
    if (strcmp(argv[i], "--name") == 0) {
      name = argv[++i];
    } else if (strcmp(argv[i], "--vm-dir") == 0) {
      vm_dir = argv[++i];
    } else if (strcmp(argv[i], "--hide") == 0 && nhides < kMaxHides) {
      hides[nhides++] = argv[++i];
    } else {
      Usage();
    }
  }
  if (name == NULL || vm_dir == NULL || vm_dir[0] != '/') Usage();
  g_name = name;
  struct stat st;
  if (fstat(kSetupFd, &st) != 0 || !S_ISSOCK(st.st_mode) || fstat(kRecvFd, &st) != 0 ||
      !S_ISSOCK(st.st_mode) || fstat(kSendFd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    fprintf(stderr, "shuttle-vm-init: fds 3, 4, 5 must be the agent's sockets\n");
    return 2;
  }
  // Nothing of the agent's may leak into the VM.
  if (close_range(kFirstFreeFd, ~0U, 0) != 0) SetupFail(errno, "close inherited fds");
  int cap = RaiseFdLimit();
  int sigfd = -1;
  SetupSignals(&sigfd);
  SetupRoot(name, vm_dir, hides, nhides);
  FinishSetup();
  Log("started (pid namespace init, holding up to %d fds)", cap);
  return Serve(sigfd, cap);
}
