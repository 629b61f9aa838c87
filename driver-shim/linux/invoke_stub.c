/* shuttle-invoke: the stand-in the agent binds (read-only) over a program P inside every VM A
 * that a rule lets invoke P in another VM B. Running P in A, by any caller (a shell, a static
 * binary, anything that execs P's path), runs this instead, which:
 *  - blocks the signals it forwards (so none is lost between start and the program's launch),
 *  - connects to the agent at SHUTTLE_INVOKE_SOCKET_PATH (the agent's socket, bound read-only
 *    into every VM), sends a REQUEST with its cwd, argv and environment and its fds 0, 1, 2
 *    attached (SCM_RIGHTS), so that the program in B reads and writes the caller's own stdio;
 *  - forwards each signal it receives (INT, TERM, HUP, QUIT, USR1, USR2, WINCH, CONT, ALRM,
 *    PIPE, URG, VTALRM, PROF, XCPU, XFSZ, PWR, SYS and the real-time ones) as a SIGNAL message;
 *  - ends as the program did: exits with its code, or dies of the same signal (default action;
 *    no core file of its own). Denied or not startable: prints the agent's one-line reason,
 *    "P: REASON", on stderr and exits 126 (127 when the program does not exist in B), as a
 *    shell does for a command it cannot execute.
 * The agent decides who is asking from the kernel (SO_PEERCRED, /proc/PID/exe), never from what
 * this program says. Links nothing but libc, statically, so it runs in any VM.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* NOLINT(bugprone-reserved-identifier): glibc's feature-test macro. */
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "driver-shim/abi/shuttle_invoke_abi.h"

extern char** environ;

enum { kExitCannotExecute = 126, kExitNotFound = 127 };

static const char* g_name = "shuttle-invoke";

/* One line "NAME: MESSAGE[: strerror]" on stderr, then exit with `code`. */
__attribute__((noreturn, format(printf, 3, 4))) static void Die(int code, int err, const char* fmt,
                                                                ...) {
  char line[768];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof(line)) n = (int)sizeof(line) - 1;
  if (err != 0) snprintf(line + n, sizeof(line) - (size_t)n, ": %s", strerror(err));
  dprintf(STDERR_FILENO, "%s: %s\n", g_name, line);
  _exit(code);
}

/* The signals forwarded to the program. Job-control stops (TSTP, TTIN, TTOU) are not: the
 * stand-in would have to stop with it, and the program in B has no terminal of its own. */
static void ForwardedSignals(sigset_t* set) {
  static const int kSignals[] = {SIGINT,   SIGTERM, SIGHUP,  SIGQUIT, SIGUSR1, SIGUSR2,
                                 SIGWINCH, SIGCONT, SIGALRM, SIGPIPE, SIGURG,  SIGVTALRM,
                                 SIGPROF,  SIGXCPU, SIGXFSZ, SIGPWR,  SIGSYS};
  sigemptyset(set);
  for (size_t i = 0; i < sizeof(kSignals) / sizeof(kSignals[0]); ++i) sigaddset(set, kSignals[i]);
  for (int sig = SIGRTMIN; sig <= SIGRTMAX; ++sig) sigaddset(set, sig);
}

/* Makes sure fds 0..2 are open (a caller may have closed one): /dev/null stands in for it. */
static void EnsureStdio(void) {
  for (int fd = 0; fd <= 2; ++fd) {
    if (fcntl(fd, F_GETFD) >= 0) continue;
    int null_fd = open("/dev/null", O_RDWR);
    if (null_fd < 0) Die(kExitCannotExecute, errno, "open /dev/null for fd %d", fd);
    if (null_fd != fd) {
      if (dup2(null_fd, fd) < 0) Die(kExitCannotExecute, errno, "dup2 /dev/null");
      close(null_fd);
    }
  }
}

static int Connect(void) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Die(kExitCannotExecute, errno, "socket");
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, SHUTTLE_INVOKE_SOCKET_PATH, sizeof(SHUTTLE_INVOKE_SOCKET_PATH));
  int rc;
  do {
    rc = connect(fd, (struct sockaddr*)&addr, sizeof(addr));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    Die(kExitCannotExecute, errno,
        "this program runs in another VM, but the Shuttle agent is not reachable at %s",
        SHUTTLE_INVOKE_SOCKET_PATH);
  }
  return fd;
}

/* Sends `len` bytes; the first chunk carries fds 0, 1, 2 when `with_fds`. */
static void SendAll(int sock, const unsigned char* buf, size_t len, int with_fds) {
  size_t sent = 0;
  while (sent < len) {
    struct iovec iov = {.iov_base = (void*)(buf + sent), .iov_len = len - sent};
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    union {
      char buf[CMSG_SPACE(3 * sizeof(int))];
      struct cmsghdr align;
    } control;
    if (with_fds && sent == 0) {
      memset(&control, 0, sizeof(control));
      msg.msg_control = control.buf;
      msg.msg_controllen = sizeof(control.buf);
      struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(3 * sizeof(int));
      const int fds[3] = {0, 1, 2};
      memcpy(CMSG_DATA(c), fds, sizeof(fds));
    }
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die(kExitCannotExecute, errno, "sending the request to the Shuttle agent");
    }
    sent += (size_t)n;
  }
}

static void SendRequest(int sock, int argc, char** argv) {
  char cwd_buf[PATH_MAX];
  const char* cwd = getcwd(cwd_buf, sizeof(cwd_buf)) != NULL ? cwd_buf : "/";
  uint32_t envc = 0;
  while (environ != NULL && environ[envc] != NULL) ++envc;
  const char* const* envp = (const char* const*)environ;
  size_t size =
      shuttle_invoke_request_size(cwd, (uint32_t)argc, (const char* const*)argv, envc, envp);
  if (size == 0) {
    Die(kExitCannotExecute, E2BIG, "arguments and environment exceed the %u-byte limit",
        SHUTTLE_INVOKE_MAX_REQUEST);
  }
  unsigned char* buf = malloc(size);
  if (buf == NULL) Die(kExitCannotExecute, ENOMEM, "request");
  size_t written = 0;
  int rc = shuttle_invoke_encode_request(cwd, (uint32_t)argc, (const char* const*)argv, envc, envp,
                                         buf, size, &written);
  if (rc != SHUTTLE_ABI_OK) Die(kExitCannotExecute, 0, "request: %s", shuttle_abi_strerror(rc));
  SendAll(sock, buf, written, 1);
  free(buf);
}

/* Ends the way the program did. */
static void Finish(const struct shuttle_invoke_result* r) {
  switch (r->outcome) {
    case SHUTTLE_INVOKE_EXITED:
      _exit(r->value);
    case SHUTTLE_INVOKE_SIGNALED: {
      const struct rlimit no_core = {0, 0};
      setrlimit(RLIMIT_CORE, &no_core);
      signal(r->value, SIG_DFL);
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, r->value);
      sigprocmask(SIG_UNBLOCK, &one, NULL);
      raise(r->value);
      _exit(128 + r->value); /* A signal whose default is to be ignored (never a killer). */
    }
    case SHUTTLE_INVOKE_FAILED:
      Die(r->value == ENOENT ? kExitNotFound : kExitCannotExecute, 0, "%s", r->message);
    default:
      Die(kExitCannotExecute, 0, "%s", r->message);
  }
}

/* Reads into `buf` until it holds `want` bytes; 0 at EOF before that. */
static int ReadSome(int sock, unsigned char* buf, size_t* have, size_t want) {
  while (*have < want) {
    ssize_t n = recv(sock, buf + *have, want - *have, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Die(kExitCannotExecute, errno, "reading the Shuttle agent's answer");
    if (n == 0) return 0;
    *have += (size_t)n;
  }
  return 1;
}

int main(int argc, char** argv) {
  if (argc >= 1 && argv[0] != NULL && argv[0][0] != '\0') g_name = argv[0];
  if (argc < 1 || argv[0] == NULL) Die(kExitCannotExecute, 0, "started without argv[0]");

  sigset_t forwarded;
  ForwardedSignals(&forwarded);
  if (sigprocmask(SIG_BLOCK, &forwarded, NULL) != 0) Die(kExitCannotExecute, errno, "sigmask");
  int sigfd = signalfd(-1, &forwarded, SFD_CLOEXEC);
  if (sigfd < 0) Die(kExitCannotExecute, errno, "signalfd");

  EnsureStdio();
  int sock = Connect();
  SendRequest(sock, argc, argv);

  unsigned char answer[SHUTTLE_INVOKE_HEADER_SIZE + SHUTTLE_INVOKE_RESULT_FIXED_SIZE +
                       SHUTTLE_INVOKE_MESSAGE_MAX];
  size_t have = 0;
  for (;;) {
    struct pollfd fds[2] = {{.fd = sock, .events = POLLIN}, {.fd = sigfd, .events = POLLIN}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      Die(kExitCannotExecute, errno, "poll");
    }
    if (fds[1].revents & POLLIN) {
      struct signalfd_siginfo info;
      if (read(sigfd, &info, sizeof(info)) == (ssize_t)sizeof(info)) {
        unsigned char msg[SHUTTLE_INVOKE_HEADER_SIZE + SHUTTLE_INVOKE_SIGNAL_SIZE];
        size_t written = 0;
        if (shuttle_invoke_encode_signal(info.ssi_signo, msg, sizeof(msg), &written) ==
            SHUTTLE_ABI_OK) {
          SendAll(sock, msg, written, 0);
        }
      }
    }
    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
    /* The agent sends one RESULT and closes: read the header, then its payload. */
    if (!ReadSome(sock, answer, &have, SHUTTLE_INVOKE_HEADER_SIZE)) {
      Die(kExitCannotExecute, 0, "the Shuttle agent closed the connection without an answer");
    }
    struct shuttle_invoke_header h;
    int rc = shuttle_invoke_decode_header(answer, have, &h);
    if (rc != SHUTTLE_ABI_OK || h.type != SHUTTLE_INVOKE_RESULT) {
      Die(kExitCannotExecute, 0, "bad answer from the Shuttle agent: %s",
          rc != SHUTTLE_ABI_OK ? shuttle_abi_strerror(rc) : "not a RESULT");
    }
    if (!ReadSome(sock, answer, &have, SHUTTLE_INVOKE_HEADER_SIZE + h.length)) {
      Die(kExitCannotExecute, 0, "the Shuttle agent's answer was cut short");
    }
    struct shuttle_invoke_result result;
    rc = shuttle_invoke_decode_result(answer + SHUTTLE_INVOKE_HEADER_SIZE, h.length, &result);
    if (rc != SHUTTLE_ABI_OK) {
      Die(kExitCannotExecute, 0, "bad answer from the Shuttle agent: %s", shuttle_abi_strerror(rc));
    }
    Finish(&result);
  }
}
