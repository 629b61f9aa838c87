// The floor under issue 3's intercepted-connect target: what a seccomp user-notify round trip
// costs on this machine with a supervisor that does nothing (no decoding, no policy, no metrics)
// and answers CONTINUE at once. Each round forks a child that times N connect() calls of a unix
// stream socket to its own listener bare, then installs a filter that sends connect() to a
// user-notify listener served by the parent, and times N more. The parent serves the listener
// either blocked in SECCOMP_IOCTL_NOTIF_RECV ("recv") or through epoll ("epoll", as the agent
// does), with SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP set when the kernel has it. Prints, per mode,
// the median bare and notified ns/op and the median ratio over the rounds: Shuttle's own ratio
// (scripts/bench.sh) can't go below it.
// A third mode ("addfd", issue 5's brokered connect) is the floor of brokering: the supervisor
// answers each connect() by connecting a socket of its own to the same listener, putting it in
// place of the caller's socket (SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SETFD) and
// answering 0, which is what the agent does for a cross-VM connect minus the policy, the
// target VM and the audit.
//
// usage: shuttle_bench_notify_floor [-r ROUNDS] [N]      (libc only; no root needed)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1UL
#endif

enum { kBatch = 256, kMaxRounds = 101, kWarmup = 1000 };

static void Die(const char* what) {
  fprintf(stderr, "shuttle_bench_notify_floor: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int64_t NowNs(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

// Mean ns per connect() over n calls to the listener at `addr`; only connect() is timed.
static double TimeConnects(int listener, const struct sockaddr_un* addr, int n) {
  int fds[kBatch];
  int64_t total = 0;
  for (int done = 0; done < n;) {
    int batch = n - done < kBatch ? n - done : kBatch;
    for (int i = 0; i < batch; ++i) {
      fds[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fds[i] < 0) Die("socket");
    }
    int64_t start = NowNs();
    for (int i = 0; i < batch; ++i) {
      if (connect(fds[i], (const struct sockaddr*)addr, sizeof(*addr)) != 0) Die("connect");
    }
    total += NowNs() - start;
    for (int i = 0; i < batch; ++i) {
      int c = accept(listener, NULL, NULL);
      if (c < 0) Die("accept");
      close(c);
      close(fds[i]);
    }
    done += batch;
  }
  return (double)total / n;
}

static int InstallFilter(void) {
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_connect, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {(unsigned short)(sizeof(code) / sizeof(code[0])), code};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) Die("PR_SET_NO_NEW_PRIVS");
  int fd =
      (int)syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  if (fd < 0) Die("seccomp(NEW_LISTENER)");
  return fd;
}

// Child: bare run, filter, hand the listener fd number to the parent, notified run, report.
static void Child(int n, int report_fd, int go_fd) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof(addr.sun_path), "/dev/shm/shuttle-floor-%d.sock", (int)getpid());
  int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) Die("socket");
  unlink(addr.sun_path);
  if (bind(listener, (const struct sockaddr*)&addr, sizeof(addr)) != 0) Die("bind");
  if (listen(listener, kBatch * 2) != 0) Die("listen");
  TimeConnects(listener, &addr, kWarmup);
  double result[2];
  result[0] = TimeConnects(listener, &addr, n);
  int notify_fd = InstallFilter();
  if (write(report_fd, &notify_fd, sizeof(notify_fd)) != (ssize_t)sizeof(notify_fd)) Die("write");
  char go;
  if (read(go_fd, &go, 1) != 1) Die("read go");
  TimeConnects(listener, &addr, kWarmup);
  result[1] = TimeConnects(listener, &addr, n);
  unlink(addr.sun_path);
  if (write(report_fd, result, sizeof(result)) != (ssize_t)sizeof(result)) Die("write");
  _exit(0);
}

// Brokers one connect the way the agent does, minimal: a socket of the supervisor's own,
// connected to `addr`, replaces the caller's fd (args[0]), and connect() returns 0.
static void AnswerWithFd(int notify_fd, const struct seccomp_notif* notif,
                         const struct sockaddr_un* addr) {
  struct seccomp_notif_resp resp;
  memset(&resp, 0, sizeof(resp));
  resp.id = notif->id;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (const struct sockaddr*)addr, sizeof(*addr)) != 0) {
    resp.error = -ECONNREFUSED;
  } else {
    struct seccomp_notif_addfd addfd;
    memset(&addfd, 0, sizeof(addfd));
    addfd.id = notif->id;
    addfd.flags = SECCOMP_ADDFD_FLAG_SETFD;
    addfd.srcfd = (uint32_t)fd;
    addfd.newfd = (uint32_t)notif->data.args[0];
    addfd.newfd_flags = O_CLOEXEC;
    if (ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) < 0) resp.error = -errno;
  }
  if (fd >= 0) close(fd);
  ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

// Parent: answers every notification until the child is gone: CONTINUE, or (broker_to != NULL)
// with a descriptor of its own connected to broker_to.
static void Serve(int notify_fd, int use_epoll, const struct sockaddr_un* broker_to) {
  int ep = -1;
  if (use_epoll) {
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, notify_fd, &ev) != 0) Die("epoll");
  }
  struct seccomp_notif notif;
  struct seccomp_notif_resp resp;
  for (;;) {
    if (use_epoll) {
      struct epoll_event ev;
      int k = epoll_wait(ep, &ev, 1, -1);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) Die("epoll_wait");
      if (ev.events & EPOLLHUP) break;
    }
    memset(&notif, 0, sizeof(notif));
    if (ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_RECV, &notif) != 0) {
      if (errno == EINTR) continue;
      // ENOENT: the caller went away after the wake-up, or (POLLHUP) every process using the
      // filter is gone and RECV will never block again.
      struct pollfd pfd = {.fd = notify_fd, .events = 0};
      if (errno == ENOENT && poll(&pfd, 1, 0) == 0) continue;
      break;
    }
    if (broker_to != NULL) {
      AnswerWithFd(notify_fd, &notif, broker_to);
      continue;
    }
    memset(&resp, 0, sizeof(resp));
    resp.id = notif.id;
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
  }
  if (ep >= 0) close(ep);
}

// One round of `mode` (0 recv, 1 epoll, 2 addfd): returns bare and notified ns/op in out[0],
// out[1].
static void Round(int n, int mode, double out[2]) {
  int report[2], go[2];
  if (pipe2(report, O_CLOEXEC) != 0 || pipe2(go, O_CLOEXEC) != 0) Die("pipe");
  pid_t child = fork();
  if (child < 0) Die("fork");
  if (child == 0) Child(n, report[1], go[0]);
  close(report[1]);
  close(go[0]);
  int child_fd;
  if (read(report[0], &child_fd, sizeof(child_fd)) != (ssize_t)sizeof(child_fd)) Die("read fd");
  int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
  int notify_fd = pidfd < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, child_fd, 0);
  if (notify_fd < 0) Die("pidfd_getfd");
  uint64_t flags = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
  ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags);  // EINVAL before 6.6: fine.
  pid_t server = fork();  // The supervisor runs in its own process, as the agent does.
  if (server < 0) Die("fork");
  if (server == 0) {
    close(report[0]);
    close(go[1]);
    struct sockaddr_un child_addr = {.sun_family = AF_UNIX};
    snprintf(child_addr.sun_path, sizeof(child_addr.sun_path), "/dev/shm/shuttle-floor-%d.sock",
             (int)child);
    Serve(notify_fd, mode == 1, mode == 2 ? &child_addr : NULL);
    _exit(0);
  }
  close(notify_fd);
  close(pidfd);
  if (write(go[1], "g", 1) != 1) Die("write go");
  if (read(report[0], out, 2 * sizeof(double)) != (ssize_t)(2 * sizeof(double))) Die("read");
  int status;
  waitpid(child, &status, 0);
  waitpid(server, &status, 0);
  close(report[0]);
  close(go[1]);
}

static int Compare(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static double Median(double* v, int n) {
  qsort(v, (size_t)n, sizeof(double), Compare);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char** argv) {
  int rounds = 7, n = 20000, opt;
  while ((opt = getopt(argc, argv, "r:")) != -1) {
    if (opt == 'r')
      rounds = atoi(optarg);
    else
      return 2;
  }
  if (optind < argc) n = atoi(argv[optind]);
  if (rounds < 1 || rounds > kMaxRounds || n < 1) {
    fprintf(stderr, "usage: shuttle_bench_notify_floor [-r 1..%d] [N>0]\n", kMaxRounds);
    return 2;
  }
  enum { kModes = 3 };
  static double bare[kModes][kMaxRounds], notified[kModes][kMaxRounds], ratio[kModes][kMaxRounds];
  for (int r = 0; r < rounds; ++r) {
    for (int mode = 0; mode < kModes; ++mode) {  // Interleaved, so noise hits all modes alike.
      double out[2];
      Round(n, mode, out);
      bare[mode][r] = out[0];
      notified[mode][r] = out[1];
      ratio[mode][r] = out[1] / out[0];
    }
  }
  const char* names[kModes] = {"recv", "epoll", "addfd"};
  const char* what[kModes] = {"do-nothing supervisor", "do-nothing supervisor",
                              "supervisor brokering each connect (connect + ADDFD SETFD)"};
  for (int mode = 0; mode < kModes; ++mode) {
    printf("floor %-5s bare %.1f ns/op, %s %.1f ns/op, ratio %.3f (N=%d, %d rounds)\n", names[mode],
           Median(bare[mode], rounds), what[mode], Median(notified[mode], rounds),
           Median(ratio[mode], rounds), n, rounds);
  }
  return 0;
}
