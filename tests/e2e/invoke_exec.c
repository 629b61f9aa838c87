/* invoke_exec: a statically linked caller for the invocation e2e test. `invoke_exec PROG ARGS...`
 * execs PROG directly (no shell, no libc lookups), as a static binary in a VM would: when a
 * rule places PROG in another VM, what runs is the stand-in bound over it. libc only. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: invoke_exec PROG [ARGS...]\n");
    return 2;
  }
  execv(argv[1], argv + 1);
  fprintf(stderr, "invoke_exec: exec %s: %s\n", argv[1], strerror(errno));
  return 127;
}
