// The issue 3 syscall benchmark: what interception costs a program in a VM. Runs, bare on the
// host or under `shuttlectl run` in a VM (scripts/bench.sh does both, interleaved):
//   connect:   N connect() calls of a unix stream socket to a listener it made itself, in the
//              same VM (intercepted: the agent decodes, decides intra-vm allow and continues);
//   open_read: N open()+read()+close() of a small file (not intercepted);
//   getppid:   N getppid() (not intercepted; the cheapest syscall, so the filter's own cost
//              shows most here).
// Prints one line per operation: name, then the median ns/op over the repetitions, the fastest
// and the slowest repetition. Libc only; timed with clock_gettime(CLOCK_MONOTONIC).
//
// The timed region of `connect` is the connect() calls alone: sockets are made before it, and
// accepted and closed after it, in batches that fit the listener's backlog, so neither socket()
// nor accept() nor close() is counted (and no second thread adds scheduling noise).
//
// The listener and the file live in a fresh directory under $TMPDIR (default /tmp), removed on
// exit. Put it on the same kind of file system in both runs (the VM's /tmp is a tmpfs).
//
// usage: shuttle_bench_syscall [-r REPS] [-q] N
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { kBatch = 256, kMaxReps = 101, kFileBytes = 64 };

static char g_dir[256];
static char g_sock_path[sizeof(((struct sockaddr_un*)0)->sun_path)];
static char g_file_path[300];
static int g_listener = -1;

static void Die(const char* what) {
  fprintf(stderr, "shuttle_bench_syscall: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int64_t NowNs(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void Cleanup(void) {
  if (g_listener >= 0) close(g_listener);
  if (g_sock_path[0] != '\0') unlink(g_sock_path);
  if (g_file_path[0] != '\0') unlink(g_file_path);
  if (g_dir[0] != '\0') rmdir(g_dir);
}

static void Setup(void) {
  const char* tmp = getenv("TMPDIR");
  if (tmp == NULL || tmp[0] == '\0') tmp = "/tmp";
  if (snprintf(g_dir, sizeof(g_dir), "%s/shuttle-bench.XXXXXX", tmp) >= (int)sizeof(g_dir)) {
    errno = ENAMETOOLONG;
    Die("TMPDIR");
  }
  if (mkdtemp(g_dir) == NULL) {
    g_dir[0] = '\0';
    Die("mkdtemp");
  }
  atexit(Cleanup);

  if (snprintf(g_sock_path, sizeof(g_sock_path), "%s/s", g_dir) >= (int)sizeof(g_sock_path)) {
    g_sock_path[0] = '\0';
    errno = ENAMETOOLONG;
    Die("socket path");
  }
  g_listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (g_listener < 0) Die("socket");
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, g_sock_path, strlen(g_sock_path) + 1);
  if (bind(g_listener, (struct sockaddr*)&addr, sizeof(addr)) != 0) Die("bind");
  // Room for a whole batch (somaxconn is 4096 by default): no connect() waits for accept().
  if (listen(g_listener, kBatch) != 0) Die("listen");

  snprintf(g_file_path, sizeof(g_file_path), "%s/f", g_dir);
  int fd = open(g_file_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) Die("create file");
  char data[kFileBytes];
  memset(data, 'x', sizeof(data));
  if (write(fd, data, sizeof(data)) != (ssize_t)sizeof(data)) Die("write file");
  close(fd);
}

// ns spent in n connect() calls.
static int64_t RunConnect(long n) {
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, g_sock_path, strlen(g_sock_path) + 1);
  const socklen_t len =
      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(g_sock_path) + 1);
  int fds[kBatch];
  int64_t total = 0;
  for (long done = 0; done < n;) {
    int batch = n - done < kBatch ? (int)(n - done) : kBatch;
    for (int i = 0; i < batch; ++i) {
      fds[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fds[i] < 0) Die("socket");
    }
    int64_t start = NowNs();
    for (int i = 0; i < batch; ++i) {
      if (connect(fds[i], (const struct sockaddr*)&addr, len) != 0) Die("connect");
    }
    total += NowNs() - start;
    for (int i = 0; i < batch; ++i) {
      int conn = accept4(g_listener, NULL, NULL, SOCK_CLOEXEC);
      if (conn < 0) Die("accept");
      close(conn);
      close(fds[i]);
    }
    done += batch;
  }
  return total;
}

// ns spent in n open()+read()+close().
static int64_t RunOpenRead(long n) {
  char buf[kFileBytes];
  int64_t start = NowNs();
  for (long i = 0; i < n; ++i) {
    int fd = open(g_file_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) Die("open");
    if (read(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf)) Die("read");
    close(fd);
  }
  return NowNs() - start;
}

// ns spent in n getppid(); the raw syscall, so that no libc could answer from a cache.
static int64_t RunGetppid(long n) {
  int64_t start = NowNs();
  for (long i = 0; i < n; ++i) syscall(SYS_getppid);
  return NowNs() - start;
}

static int CompareDouble(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static void Usage(void) {
  fprintf(stderr,
          "usage: shuttle_bench_syscall [-r REPS] [-q] N\n"
          "  N     operations of each kind per repetition\n"
          "  -r    repetitions (odd; default 7); each line reports their median\n"
          "  -q    no header line\n");
  exit(2);
}

int main(int argc, char** argv) {
  int reps = 7;
  int quiet = 0;
  int opt;
  while ((opt = getopt(argc, argv, "r:q")) != -1) {
    switch (opt) {
      case 'r':
        reps = atoi(optarg);
        break;
      case 'q':
        quiet = 1;
        break;
      default:
        Usage();
    }
  }
  if (optind != argc - 1 || reps < 1 || reps > kMaxReps) Usage();
  char* end = NULL;
  long n = strtol(argv[optind], &end, 10);
  if (*end != '\0' || n < 1 || n > 100000000) Usage();

  Setup();
  static const char* const kNames[] = {"connect", "open_read", "getppid"};
  int64_t (*const runs[])(long) = {RunConnect, RunOpenRead, RunGetppid};
  enum { kOps = 3 };
  double ns_per_op[kOps][kMaxReps];

  // Warm-up: fault in the code, the dentries, the socket slab caches.
  long warm = n / 10 < 1000 ? (n < 1000 ? n : 1000) : n / 10;
  for (int op = 0; op < kOps; ++op) runs[op](warm);
  // Operations interleaved within each repetition, so a noisy moment hits all of them alike.
  for (int r = 0; r < reps; ++r) {
    for (int op = 0; op < kOps; ++op) ns_per_op[op][r] = (double)runs[op](n) / (double)n;
  }

  if (!quiet) printf("# op ns_per_op_median min max (N=%ld, reps=%d)\n", n, reps);
  for (int op = 0; op < kOps; ++op) {
    qsort(ns_per_op[op], (size_t)reps, sizeof(double), CompareDouble);
    double median = reps % 2 == 1 ? ns_per_op[op][reps / 2]
                                  : (ns_per_op[op][reps / 2 - 1] + ns_per_op[op][reps / 2]) / 2;
    printf("%s %.1f %.1f %.1f\n", kNames[op], median, ns_per_op[op][0], ns_per_op[op][reps - 1]);
  }
  return 0;
}
