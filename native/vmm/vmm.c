// msb-vmm: the per-VM helper. A VMM never runs inside the Node process; this small executable
// stands between Node and the VMM so the VM dies with its creator.
//
//   msb-vmm exec PARENT_PID [--keep FD]... [--no-network | --net-policy RULES] -- PROGRAM ARGS...
//     Arms a parent-death signal (SIGKILL), checks PARENT_PID is still the parent (it may have
//     died before the signal was armed), closes every descriptor from 3 up but the kept ones
//     (the agent channel's socket), forbids new privileges, with --no-network leaves the host's
//     network namespace for an empty one, with --net-policy preloads msb-netpolicy.so (beside
//     this executable) to hold PROGRAM's sockets to RULES, and execs PROGRAM (QEMU) in its place.
//   msb-vmm krun PARENT_PID CONFIG_FD STATUS_FD
//     The same guard, then reads a framed KrunConfig (proto/vmm.proto) from CONFIG_FD and becomes
//     a libkrun VM. A failure before the VM starts is written as a KrunStatus on STATUS_FD (exit
//     1); STATUS_FD reaching end-of-file without one means the VM is starting.
//   msb-vmm probe
//     Writes what the host offers a libkrun VM (a framed HostProbe) on stdout.
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

#include "vmm.h"

#define MAX_KEEP 8

static int usage(void) {
  fprintf(stderr,
          "usage: msb-vmm exec PARENT_PID [--keep FD]... [--no-network | --net-policy RULES] -- PROGRAM [ARGS...]\n"
          "       msb-vmm krun PARENT_PID CONFIG_FD STATUS_FD\n"
          "       msb-vmm probe\n");
  return 2;
}

// A whole decimal number from 0 to INT_MAX (pids and fds fit), else -1.
static long number(const char *s) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  return (errno || end == s || *end || v < 0 || v > INT_MAX) ? -1 : v;
}

// Closes every descriptor from 3 up except the n in `keep` (ascending): nothing else the creator
// had open reaches the VMM.
static void close_others(const int *keep, int n) {
  int from = 3;
  for (int i = 0; i <= n; i++) {
    int to = i < n ? keep[i] - 1 : INT_MAX;
#if defined(__linux__) && defined(SYS_close_range)
    if (from <= to && syscall(SYS_close_range, (unsigned)from, (unsigned)to, 0) == 0) {
      from = to + 2;
      continue;
    }
#endif
    for (int fd = from; fd <= to && fd < 1024; fd++) close(fd);  // a kernel before 5.9
    from = to + 2;
  }
}

// What the VMM may no longer gain or reach: privileges (set-uid programs, file capabilities),
// and with `no_network` the host's network, for a VM that has none (an empty namespace; as a
// non-root user inside a user namespace of its own). A host that allows neither namespace (no
// root, unprivileged user namespaces off) keeps the VM in its own, said on stderr: the VM has no
// network device either way. 0 or an errno.
static int confine(bool no_network) {
#ifdef __linux__
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return errno;
  if (no_network && unshare(CLONE_NEWNET) < 0 && unshare(CLONE_NEWUSER | CLONE_NEWNET) < 0)
    fprintf(stderr, "msb-vmm: the VMM stays in the host's network namespace: %s\n", strerror(errno));
#else
  (void)no_network;
#endif
  return 0;
}

// 0 when the parent-death signal is armed and `parent` is still our parent, else an errno.
static int guard_parent(pid_t parent) {
#ifdef __linux__
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) return errno;
#endif
  return getppid() == parent ? 0 : ESRCH;  // the creator may have died before the signal was armed
}

// Has the program about to be executed load msb-netpolicy.so, beside this executable, with
// `rules`. 0 or an errno.
static int preload_policy(const char *rules) {
#ifdef __linux__
  char self[PATH_MAX], lib[PATH_MAX + 32];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return errno ? errno : ENOENT;
  self[n] = 0;
  char *slash = strrchr(self, '/');
  if (!slash) return ENOENT;
  *slash = 0;
  snprintf(lib, sizeof lib, "%s/msb-netpolicy.so", self);
  if (access(lib, R_OK) < 0) return errno;
  if (setenv("LD_PRELOAD", lib, 1) < 0 || setenv("MSB_NET_POLICY", rules, 1) < 0) return errno;
  return 0;
#else
  (void)rules;
  return ENOTSUP;
#endif
}

static int exec_mode(int argc, char **argv) {
  if (argc < 5) return usage();
  long parent = number(argv[2]);
  if (parent < 0) return usage();
  int keep[MAX_KEEP], nkeep = 0, i = 3;
  for (; i + 1 < argc && strcmp(argv[i], "--keep") == 0; i += 2) {
    long fd = number(argv[i + 1]);
    if (fd < 3 || nkeep == MAX_KEEP || fcntl((int)fd, F_GETFD) < 0) {
      fprintf(stderr, "msb-vmm: --keep %s: not an open descriptor above 2 (at most %d)\n", argv[i + 1], MAX_KEEP);
      return 2;
    }
    int at = nkeep++;
    for (; at > 0 && keep[at - 1] > fd; at--) keep[at] = keep[at - 1];
    keep[at] = (int)fd;
  }
  bool no_network = i < argc && strcmp(argv[i], "--no-network") == 0;
  if (no_network) i++;
  const char *policy = NULL;
  if (!no_network && i + 1 < argc && strcmp(argv[i], "--net-policy") == 0) policy = argv[i + 1], i += 2;
  if (i + 1 >= argc || strcmp(argv[i], "--") != 0) return usage();
  int err = guard_parent((pid_t)parent);
  if (err == ESRCH) return 1;
  if (err) {
    fprintf(stderr, "msb-vmm: prctl(PR_SET_PDEATHSIG): %s\n", strerror(err));
    return 1;
  }
  close_others(keep, nkeep);
  if ((err = confine(no_network))) {
    fprintf(stderr, "msb-vmm: cannot confine %s: %s\n", argv[i + 1], strerror(err));
    return 1;
  }
  if (policy && (err = preload_policy(policy))) {
    fprintf(stderr, "msb-vmm: cannot hold %s to its network policy: %s\n", argv[i + 1], strerror(err));
    return 1;
  }
  execvp(argv[i + 1], argv + i + 1);
  fprintf(stderr, "msb-vmm: cannot execute %s: %s\n", argv[i + 1], strerror(errno));
  return 127;
}

static int krun_mode(int argc, char **argv) {
  if (argc != 5) return usage();
  long parent = number(argv[2]), config_fd = number(argv[3]), status_fd = number(argv[4]);
  // 0-2 would be freed by closing them and then reused for libkrun's own files and logs.
  if (parent < 0 || config_fd < 3 || status_fd < 3 || config_fd == status_fd) return usage();
  if (fcntl((int)status_fd, F_GETFD) < 0 || fcntl((int)config_fd, F_GETFD) < 0) {
    fprintf(stderr, "msb-vmm: config fd %ld or status fd %ld is not open\n", config_fd, status_fd);
    return 2;
  }
  int st = (int)status_fd;
  int err = guard_parent((pid_t)parent);
  if (err == ESRCH) return vmm_fail(st, "parent", err, "parent %ld is gone (our parent is %d)", parent, (int)getppid());
  if (err) return vmm_fail(st, "parent", err, "prctl(PR_SET_PDEATHSIG) failed: %s", strerror(err));
  // The descriptors must not leak into anything libkrun may spawn.
  fcntl(st, F_SETFD, FD_CLOEXEC);
  krun_config cfg;
  int rc = config_read((int)config_fd, st, &cfg);
  if (rc) return rc;
  close_others(&st, 1); // the config fd too: it has been read
  if ((err = confine(cfg.network == microsandbox_vmm_KrunConfig_Network_NONE)))
    return vmm_fail(st, "confine", err, "cannot confine the VM: %s", strerror(err));
  return krun_run(&cfg, st);
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "exec") == 0) return exec_mode(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "krun") == 0) return krun_mode(argc, argv);
  if (argc == 2 && strcmp(argv[1], "probe") == 0) return probe_run(STDOUT_FILENO);
  return usage();
}
