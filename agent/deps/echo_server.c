/* A tiny echo server for the dependency tests: listens on a unix socket path (stream), and
 * echoes each connection's bytes back until the peer closes. Optional startup delay (so tests
 * see callers wait for readiness), and a marker file appended one line per start (so tests can
 * count starts).
 *   deps_echo_server PATH [--delay-ms N] [--starts FILE] [--never-listen]
 * --never-listen: stays alive without ever listening (a service that never becomes ready). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void* Echo(void* arg) {
  int fd = (int)(long)arg;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) {
    ssize_t done = 0;
    while (done < n) {
      ssize_t w = write(fd, buf + done, (size_t)(n - done));
      if (w <= 0) goto out;
      done += w;
    }
  }
out:
  close(fd);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s PATH [--delay-ms N] [--starts FILE] [--never-listen]\n", argv[0]);
    return 2;
  }
  const char* path = argv[1];
  long delay_ms = 0;
  const char* starts = NULL;
  int never_listen = 0;
  for (int i = 2; i < argc; ++i) {
    if (strcmp(argv[i], "--delay-ms") == 0 && i + 1 < argc) {
      delay_ms = strtol(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "--starts") == 0 && i + 1 < argc) {
      starts = argv[++i];
    } else if (strcmp(argv[i], "--never-listen") == 0) {
      never_listen = 1;
    } else {
      fprintf(stderr, "echo_server: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  if (starts != NULL) {
    int fd = open(starts, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || dprintf(fd, "start %d\n", (int)getpid()) < 0) {
      fprintf(stderr, "echo_server: %s: %s\n", starts, strerror(errno));
      return 1;
    }
    close(fd);
  }
  if (never_listen) {
    for (;;) pause();
  }
  if (delay_ms > 0) {
    struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
  }
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof(addr));
  addr.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof(addr.sun_path)) {
    fprintf(stderr, "echo_server: path too long\n");
    return 2;
  }
  strcpy(addr.sun_path, path);
  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  unlink(path);
  if (lfd < 0 || bind(lfd, (struct sockaddr*)&addr, sizeof(addr)) != 0 || listen(lfd, 64) != 0) {
    fprintf(stderr, "echo_server: listen on %s: %s\n", path, strerror(errno));
    return 1;
  }
  fprintf(stderr, "echo_server: listening on %s\n", path);
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      fprintf(stderr, "echo_server: accept: %s\n", strerror(errno));
      return 1;
    }
    pthread_t thread;
    if (pthread_create(&thread, NULL, Echo, (void*)(long)fd) != 0) {
      close(fd);
      continue;
    }
    pthread_detach(thread);
  }
}
