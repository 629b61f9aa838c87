/* shuttle-launch: starts one program inside a Shuttle VM, under interception.
 *
 *   shuttle-launch --init-pid P --uid U --gid G [--groups g1,g2] --ctl-fd N [--cwd DIR]
 *                  -- CMD ARGS...
 *
 * Started by the agent (as root) with the caller's stdio as fds 0/1/2 and one end of a
 * SOCK_SEQPACKET control socket as fd N. It joins the namespaces of the VM whose init is P
 * (ipc, uts, net, pid, then mnt, and the init's root), forks, and:
 *  - the parent (outside the VM's PID namespace, so the agent can wait for it) forwards
 *    SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the child and exits with the child's exit
 *    code, or dies of the signal that killed it (128+signal if that one does not kill);
 *  - the child (in the VM's PID namespace) sends HELLO with SCM_CREDENTIALS (the agent learns
 *    its pid in the agent's own PID namespace from the kernel), installs the seccomp filter
 *    with a new listener while still root, sends LISTENER with the listener's fd number, waits
 *    for the agent's ACK (the agent has taken the fd with pidfd_getfd), closes both fds, drops
 *    to the user (setgroups, setresgid, setresuid), changes directory and execs CMD.
 * Any failure: one line "shuttle-launch: STEP: strerror" on stderr and exit 127 (126 when CMD
 * exists but cannot be executed). Links nothing but libc.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* NOLINT(bugprone-reserved-identifier): glibc's feature-test macro. */
#endif
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "driver-shim/abi/shuttle_abi.h"
#include "driver-shim/linux/seccomp_filter.h"

#define kExitFailure 127
#define kExitCannotExec 126
#define kMaxGroups 256

struct Options {
  pid_t init_pid;
  uid_t uid;
  gid_t gid;
  gid_t groups[kMaxGroups];
  size_t group_count;
  int ctl_fd;
  const char* cwd;
  char** argv; /* CMD ARGS..., NULL-terminated. */
};

static void Die(int code, int err, const char* fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

/* One line on stderr naming the step and the errno, then exit. */
static void Die(int code, int err, const char* fmt, ...) {
  char step[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(step, sizeof(step), fmt, ap);
  va_end(ap);
  if (err != 0) {
    dprintf(STDERR_FILENO, "shuttle-launch: %s: %s\n", step, strerror(err));
  } else {
    dprintf(STDERR_FILENO, "shuttle-launch: %s\n", step);
  }
  _exit(code);
}

static void Usage(const char* why) {
  Die(kExitFailure, 0,
      "%s (usage: shuttle-launch --init-pid P --uid U --gid G [--groups g1,g2] --ctl-fd N "
      "[--cwd DIR] -- CMD ARGS...)",
      why);
}

/* Parses a decimal number in [min, max]; the whole string must be the number. */
static long long ParseNumber(const char* flag, const char* text, long long min, long long max) {
  if (text == NULL || *text == '\0') Die(kExitFailure, 0, "%s: missing value", flag);
  errno = 0;
  char* end = NULL;
  long long v = strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || v < min || v > max) {
    Die(kExitFailure, 0, "%s: '%s' is not a number in [%lld, %lld]", flag, text, min, max);
  }
  return v;
}

static void ParseGroups(const char* text, struct Options* o) {
  o->group_count = 0;
  if (*text == '\0') return;
  char buf[4096];
  if (strlen(text) >= sizeof(buf)) Die(kExitFailure, 0, "--groups: list too long");
  strcpy(buf, text);
  char* save = NULL;
  for (char* tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
    if (o->group_count == kMaxGroups) Die(kExitFailure, 0, "--groups: more than %d", kMaxGroups);
    o->groups[o->group_count++] = (gid_t)ParseNumber("--groups", tok, 0, UINT32_MAX - 1);
  }
}

static void ParseArgs(int argc, char** argv, struct Options* o) {
  int have_pid = 0, have_uid = 0, have_gid = 0, have_ctl = 0;
  memset(o, 0, sizeof(*o));
  o->ctl_fd = -1;
  int i = 1;
  for (; i < argc; ++i) {
    const char* a = argv[i];
    if (strcmp(a, "--") == 0) {
      ++i;
      break;
    }
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--init-pid") == 0) {
      o->init_pid = (pid_t)ParseNumber(a, v, 1, INT32_MAX);
      have_pid = 1;
    } else if (strcmp(a, "--uid") == 0) {
      o->uid = (uid_t)ParseNumber(a, v, 0, UINT32_MAX - 1);
      have_uid = 1;
    } else if (strcmp(a, "--gid") == 0) {
      o->gid = (gid_t)ParseNumber(a, v, 0, UINT32_MAX - 1);
      have_gid = 1;
    } else if (strcmp(a, "--groups") == 0) {
      if (v == NULL) Die(kExitFailure, 0, "--groups: missing value");
      ParseGroups(v, o);
    } else if (strcmp(a, "--ctl-fd") == 0) {
      o->ctl_fd = (int)ParseNumber(a, v, 3, INT32_MAX);
      have_ctl = 1;
    } else if (strcmp(a, "--cwd") == 0) {
      if (v == NULL || v[0] == '\0') Die(kExitFailure, 0, "--cwd: missing value");
      o->cwd = v;
    } else {
      Usage("unknown argument");
    }
    ++i; /* The value. */
  }
  if (!have_pid || !have_uid || !have_gid || !have_ctl) {
    Usage("--init-pid, --uid, --gid and --ctl-fd are required");
  }
  if (i >= argc) Usage("no command after --");
  o->argv = argv + i;
}

/* Sends one encoded message on the control socket, with our credentials attached if `creds`. */
static void SendMessage(int fd, const struct shuttle_abi_message* msg, int creds,
                        const char* step) {
  unsigned char buf[SHUTTLE_ABI_MAX_MESSAGE];
  size_t len = 0;
  int rc = shuttle_abi_encode(msg, buf, sizeof(buf), &len);
  if (rc != SHUTTLE_ABI_OK) Die(kExitFailure, 0, "%s: encode: %s", step, shuttle_abi_strerror(rc));
  if (!creds) {
    ssize_t n;
    do {
      n = write(fd, buf, len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) Die(kExitFailure, errno, "%s: write", step);
    if ((size_t)n != len) Die(kExitFailure, 0, "%s: short write", step);
    return;
  }
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  union {
    char buf[CMSG_SPACE(sizeof(struct ucred))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct msghdr mh = {0};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control.buf;
  mh.msg_controllen = sizeof(control.buf);
  struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_CREDENTIALS;
  c->cmsg_len = CMSG_LEN(sizeof(struct ucred));
  struct ucred cred = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
  memcpy(CMSG_DATA(c), &cred, sizeof(cred));
  ssize_t n;
  do {
    n = sendmsg(fd, &mh, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) Die(kExitFailure, errno, "%s: sendmsg", step);
  if ((size_t)n != len) Die(kExitFailure, 0, "%s: short sendmsg", step);
}

/* Waits for the agent's ACK of message `seq`. */
static void WaitAck(int fd, uint32_t seq) {
  unsigned char buf[SHUTTLE_ABI_MAX_MESSAGE];
  ssize_t n;
  do {
    n = read(fd, buf, sizeof(buf));
  } while (n < 0 && errno == EINTR);
  if (n < 0) Die(kExitFailure, errno, "wait for the agent's ACK: read");
  if (n == 0) Die(kExitFailure, 0, "wait for the agent's ACK: the agent closed the channel");
  struct shuttle_abi_message msg;
  int rc = shuttle_abi_decode(buf, (size_t)n, &msg, NULL);
  if (rc != SHUTTLE_ABI_OK) {
    Die(kExitFailure, 0, "wait for the agent's ACK: %s", shuttle_abi_strerror(rc));
  }
  if (msg.header.type != SHUTTLE_ABI_ACK || msg.u.ack.seq_ref != seq) {
    Die(kExitFailure, 0, "wait for the agent's ACK: unexpected message type %u",
        (unsigned)msg.header.type);
  }
  if (msg.u.ack.status != 0) {
    Die(kExitFailure, msg.u.ack.status, "the agent refused the listener");
  }
}

static int InstallFilter(void) {
  struct sock_filter insns[SHUTTLE_FILTER_MAX_INSNS];
  int len = shuttle_build_filter(insns, SHUTTLE_FILTER_MAX_INSNS);
  if (len < 0) Die(kExitFailure, 0, "build the seccomp filter: program too long");
  struct sock_fprog prog = {.len = (unsigned short)len, .filter = insns};
  /* Root (CAP_SYS_ADMIN) may install a filter without PR_SET_NO_NEW_PRIVS; not setting it
   * keeps setuid programs (su, ping...) working inside the VM. */
  long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  if (fd < 0) Die(kExitFailure, errno, "install the seccomp filter");
  return (int)fd;
}

static void DropPrivileges(const struct Options* o) {
  if (setgroups(o->group_count, o->group_count ? o->groups : NULL) != 0) {
    Die(kExitFailure, errno, "setgroups");
  }
  if (setresgid(o->gid, o->gid, o->gid) != 0) Die(kExitFailure, errno, "setresgid(%u)", o->gid);
  if (setresuid(o->uid, o->uid, o->uid) != 0) Die(kExitFailure, errno, "setresuid(%u)", o->uid);
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0) {
    Die(kExitFailure, errno, "getresuid");
  }
  if (ru != o->uid || eu != o->uid || su != o->uid || rg != o->gid || eg != o->gid ||
      sg != o->gid) {
    Die(kExitFailure, 0, "drop privileges: ids did not change");
  }
}

static void RunChild(const struct Options* o, const sigset_t* original_mask) {
  struct shuttle_abi_message msg;
  memset(&msg, 0, sizeof(msg));
  msg.header.type = SHUTTLE_ABI_HELLO;
  msg.header.seq = 1;
  msg.u.hello.platform = SHUTTLE_ABI_PLATFORM_LINUX;
  msg.u.hello.max_version = SHUTTLE_ABI_VERSION;
  msg.u.hello.pid = (uint32_t)getpid();
  SendMessage(o->ctl_fd, &msg, 1, "send HELLO");

  int listener = InstallFilter();
  /* From here on the interaction syscalls wait for the agent; write/read/close/set*id/chdir/
   * execve are not among them. */
  memset(&msg, 0, sizeof(msg));
  msg.header.type = SHUTTLE_ABI_LISTENER;
  msg.header.seq = 2;
  msg.u.listener.fd = listener;
  SendMessage(o->ctl_fd, &msg, 0, "send LISTENER");
  WaitAck(o->ctl_fd, 2);
  close(listener);
  close(o->ctl_fd);

  DropPrivileges(o);
  if (o->cwd != NULL && chdir(o->cwd) != 0) Die(kExitFailure, errno, "chdir(%s)", o->cwd);
  if (sigprocmask(SIG_SETMASK, original_mask, NULL) != 0) Die(kExitFailure, errno, "sigprocmask");
  execvp(o->argv[0], o->argv);
  int err = errno;
  Die(err == ENOENT || err == ENOTDIR ? kExitFailure : kExitCannotExec, err, "exec %s", o->argv[0]);
}

static const int kForwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

static void JoinVm(pid_t init_pid) {
  static const struct {
    const char* name;
    int type;
  } kNamespaces[] = {{"ipc", CLONE_NEWIPC},
                     {"uts", CLONE_NEWUTS},
                     {"net", CLONE_NEWNET},
                     {"pid", CLONE_NEWPID},
                     {"mnt", CLONE_NEWNS}};
  enum { kCount = sizeof(kNamespaces) / sizeof(kNamespaces[0]) };
  int fds[kCount];
  char path[64];
  /* Open everything first: once in the VM's mount namespace, /proc is the VM's. */
  for (int i = 0; i < kCount; ++i) {
    snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)init_pid, kNamespaces[i].name);
    fds[i] = open(path, O_RDONLY | O_CLOEXEC);
    if (fds[i] < 0) Die(kExitFailure, errno, "open %s", path);
  }
  snprintf(path, sizeof(path), "/proc/%d/root", (int)init_pid);
  int root = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) Die(kExitFailure, errno, "open %s", path);
  for (int i = 0; i < kCount; ++i) {
    if (setns(fds[i], kNamespaces[i].type) != 0) {
      Die(kExitFailure, errno, "setns(%s of pid %d)", kNamespaces[i].name, (int)init_pid);
    }
    close(fds[i]);
  }
  /* setns(mnt) put us at the namespace's root; take the init's root explicitly, which is the
   * same after a pivot_root and right even if the init only chroot()ed. */
  if (fchdir(root) != 0) Die(kExitFailure, errno, "fchdir to the VM root");
  if (chroot(".") != 0) Die(kExitFailure, errno, "chroot to the VM root");
  if (chdir("/") != 0) Die(kExitFailure, errno, "chdir /");
  close(root);
}

/* Ends the launcher the way its child ended: killed by `sig` (no core file of its own), so that
 * the agent's waitid tells a signal from an exit code (invocation across VMs re-raises it in
 * the caller's VM). Exits 128+sig if the signal does not kill. */
static void DieOfSignal(int sig, const sigset_t* blocked) {
  const struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  signal(sig, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  if (sigismember(blocked, sig)) sigprocmask(SIG_UNBLOCK, &one, NULL);
  raise(sig);
  _exit(128 + sig);
}

int main(int argc, char** argv) {
  struct Options o;
  ParseArgs(argc, argv, &o);
  if (fcntl(o.ctl_fd, F_GETFD) < 0) Die(kExitFailure, errno, "--ctl-fd %d", o.ctl_fd);
  /* The control fd must not leak into CMD even if exec happens before we close it. */
  if (fcntl(o.ctl_fd, F_SETFD, FD_CLOEXEC) != 0) Die(kExitFailure, errno, "fcntl(ctl fd)");

  JoinVm(o.init_pid);

  /* Block the forwarded signals and SIGCHLD before fork, so none is lost in between. */
  sigset_t waited, original;
  sigemptyset(&waited);
  for (size_t i = 0; i < sizeof(kForwarded) / sizeof(kForwarded[0]); ++i) {
    sigaddset(&waited, kForwarded[i]);
  }
  sigaddset(&waited, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &waited, &original) != 0) Die(kExitFailure, errno, "sigprocmask");

  pid_t child = fork();
  if (child < 0) Die(kExitFailure, errno, "fork into the VM's PID namespace");
  if (child == 0) RunChild(&o, &original); /* Never returns. */

  /* Only the child speaks to the agent; when it dies the agent sees the channel close. */
  close(o.ctl_fd);
  for (;;) {
    siginfo_t info;
    int sig = sigwaitinfo(&waited, &info);
    if (sig < 0) {
      if (errno == EINTR) continue;
      Die(kExitFailure, errno, "sigwaitinfo");
    }
    if (sig != SIGCHLD) {
      kill(child, sig); /* ESRCH: the child is exiting; its SIGCHLD follows. */
      continue;
    }
    int status = 0;
    pid_t r;
    do {
      r = waitpid(child, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r < 0) Die(kExitFailure, errno, "waitpid");
    if (r == 0) continue; /* Stopped or continued, or a SIGCHLD from elsewhere. */
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) DieOfSignal(WTERMSIG(status), &waited);
  }
}
