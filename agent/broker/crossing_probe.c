/* crossing_probe: both ends of a brokered crossing, for the crossing e2e test.
 *
 *   crossing_probe server KIND NAME     create the object, print "READY", then serve until
 *                                       SIGTERM, printing one "GOT uid=U from=WHO" line per
 *                                       client (U: SO_PEERCRED's uid for unix sockets, "-"
 *                                       otherwise; WHO: what the client said, its hostname,
 *                                       i.e. its VM) and answering "ACK HOSTNAME" (its own VM)
 *   crossing_probe client KIND TARGET [UID]
 *                                       (as UID if given) reach TARGET, say its hostname and
 *                                       print "OK HOSTNAME-OF-THE-SERVER" (exit 0) or
 *                                       "FAIL ERRNO_NAME at STEP" (exit 1)
 *
 * KIND: unix (a path; a relative TARGET is resolved from the client's working directory),
 * abstract (a name without the NUL), tcp and udp (server: a port on 127.0.0.1; client:
 * ADDR:PORT; udp clients connect() first, the form the agent brokers), mq (a POSIX queue
 * "/name": the server creates it and prints each message; the client opens it write-only and
 * sends one, then prints "OK sent").
 * C, libc (+ librt) only; runs inside the VMs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* NOLINT(bugprone-reserved-identifier): glibc's feature-test macro. */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { kMsgMax = 256, kTimeoutMs = 10000 };

static volatile sig_atomic_t g_stop = 0;

static void OnTerm(int sig) {
  (void)sig;
  g_stop = 1;
}

static void Die(const char* what) {
  fprintf(stderr, "crossing_probe: %s: %s\n", what, strerror(errno));
  exit(2);
}

static int Fail(int err, const char* step) {
  const char* name = strerrorname_np(err);
  printf("FAIL %s at %s\n", name != NULL ? name : "E?", step);
  return 1;
}

static void Hostname(char* buf, size_t size) {
  if (gethostname(buf, size) != 0) snprintf(buf, size, "?");
  buf[size - 1] = '\0';
}

/* Builds the address of KIND/NAME; returns its length. */
static socklen_t Address(const char* kind, const char* name, int server,
                         struct sockaddr_storage* out) {
  memset(out, 0, sizeof(*out));
  if (strcmp(kind, "unix") == 0 || strcmp(kind, "abstract") == 0) {
    struct sockaddr_un* sun = (struct sockaddr_un*)out;
    sun->sun_family = AF_UNIX;
    size_t len = strlen(name);
    int abstract = strcmp(kind, "abstract") == 0;
    if (len + (size_t)abstract >= sizeof(sun->sun_path)) {
      errno = ENAMETOOLONG;
      Die("name");
    }
    memcpy(sun->sun_path + abstract, name, len);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)abstract + len +
                       (abstract ? 0 : 1));
  }
  struct sockaddr_in* sin = (struct sockaddr_in*)out;
  sin->sin_family = AF_INET;
  const char* port = name;
  char ip[64] = "127.0.0.1";
  if (!server) {
    const char* colon = strrchr(name, ':');
    if (colon == NULL || (size_t)(colon - name) >= sizeof(ip)) {
      errno = EINVAL;
      Die("client address must be IP:PORT");
    }
    memcpy(ip, name, (size_t)(colon - name));
    ip[colon - name] = '\0';
    port = colon + 1;
  }
  if (inet_pton(AF_INET, ip, &sin->sin_addr) != 1) {
    errno = EINVAL;
    Die("IPv4 address");
  }
  sin->sin_port = htons((uint16_t)atoi(port));
  return sizeof(*sin);
}

static int SocketType(const char* kind) {
  return strcmp(kind, "udp") == 0 ? SOCK_DGRAM : SOCK_STREAM;
}

static int Family(const char* kind) {
  return strcmp(kind, "tcp") == 0 || strcmp(kind, "udp") == 0 ? AF_INET : AF_UNIX;
}

static int Serve(const char* kind, const char* name) {
  char host[64];
  Hostname(host, sizeof(host));
  char ack[kMsgMax];
  snprintf(ack, sizeof(ack), "ACK %s\n", host);
  if (strcmp(kind, "mq") == 0) {
    struct mq_attr attr = {.mq_maxmsg = 4, .mq_msgsize = kMsgMax};
    mq_unlink(name);
    mqd_t q = mq_open(name, O_RDONLY | O_CREAT | O_EXCL, 0666, &attr);
    if (q == (mqd_t)-1) Die("mq_open");
    printf("READY\n");
    while (!g_stop) {
      char msg[kMsgMax + 1];
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_nsec += 200 * 1000 * 1000;
      if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
      }
      ssize_t n = mq_timedreceive(q, msg, kMsgMax, NULL, &until);
      if (n < 0) {
        if (errno == ETIMEDOUT || errno == EINTR) continue;
        Die("mq_receive");
      }
      msg[n] = '\0';
      printf("GOT uid=- from=%s\n", msg);
    }
    mq_unlink(name);
    return 0;
  }
  struct sockaddr_storage addr;
  socklen_t len = Address(kind, name, 1, &addr);
  int type = SocketType(kind);
  int fd = socket(Family(kind), type | SOCK_CLOEXEC, 0);
  if (fd < 0) Die("socket");
  int one = 1;
  if (Family(kind) == AF_INET) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (strcmp(kind, "unix") == 0) unlink(name);
  if (bind(fd, (struct sockaddr*)&addr, len) != 0) Die("bind");
  if (strcmp(kind, "unix") == 0) chmod(name, 0777);
  if (type == SOCK_STREAM && listen(fd, 16) != 0) Die("listen");
  printf("READY\n");
  while (!g_stop) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, 200);
    if (r <= 0) continue;
    char msg[kMsgMax + 1];
    if (type == SOCK_DGRAM) {
      struct sockaddr_storage from;
      socklen_t from_len = sizeof(from);
      ssize_t n = recvfrom(fd, msg, kMsgMax, 0, (struct sockaddr*)&from, &from_len);
      if (n < 0) continue;
      msg[n] = '\0';
      printf("GOT uid=- from=%s\n", msg);
      sendto(fd, ack, strlen(ack), 0, (struct sockaddr*)&from, from_len);
      continue;
    }
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) continue;
    char uid[16] = "-";
    if (Family(kind) == AF_UNIX) {
      struct ucred cred;
      socklen_t cred_len = sizeof(cred);
      if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0) {
        snprintf(uid, sizeof(uid), "%u", (unsigned)cred.uid);
      }
    }
    struct pollfd q = {.fd = c, .events = POLLIN};
    ssize_t n = poll(&q, 1, kTimeoutMs) == 1 ? read(c, msg, kMsgMax) : -1;
    if (n > 0) {
      msg[n] = '\0';
      msg[strcspn(msg, "\n")] = '\0';
      printf("GOT uid=%s from=%s\n", uid, msg);
      ssize_t w = write(c, ack, strlen(ack));
      (void)w;
    }
    close(c);
  }
  if (strcmp(kind, "unix") == 0) unlink(name);
  return 0;
}

static int Client(const char* kind, const char* target) {
  char host[64];
  Hostname(host, sizeof(host));
  if (strcmp(kind, "mq") == 0) {
    mqd_t q = mq_open(target, O_WRONLY);
    if (q == (mqd_t)-1) return Fail(errno, "mq_open");
    if (mq_send(q, host, strlen(host), 0) != 0) return Fail(errno, "mq_send");
    printf("OK sent\n");
    return 0;
  }
  struct sockaddr_storage addr;
  socklen_t len = Address(kind, target, 0, &addr);
  int fd = socket(Family(kind), SocketType(kind) | SOCK_CLOEXEC, 0);
  if (fd < 0) return Fail(errno, "socket");
  if (connect(fd, (struct sockaddr*)&addr, len) != 0) return Fail(errno, "connect");
  char line[kMsgMax];
  snprintf(line, sizeof(line), "%s\n", host);
  if (send(fd, line, strlen(line), 0) < 0) return Fail(errno, "send");
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r = poll(&p, 1, kTimeoutMs);
  if (r == 0) return Fail(ETIMEDOUT, "waiting for the ACK");
  if (r < 0) return Fail(errno, "poll");
  char reply[kMsgMax + 1];
  ssize_t n = recv(fd, reply, kMsgMax, 0);
  if (n < 0) return Fail(errno, "recv");
  reply[n] = '\0';
  reply[strcspn(reply, "\n")] = '\0';
  if (strncmp(reply, "ACK ", 4) != 0) return Fail(EPROTO, "reading the ACK");
  printf("OK %s\n", reply + 4);
  return 0;
}

int main(int argc, char** argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 4 || argc > 5) {
    fprintf(stderr, "usage: crossing_probe server KIND NAME | client KIND TARGET [UID]\n");
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnTerm; /* No SA_RESTART: poll and accept return EINTR. */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  if (strcmp(argv[1], "server") == 0 && argc == 4) return Serve(argv[2], argv[3]);
  if (strcmp(argv[1], "client") != 0) {
    fprintf(stderr, "crossing_probe: unknown mode %s\n", argv[1]);
    return 2;
  }
  if (argc == 5) {
    uid_t uid = (uid_t)atoi(argv[4]);
    if (setgroups(0, NULL) != 0 || setresgid(uid, uid, uid) != 0 || setresuid(uid, uid, uid) != 0) {
      Die("switching uid");
    }
  }
  return Client(argv[2], argv[3]);
}
