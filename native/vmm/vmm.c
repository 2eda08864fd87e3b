// msb-vmm: the per-VM helper. A VMM never runs inside the Node process; this small executable
// stands between Node and the VMM so the VM dies with its creator.
//
//   msb-vmm exec PARENT_PID -- PROGRAM ARGS...
//     Arms a parent-death signal (SIGKILL), checks PARENT_PID is still the parent (it may have
//     died before the signal was armed), and execs PROGRAM (QEMU) in its place.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static int usage(void) {
  fprintf(stderr, "usage: msb-vmm exec PARENT_PID -- PROGRAM [ARGS...]\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc < 5 || strcmp(argv[1], "exec") != 0 || strcmp(argv[3], "--") != 0) return usage();
  pid_t parent = (pid_t)strtol(argv[2], NULL, 10);
#ifdef __linux__
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
    perror("msb-vmm: prctl(PR_SET_PDEATHSIG)");
    return 1;
  }
#endif
  if (getppid() != parent) return 1;  // the creator is already gone
  execvp(argv[4], argv + 4);
  fprintf(stderr, "msb-vmm: cannot execute %s: %s\n", argv[4], strerror(errno));
  return 127;
}
