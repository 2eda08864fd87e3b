// msb-vmm: the per-VM helper. A VMM never runs inside the Node process; this small executable
// stands between Node and the VMM so the VM dies with its creator.
//
//   msb-vmm exec PARENT_PID [--keep FD]... [--jail RUNDIR [--ro PATH]...] [--open PATH:r|w]...
//                [--no-network | --net-policy RULES] -- PROGRAM ARGS...
//     Arms a parent-death signal (SIGKILL), checks PARENT_PID is still the parent (it may have
//     died before the signal was armed), closes every descriptor from 3 up but the kept ones
//     (the agent channel's socket), opens the --open files for msb-openfd.so to hand to PROGRAM,
//     with --net-policy preloads msb-netpolicy.so to hold PROGRAM's sockets to RULES, with --jail
//     builds PROGRAM's jail (jail.c: RUNDIR and the --ro files; an empty network namespace with
//     --no-network; a uid of its own as root), forbids new privileges, and execs PROGRAM (QEMU)
//     in its place. The preloaded libraries sit beside this executable.
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
          "usage: msb-vmm exec PARENT_PID [--keep FD]... [--jail RUNDIR [--ro PATH]...] [--open PATH:r|w]...\n"
          "                    [--no-network | --net-policy RULES] -- PROGRAM [ARGS...]\n"
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

// Where this executable sits: the preloaded libraries are beside it. 0 or an errno.
static int helper_dir(char *dir, size_t size) {
#ifdef __linux__
  ssize_t n = readlink("/proc/self/exe", dir, size - 1);
  if (n <= 0) return errno ? errno : ENOENT;
  dir[n] = 0;
  char *slash = strrchr(dir, '/');
  if (!slash) return ENOENT;
  *slash = 0;
  return 0;
#else
  (void)dir, (void)size;
  return ENOTSUP;
#endif
}

// Appends lib (beside this executable) to LD_PRELOAD for the program about to be executed, and
// to the jail's files. 0 or an errno.
static int preload(const char *lib, char *path, size_t size, jail_spec *jail) {
  char dir[PATH_MAX];
  int err = helper_dir(dir, sizeof dir);
  if (err) return err;
  if (snprintf(path, size, "%s/%s", dir, lib) >= (int)size) return ENAMETOOLONG;
  if (access(path, R_OK) < 0) return errno;
  const char *had = getenv("LD_PRELOAD");
  char list[2 * (PATH_MAX + 32)];
  snprintf(list, sizeof list, "%s%s%s", had ? had : "", had ? " " : "", path);
  if (setenv("LD_PRELOAD", list, 1) < 0) return errno;
  if (jail->nro < JAIL_MAX_RO) jail->ro[jail->nro++] = path;
  return 0;
}

// Opens each "PATH:r" (read-only) or "PATH:w" (read-write, created 0600) before the jail, for
// msb-openfd.so to hand to the program in place of its own open of PATH: MSB_OPEN_FDS, lines
// of "FD PATH". 0 or an errno, with `*bad` the spec that failed.
static int open_files(char **specs, int n, const char **bad) {
  char env[8192] = "";
  size_t used = 0;
  for (int i = 0; i < n; i++) {
    *bad = specs[i];
    size_t len = strlen(specs[i]);
    if (len < 3 || specs[i][len - 2] != ':' || (specs[i][len - 1] != 'r' && specs[i][len - 1] != 'w')) return EINVAL;
    bool rw = specs[i][len - 1] == 'w';
    specs[i][len - 2] = 0;
    int fd = rw ? open(specs[i], O_RDWR | O_CREAT, 0600) : open(specs[i], O_RDONLY);
    if (fd < 0) return errno;
    int w = snprintf(env + used, sizeof env - used, "%d %s\n", fd, specs[i]);
    if (w < 0 || (size_t)w >= sizeof env - used) return ENAMETOOLONG;
    used += (size_t)w;
  }
  return n && setenv("MSB_OPEN_FDS", env, 1) < 0 ? errno : 0;
}

static int exec_mode(int argc, char **argv) {
  if (argc < 5) return usage();
  long parent = number(argv[2]);
  if (parent < 0) return usage();
  int keep[MAX_KEEP], nkeep = 0, i = 3;
  jail_spec jail = {0};
  char *opens[JAIL_MAX_RO];
  int nopen = 0;
  const char *policy = NULL;
  for (; i + 1 < argc && strcmp(argv[i], "--") != 0; i += 2) {
    const char *opt = argv[i], *val = argv[i + 1];
    if (strcmp(opt, "--keep") == 0) {
      long fd = number(val);
      if (fd < 3 || nkeep == MAX_KEEP || fcntl((int)fd, F_GETFD) < 0) {
        fprintf(stderr, "msb-vmm: --keep %s: not an open descriptor above 2 (at most %d)\n", val, MAX_KEEP);
        return 2;
      }
      int at = nkeep++;
      for (; at > 0 && keep[at - 1] > fd; at--) keep[at] = keep[at - 1];
      keep[at] = (int)fd;
    } else if (strcmp(opt, "--no-network") == 0) {
      jail.no_network = true, i--;  // takes no value
    } else if (strcmp(opt, "--net-policy") == 0) {
      policy = val;
    } else if (strcmp(opt, "--jail") == 0 && val[0] == '/') {
      jail.rundir = val;
    } else if (strcmp(opt, "--ro") == 0 && val[0] == '/' && jail.nro < JAIL_MAX_RO - 2) {
      jail.ro[jail.nro++] = val;
    } else if (strcmp(opt, "--open") == 0 && val[0] == '/' && nopen < JAIL_MAX_RO) {
      opens[nopen++] = argv[i + 1];
    } else {
      return usage();
    }
  }
  if (i + 1 >= argc || strcmp(argv[i], "--") != 0 || (policy && jail.no_network)) return usage();
  const char *program = argv[i + 1];
  int err = guard_parent((pid_t)parent);
  if (err == ESRCH) return 1;
  if (err) {
    fprintf(stderr, "msb-vmm: prctl(PR_SET_PDEATHSIG): %s\n", strerror(err));
    return 1;
  }
  close_others(keep, nkeep);
  const char *bad = NULL;
  if ((err = open_files(opens, nopen, &bad))) {
    fprintf(stderr, "msb-vmm: cannot open %s for %s: %s\n", bad, program, strerror(err));
    return 1;
  }
  char libs[2][PATH_MAX + 32];
  if ((policy && ((err = preload("msb-netpolicy.so", libs[0], sizeof libs[0], &jail)) || (setenv("MSB_NET_POLICY", policy, 1) < 0 && (err = errno)))) ||
      (nopen && (err = preload("msb-openfd.so", libs[1], sizeof libs[1], &jail)))) {
    fprintf(stderr, "msb-vmm: cannot preload %s's confinement: %s\n", program, strerror(err));
    return 1;
  }
  bool jailed = false;
  if (jail.rundir) {
    char why[512];
    bool unavailable;
    if (!(err = jail_enter(&jail, &unavailable, why, sizeof why))) {
      jailed = true;
    } else if (!unavailable) {
      fprintf(stderr, "msb-vmm: cannot jail %s: %s\n", program, why);
      return 1;
    } else {
      fprintf(stderr, "msb-vmm: %s runs without its jail: %s\n", program, why);
    }
  }
  if ((err = confine(jail.no_network && !jailed))) {
    fprintf(stderr, "msb-vmm: cannot confine %s: %s\n", program, strerror(err));
    return 1;
  }
  // A change of uid disarms the parent-death signal: arm it again, and check the parent once more.
  if (jailed && (err = guard_parent((pid_t)parent))) return 1;
  execvp(program, argv + i + 1);
  fprintf(stderr, "msb-vmm: cannot execute %s: %s\n", program, strerror(errno));
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
  close_others(&st, 1);  // the config fd too: it has been read
  if ((err = confine(cfg.network == microsandbox_vmm_KrunConfig_Network_NONE))) return vmm_fail(st, "confine", err, "cannot confine the VM: %s", strerror(err));
  return krun_run(&cfg, st);
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "exec") == 0) return exec_mode(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "krun") == 0) return krun_mode(argc, argv);
  if (argc == 2 && strcmp(argv[1], "probe") == 0) return probe_run(STDOUT_FILENO);
  return usage();
}
