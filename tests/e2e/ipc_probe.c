/* ipc_probe: one end of one IPC mechanism, for the e2e isolation and restart tests.
 *
 *   ipc_probe server KIND NAME      create the object, print "READY KIND target=T", then serve
 *                                   until SIGTERM/SIGINT, printing "GOT from=WHO" each time a
 *                                   client reaches the object (WHO: the client's hostname, i.e.
 *                                   its VM's name; "pid:N" for signals)
 *   ipc_probe client KIND TARGET    try to reach the object named TARGET (what READY printed);
 *                                   print one line, "OK[ detail]" and exit 0, or
 *                                   "FAIL ERRNO_NAME[ detail]" and exit 1
 *   ipc_probe connect-loop MIN DENIED MISSING
 *                                   connect() on a unix stream socket, alternating between the
 *                                   path DENIED (expect EACCES from policy) and MISSING (expect
 *                                   ENOENT), until at least MIN calls were made and a line (or
 *                                   EOF) arrived on stdin; prints "started", "progress N" every
 *                                   500 calls and a final "DONE ..." line with the counts
 *
 * KIND (the object NAME for the server):
 *   unix       path of a unix stream socket          abstract   abstract unix socket name
 *   tcp, udp   port on 127.0.0.1 ("-": any free one); T is the port bound
 *   fifo       path of a FIFO                        posix-shm  shm_open name ("/x")
 *   posix-mq   mq_open name ("/x")                   sysv-shm   SysV shm key (0x... or decimal)
 *   sysv-msg   SysV msg queue key                    signal     ignored; T = the server's pid
 *
 * Readiness goes to stdout (line-buffered), which `shuttlectl run` passes through as a
 * descriptor: the test reads it from the host even though the VM's /tmp is private.
 * C, libc (+ librt) only.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* NOLINT(bugprone-reserved-identifier): glibc's feature-test macro. */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum {
  kMsgMax = 128,
  kShmSlots = 64,
  kReplyTimeoutMs = 5000,
  kPollIntervalNs = 5 * 1000 * 1000,
  kProgressEvery = 500,
};

#define kShmMagic 0x53485545u /* "SHUE" */

/* The shared-memory layout (POSIX and SysV): clients append entries, the server prints them. */
struct ShmEntry {
  uint32_t ready; /* Set (release) after `from` is written. */
  char from[kMsgMax];
};
struct ShmArea {
  uint32_t magic;
  uint32_t next; /* Next free slot, taken with an atomic fetch-add. */
  struct ShmEntry slots[kShmSlots];
};

struct SysvMsg {
  long mtype;
  char text[kMsgMax];
};

static volatile sig_atomic_t g_stop = 0;

static void OnStop(int sig) {
  (void)sig;
  g_stop = 1;
}

/* SIGTERM/SIGINT end the server: no SA_RESTART, so a blocking call returns EINTR. */
static void InstallStopHandlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnStop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
}

/* The symbolic name of an errno value ("ENOENT"), for one-word results (glibc 2.32+). */
static const char* ErrnoName(int e) {
  const char* name = strerrorname_np(e);
  return name != NULL ? name : "EUNKNOWN";
}

static void Die(const char* what) {
  int e = errno;
  fprintf(stderr, "ipc_probe: %s: %s (%s)\n", what, strerror(e), ErrnoName(e));
  exit(2);
}

static int Fail(int e, const char* detail) {
  printf("FAIL %s%s%s\n", ErrnoName(e), detail ? " " : "", detail ? detail : "");
  fflush(stdout);
  return 1;
}

static int Ok(const char* detail) {
  printf("OK%s%s\n", detail ? " " : "", detail ? detail : "");
  fflush(stdout);
  return 0;
}

static void Ready(const char* kind, const char* target) {
  printf("READY %s target=%s\n", kind, target);
  fflush(stdout);
}

static void Got(const char* from) {
  printf("GOT from=%s\n", from);
  fflush(stdout);
}

/* "HELLO from=<hostname>": in a VM the hostname is the VM's name. */
static void Hello(char* buf, size_t size) {
  char host[HOST_NAME_MAX + 1] = "?";
  gethostname(host, sizeof(host) - 1);
  snprintf(buf, size, "HELLO from=%s", host);
}

/* Extracts WHO from "HELLO from=WHO" (up to a newline) into `who`. */
static void ParseHello(const char* msg, size_t len, char* who, size_t size) {
  char tmp[kMsgMax + 1];
  if (len > kMsgMax) len = kMsgMax;
  memcpy(tmp, msg, len);
  tmp[len] = '\0';
  tmp[strcspn(tmp, "\n")] = '\0';
  const char* p = strstr(tmp, "from=");
  snprintf(who, size, "%s", p ? p + 5 : "garbage");
}

static long ParseLong(const char* text, const char* what) {
  char* end = NULL;
  errno = 0;
  long v = strtol(text, &end, 0);
  if (errno != 0 || end == text || *end != '\0') {
    fprintf(stderr, "ipc_probe: %s: '%s' is not a number\n", what, text);
    exit(2);
  }
  return v;
}

static void SleepPoll(void) {
  struct timespec ts = {0, kPollIntervalNs};
  nanosleep(&ts, NULL);
}

/* Waits up to kReplyTimeoutMs for `fd` to be readable; 0 on success, else an errno. */
static int WaitReadable(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  int r;
  do {
    r = poll(&p, 1, kReplyTimeoutMs);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return errno;
  if (r == 0) return ETIMEDOUT;
  return 0;
}

/* ---- unix (path and abstract) and TCP: stream sockets with a HELLO/ACK exchange ---- */

static socklen_t UnixAddress(const char* kind, const char* name, struct sockaddr_un* sun) {
  memset(sun, 0, sizeof(*sun));
  sun->sun_family = AF_UNIX;
  size_t len = strlen(name);
  if (len + 1 >= sizeof(sun->sun_path)) {
    fprintf(stderr, "ipc_probe: socket name too long\n");
    exit(2);
  }
  if (strcmp(kind, "abstract") == 0) {
    memcpy(sun->sun_path + 1, name, len); /* sun_path[0] == '\0': the abstract namespace. */
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
  }
  memcpy(sun->sun_path, name, len);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

static void Loopback(struct sockaddr_in* sin, int port) {
  memset(sin, 0, sizeof(*sin));
  sin->sin_family = AF_INET;
  sin->sin_port = htons((uint16_t)port);
  sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

/* The server's port: NAME "-" means any free one (0). */
static int ServerPort(const char* name) {
  if (strcmp(name, "-") == 0) return 0;
  long port = ParseLong(name, "port");
  if (port < 0 || port > 65535) {
    fprintf(stderr, "ipc_probe: port %ld out of range\n", port);
    exit(2);
  }
  return (int)port;
}

static int BoundPort(int fd) {
  struct sockaddr_in sin;
  socklen_t len = sizeof(sin);
  if (getsockname(fd, (struct sockaddr*)&sin, &len) != 0) Die("getsockname");
  return ntohs(sin.sin_port);
}

static int ServeStream(const char* kind, const char* name) {
  int fd;
  char target[PATH_MAX];
  if (strcmp(kind, "tcp") == 0) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) Die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sin;
    Loopback(&sin, ServerPort(name));
    if (bind(fd, (struct sockaddr*)&sin, sizeof(sin)) != 0) Die("bind 127.0.0.1");
    snprintf(target, sizeof(target), "%d", BoundPort(fd));
  } else {
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) Die("socket");
    struct sockaddr_un sun;
    socklen_t len = UnixAddress(kind, name, &sun);
    if (strcmp(kind, "unix") == 0) unlink(name);
    if (bind(fd, (struct sockaddr*)&sun, len) != 0) Die("bind");
    if (strcmp(kind, "unix") == 0) chmod(name, 0777);
    snprintf(target, sizeof(target), "%s", name);
  }
  if (listen(fd, 16) != 0) Die("listen");
  Ready(kind, target);
  while (!g_stop) {
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR) continue;
      Die("accept");
    }
    char buf[kMsgMax];
    ssize_t n = WaitReadable(c) == 0 ? read(c, buf, sizeof(buf)) : -1;
    if (n > 0) {
      char who[kMsgMax];
      ParseHello(buf, (size_t)n, who, sizeof(who));
      Got(who);
      (void)!write(c, "ACK\n", 4);
    }
    close(c);
  }
  close(fd);
  if (strcmp(kind, "unix") == 0) unlink(name);
  return 0;
}

static int ClientStream(const char* kind, const char* target) {
  int fd;
  int rc;
  if (strcmp(kind, "tcp") == 0) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) Die("socket");
    struct sockaddr_in sin;
    Loopback(&sin, (int)ParseLong(target, "port"));
    rc = connect(fd, (struct sockaddr*)&sin, sizeof(sin));
  } else {
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) Die("socket");
    struct sockaddr_un sun;
    socklen_t len = UnixAddress(kind, target, &sun);
    rc = connect(fd, (struct sockaddr*)&sun, len);
  }
  if (rc != 0) return Fail(errno, "at connect");
  char hello[kMsgMax];
  Hello(hello, sizeof(hello));
  if (write(fd, hello, strlen(hello)) < 0) return Fail(errno, "at write");
  int e = WaitReadable(fd);
  if (e != 0) return Fail(e, "waiting for the ACK");
  char buf[16] = {0};
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  if (n < 0) return Fail(errno, "at read");
  if (strncmp(buf, "ACK", 3) != 0) return Fail(EPROTO, "no ACK");
  return Ok(NULL);
}

/* ---- UDP: sendto() the HELLO, wait for the ACK (IP_RECVERR reports ICMP refusals) ---- */

static int ServeUdp(const char* name) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Die("socket");
  struct sockaddr_in sin;
  Loopback(&sin, ServerPort(name));
  if (bind(fd, (struct sockaddr*)&sin, sizeof(sin)) != 0) Die("bind 127.0.0.1");
  char target[16];
  snprintf(target, sizeof(target), "%d", BoundPort(fd));
  Ready("udp", target);
  while (!g_stop) {
    char buf[kMsgMax];
    struct sockaddr_in from;
    socklen_t from_len = sizeof(from);
    ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr*)&from, &from_len);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("recvfrom");
    }
    char who[kMsgMax];
    ParseHello(buf, (size_t)n, who, sizeof(who));
    Got(who);
    (void)sendto(fd, "ACK\n", 4, 0, (struct sockaddr*)&from, from_len);
  }
  close(fd);
  return 0;
}

static int ClientUdp(const char* target) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Die("socket");
  int one = 1;
  /* Without it an unconnected UDP socket never hears of the ICMP port-unreachable. */
  if (setsockopt(fd, IPPROTO_IP, IP_RECVERR, &one, sizeof(one)) != 0) Die("IP_RECVERR");
  struct sockaddr_in sin;
  Loopback(&sin, (int)ParseLong(target, "port"));
  char hello[kMsgMax];
  Hello(hello, sizeof(hello));
  if (sendto(fd, hello, strlen(hello), 0, (struct sockaddr*)&sin, sizeof(sin)) < 0) {
    return Fail(errno, "at sendto");
  }
  int e = WaitReadable(fd);
  if (e != 0) return Fail(e, "waiting for the ACK");
  char buf[16] = {0};
  ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
  if (n < 0) return Fail(errno, "at recv");
  if (strncmp(buf, "ACK", 3) != 0) return Fail(EPROTO, "no ACK");
  return Ok(NULL);
}

/* ---- FIFO: the server holds both ends (never EOF), clients write one line ---- */

static int ServeFifo(const char* path) {
  unlink(path);
  if (mkfifo(path, 0666) != 0) Die("mkfifo");
  chmod(path, 0666);
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) Die("open fifo");
  Ready("fifo", path);
  char buf[kMsgMax * 4];
  size_t have = 0;
  while (!g_stop) {
    ssize_t n = read(fd, buf + have, sizeof(buf) - have - 1);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("read fifo");
    }
    have += (size_t)n;
    char* nl;
    while ((nl = memchr(buf, '\n', have)) != NULL) {
      char who[kMsgMax];
      ParseHello(buf, (size_t)(nl - buf), who, sizeof(who));
      Got(who);
      size_t used = (size_t)(nl - buf) + 1;
      memmove(buf, nl + 1, have - used);
      have -= used;
    }
    if (have == sizeof(buf) - 1) have = 0; /* A line too long: drop it. */
  }
  close(fd);
  unlink(path);
  return 0;
}

static int ClientFifo(const char* path) {
  /* O_NONBLOCK: fail with ENXIO instead of waiting when nobody reads. */
  int fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return Fail(errno, "at open");
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) return Fail(EPROTO, "not a FIFO");
  char line[kMsgMax + 1];
  Hello(line, sizeof(line) - 1);
  strcat(line, "\n");
  if (write(fd, line, strlen(line)) < 0) return Fail(errno, "at write");
  return Ok(NULL);
}

/* ---- shared memory (POSIX and SysV): clients append to the area, the server polls it ---- */

static void ServeArea(struct ShmArea* area) {
  uint32_t seen = 0;
  while (!g_stop) {
    while (seen < kShmSlots && __atomic_load_n(&area->slots[seen].ready, __ATOMIC_ACQUIRE)) {
      char who[kMsgMax];
      ParseHello(area->slots[seen].from, strnlen(area->slots[seen].from, kMsgMax), who,
                 sizeof(who));
      Got(who);
      ++seen;
    }
    SleepPoll();
  }
}

static int ClientArea(struct ShmArea* area) {
  if (area->magic != kShmMagic) return Fail(EPROTO, "segment exists but is not the server's");
  uint32_t slot = __atomic_fetch_add(&area->next, 1, __ATOMIC_ACQ_REL);
  if (slot >= kShmSlots) return Fail(ENOSPC, "segment full");
  Hello(area->slots[slot].from, kMsgMax);
  __atomic_store_n(&area->slots[slot].ready, 1, __ATOMIC_RELEASE);
  return Ok(NULL);
}

static int ServePosixShm(const char* name) {
  shm_unlink(name);
  int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0666);
  if (fd < 0) Die("shm_open");
  fchmod(fd, 0666);
  if (ftruncate(fd, sizeof(struct ShmArea)) != 0) Die("ftruncate");
  struct ShmArea* area = mmap(NULL, sizeof(*area), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (area == MAP_FAILED) Die("mmap");
  area->magic = kShmMagic;
  Ready("posix-shm", name);
  ServeArea(area);
  shm_unlink(name);
  return 0;
}

static int ClientPosixShm(const char* name) {
  int fd = shm_open(name, O_RDWR, 0);
  if (fd < 0) return Fail(errno, "at shm_open");
  struct stat st;
  if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(struct ShmArea)) {
    return Fail(EPROTO, "segment too small");
  }
  struct ShmArea* area = mmap(NULL, sizeof(*area), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (area == MAP_FAILED) return Fail(errno, "at mmap");
  return ClientArea(area);
}

static int ServeSysvShm(const char* key_text) {
  key_t key = (key_t)ParseLong(key_text, "key");
  int id = shmget(key, sizeof(struct ShmArea), IPC_CREAT | IPC_EXCL | 0666);
  if (id < 0 && errno == EEXIST) { /* A leftover of an earlier run in this VM. */
    int old = shmget(key, 0, 0);
    if (old >= 0) shmctl(old, IPC_RMID, NULL);
    id = shmget(key, sizeof(struct ShmArea), IPC_CREAT | IPC_EXCL | 0666);
  }
  if (id < 0) Die("shmget");
  struct ShmArea* area = shmat(id, NULL, 0);
  if (area == (void*)-1) Die("shmat");
  area->magic = kShmMagic;
  Ready("sysv-shm", key_text);
  ServeArea(area);
  shmctl(id, IPC_RMID, NULL);
  return 0;
}

static int ClientSysvShm(const char* key_text) {
  key_t key = (key_t)ParseLong(key_text, "key");
  int id = shmget(key, 0, 0);
  if (id < 0) return Fail(errno, "at shmget");
  struct ShmArea* area = shmat(id, NULL, 0);
  if (area == (void*)-1) return Fail(errno, "at shmat");
  return ClientArea(area);
}

/* ---- message queues (POSIX and SysV) ---- */

static int ServePosixMq(const char* name) {
  mq_unlink(name);
  struct mq_attr attr;
  memset(&attr, 0, sizeof(attr));
  attr.mq_maxmsg = 8;
  attr.mq_msgsize = kMsgMax;
  mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDONLY | O_CLOEXEC, 0666, &attr);
  if (q == (mqd_t)-1) Die("mq_open");
  Ready("posix-mq", name);
  while (!g_stop) {
    char buf[kMsgMax];
    ssize_t n = mq_receive(q, buf, sizeof(buf), NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("mq_receive");
    }
    char who[kMsgMax];
    ParseHello(buf, (size_t)n, who, sizeof(who));
    Got(who);
  }
  mq_close(q);
  mq_unlink(name);
  return 0;
}

static int ClientPosixMq(const char* name) {
  mqd_t q = mq_open(name, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (q == (mqd_t)-1) return Fail(errno, "at mq_open");
  char hello[kMsgMax];
  Hello(hello, sizeof(hello));
  if (mq_send(q, hello, strlen(hello) + 1, 0) != 0) return Fail(errno, "at mq_send");
  return Ok(NULL);
}

static int ServeSysvMsg(const char* key_text) {
  key_t key = (key_t)ParseLong(key_text, "key");
  int id = msgget(key, IPC_CREAT | IPC_EXCL | 0666);
  if (id < 0 && errno == EEXIST) { /* A leftover of an earlier run in this VM. */
    int old = msgget(key, 0);
    if (old >= 0) msgctl(old, IPC_RMID, NULL);
    id = msgget(key, IPC_CREAT | IPC_EXCL | 0666);
  }
  if (id < 0) Die("msgget");
  Ready("sysv-msg", key_text);
  while (!g_stop) {
    struct SysvMsg m;
    ssize_t n = msgrcv(id, &m, sizeof(m.text), 0, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("msgrcv");
    }
    char who[kMsgMax];
    ParseHello(m.text, (size_t)n, who, sizeof(who));
    Got(who);
  }
  msgctl(id, IPC_RMID, NULL);
  return 0;
}

static int ClientSysvMsg(const char* key_text) {
  key_t key = (key_t)ParseLong(key_text, "key");
  int id = msgget(key, 0);
  if (id < 0) return Fail(errno, "at msgget");
  struct SysvMsg m;
  memset(&m, 0, sizeof(m));
  m.mtype = 1;
  Hello(m.text, sizeof(m.text));
  if (msgsnd(id, &m, strlen(m.text) + 1, IPC_NOWAIT) != 0) return Fail(errno, "at msgsnd");
  return Ok(NULL);
}

/* ---- signal: a queued real-time signal, so that none is merged with another ---- */

static int ServeSignal(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGRTMIN);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) Die("sigprocmask");
  char target[16];
  snprintf(target, sizeof(target), "%d", (int)getpid());
  Ready("signal", target);
  for (;;) {
    siginfo_t info;
    int sig = sigwaitinfo(&set, &info);
    if (sig < 0) {
      if (errno == EINTR) continue;
      Die("sigwaitinfo");
    }
    if (sig != SIGRTMIN) break;
    /* si_pid is the sender as this PID namespace sees it (0 if it can't see the sender). */
    char who[32];
    snprintf(who, sizeof(who), "pid:%d", (int)info.si_pid);
    Got(who);
  }
  return 0;
}

static int ClientSignal(const char* target) {
  pid_t pid = (pid_t)ParseLong(target, "pid");
  /* If the number names this very process in our VM, the signal must not kill us. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGRTMIN);
  sigprocmask(SIG_BLOCK, &set, NULL);
  if (kill(pid, SIGRTMIN) != 0) {
    int e = errno;
    char detail[64];
    snprintf(detail, sizeof(detail), "at kill(%d): no such pid in this VM", (int)pid);
    return Fail(e, e == ESRCH ? detail : "at kill");
  }
  /* Delivered: say to which process of *our* VM the number led. */
  char detail[128];
  char path[64];
  char comm[32] = "?";
  snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
  FILE* f = fopen(path, "r");
  if (f != NULL) {
    if (fgets(comm, sizeof(comm), f) != NULL) comm[strcspn(comm, "\n")] = '\0';
    fclose(f);
  }
  char host[HOST_NAME_MAX + 1] = "?";
  gethostname(host, sizeof(host) - 1);
  snprintf(detail, sizeof(detail), "(pid %d in VM %s is %s%s)", (int)pid, host, comm,
           pid == getpid() ? ", this client" : "");
  return Ok(detail);
}

/* ---- connect-loop: the agent-restart workload ---- */

static int ConnectLoop(long min_calls, const char* denied, const char* missing) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Die("socket");
  struct sockaddr_un addr[2];
  socklen_t len[2] = {UnixAddress("unix", denied, &addr[0]),
                      UnixAddress("unix", missing, &addr[1])};
  long calls = 0, denied_eacces = 0, denied_enoent = 0, missing_enoent = 0, enosys = 0, other = 0;
  int last_other = 0;
  int stop = 0;
  printf("started pid=%d\n", (int)getpid());
  fflush(stdout);
  while (!(stop && calls >= min_calls)) {
    int which = (int)(calls & 1);
    int rc = connect(fd, (struct sockaddr*)&addr[which], len[which]);
    int e = rc == 0 ? 0 : errno;
    ++calls;
    if (rc == 0) {
      /* Nothing listens on either path: a success is as unexpected as a wrong errno. */
      ++other;
      last_other = -1;
      close(fd);
      fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) Die("socket");
    } else if (e == ENOSYS) {
      ++enosys;
    } else if (which == 0 && e == EACCES) {
      ++denied_eacces;
    } else if (which == 0 && e == ENOENT) {
      /* A denied path answered CONTINUE: what the journal does for a call left in flight. */
      ++denied_enoent;
    } else if (which == 1 && e == ENOENT) {
      ++missing_enoent;
    } else {
      ++other;
      last_other = e;
    }
    if (calls % kProgressEvery == 0) {
      printf("progress %ld\n", calls);
      fflush(stdout);
      struct pollfd p = {STDIN_FILENO, POLLIN, 0};
      if (!stop && poll(&p, 1, 0) > 0) stop = 1; /* A line or EOF: finish once past MIN. */
    }
  }
  printf(
      "DONE calls=%ld denied_eacces=%ld denied_enoent=%ld missing_enoent=%ld enosys=%ld "
      "other=%ld last_other=%s\n",
      calls, denied_eacces, denied_enoent, missing_enoent, enosys, other,
      last_other == 0  ? "none"
      : last_other < 0 ? "success"
                       : ErrnoName(last_other));
  fflush(stdout);
  return enosys == 0 && other == 0 ? 0 : 1;
}

static void Usage(void) {
  fprintf(stderr,
          "usage: ipc_probe server KIND NAME | client KIND TARGET |"
          " connect-loop MIN DENIED_PATH MISSING_PATH\n"
          "KIND: unix abstract tcp udp fifo posix-shm posix-mq sysv-shm sysv-msg signal\n");
  exit(2);
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 5 && strcmp(argv[1], "connect-loop") == 0) {
    return ConnectLoop(ParseLong(argv[2], "MIN"), argv[3], argv[4]);
  }
  if (argc != 4) Usage();
  const char* mode = argv[1];
  const char* kind = argv[2];
  const char* arg = argv[3];
  int server = strcmp(mode, "server") == 0;
  if (!server && strcmp(mode, "client") != 0) Usage();
  if (server) InstallStopHandlers();
  if (strcmp(kind, "unix") == 0 || strcmp(kind, "abstract") == 0 || strcmp(kind, "tcp") == 0) {
    return server ? ServeStream(kind, arg) : ClientStream(kind, arg);
  }
  if (strcmp(kind, "udp") == 0) return server ? ServeUdp(arg) : ClientUdp(arg);
  if (strcmp(kind, "fifo") == 0) return server ? ServeFifo(arg) : ClientFifo(arg);
  if (strcmp(kind, "posix-shm") == 0) return server ? ServePosixShm(arg) : ClientPosixShm(arg);
  if (strcmp(kind, "posix-mq") == 0) return server ? ServePosixMq(arg) : ClientPosixMq(arg);
  if (strcmp(kind, "sysv-shm") == 0) return server ? ServeSysvShm(arg) : ClientSysvShm(arg);
  if (strcmp(kind, "sysv-msg") == 0) return server ? ServeSysvMsg(arg) : ClientSysvMsg(arg);
  if (strcmp(kind, "signal") == 0) return server ? ServeSignal() : ClientSignal(arg);
  Usage();
  return 2;
}
