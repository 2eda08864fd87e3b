// msb-vmm: the per-VM helper. A VMM never runs inside the Node process; this small executable
// stands between Node and the VMM so the VM dies with its creator (unless it is to outlive it).
//
//   msb-vmm exec PARENT_PID [--outlive] [--keep FD]... [--control FD] [--confinement required|best-effort]
//                [--jail RUNDIR [--ro PATH]...] [--open PATH:r|w]...
//                [--no-network | --net-policy RULES [--proxy PORT] [--control-listen PATH]] -- PROGRAM ARGS...
//     Arms a parent-death signal (SIGKILL; not with --outlive, for a VM that outlives its creator,
//     which starts this in a session of its own), checks PARENT_PID is still the parent (it may
//     have died before the signal was armed), closes every descriptor from 3 up but the kept ones
//     (the agent channel's socket), opens the --open files for msb-openfd.so (beside this
//     executable) to hand to PROGRAM, with --jail builds PROGRAM's jail (jail.c: RUNDIR and the
//     --ro files; an empty network namespace with --no-network; a uid of its own as root),
//     forbids new privileges, writes what it applied as a Confinement on the --control socket
//     (proto/vmm.proto; with `required`, the default, anything missing ends it here, exit 1) and
//     execs PROGRAM (QEMU) in its place. With --net-policy it forks instead: PROGRAM runs under a
//     seccomp filter and this process stays as its network supervisor (supervise.c), making
//     PROGRAM's socket calls that name a destination itself, held to RULES (policy.c), until
//     PROGRAM exits, with its status; PROGRAM dies with this process, --outlive or not. With
//     --control-listen it also serves a unix socket at PATH (0600): a client connecting there
//     becomes the control channel in place of the last one, so a new host can take the VM over.
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#endif

#include "policy.h"
#include "vmm.h"

#define MAX_KEEP 8

static int usage(void) {
  fprintf(stderr,
          "usage: msb-vmm exec PARENT_PID [--outlive] [--keep FD]... [--control FD] [--confinement required|best-effort]\n"
          "                    [--jail RUNDIR [--ro PATH]...] [--open PATH:r|w]...\n"
          "                    [--no-network | --net-policy RULES [--proxy PORT] [--control-listen PATH]] -- PROGRAM [ARGS...]\n"
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

// 0 when the parent-death signal is armed (unless not `arm`: a VM that outlives its creator) and
// `parent` is still our parent, else an errno.
static int guard_parent(pid_t parent, bool arm) {
#ifdef __linux__
  if (arm && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) return errno;
#else
  (void)arm;
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

// What confines the program, written to the host as a Confinement.
typedef struct {
  microsandbox_vmm_Confinement c;
  bool fatal;  // a jail half built: the program must not run
  char message[512];
} confined;

static void missing(confined *k, const char *what, const char *why) {
  if (k->c.missing_count < sizeof k->c.missing / sizeof *k->c.missing)
    snprintf(k->c.missing[k->c.missing_count++], sizeof k->c.missing[0], "%.40s: %.200s", what, why);
}

// Builds the jail (with `jail->rundir`), forbids new privileges and, for a VM without a network,
// keeps it out of the host's network namespace; what was applied and what not into *k.
static void apply_confinement(jail_spec *jail, confined *k) {
  char why[512];
  bool root = geteuid() == 0;
  if (jail->rundir) {
    bool unavailable;
    if (!jail_enter(jail, &unavailable, why, sizeof why)) {
      k->c.namespaces = true, k->c.uid = root;
    } else if (!unavailable) {
      k->fatal = true;
      snprintf(k->message, sizeof k->message, "cannot jail the VMM: %.480s", why);
      return;
    } else {
      missing(k, "namespaces", why);
    }
  }
#ifdef __linux__
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0) k->c.no_new_privs = true;
  else missing(k, "no_new_privs", strerror(errno));
  if (jail->no_network) {
    if (k->c.namespaces || unshare(CLONE_NEWNET) == 0 || unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0) snprintf(k->c.network, sizeof k->c.network, "none");
    else missing(k, "network namespace", strerror(errno));
  }
#endif
}

// Writes the Confinement; whether the program may run (nothing missing, or best-effort).
static bool report(int control, confined *k, bool required) {
  microsandbox_vmm_VmmEvent e = microsandbox_vmm_VmmEvent_init_zero;
  e.which_event = microsandbox_vmm_VmmEvent_confinement_tag;
  e.event.confinement = k->c;
  vmm_write_frame(control, microsandbox_vmm_VmmEvent_fields, &e);
  for (pb_size_t i = 0; i < k->c.missing_count; i++)
    fprintf(stderr, "msb-vmm: %s the VMM: %s\n", required ? "refusing to run" : "running without part of the confinement of", k->c.missing[i]);
  return !required || k->c.missing_count == 0;
}

#ifdef __linux__
// The unix socket a new host connects to for the control channel (--control-listen), mode 0600.
// Something left at `path` by a helper that was killed is replaced if it is a socket; anything
// else there is not ours to remove. The listening descriptor, or -1 and errno.
static int listen_control(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  struct stat st;
  if (strlen(path) >= sizeof sa.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      errno = EEXIST;
      return -1;
    }
    if (unlink(path) < 0) return -1;
  }
  memcpy(sa.sun_path, path, strlen(path) + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  mode_t old = umask(0177);  // born 0600: no moment when another user may connect
  int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (rc < 0 || listen(fd, 1) < 0) {
    int err = errno;
    if (rc == 0) unlink(path);
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

// What the child that becomes QEMU tells the supervisor before exec.
typedef struct {
  confined k;
  int listener;  // its number in the child
} child_report;

// Forks QEMU under the network supervisor (supervise.c). The child builds the jail, installs the
// seccomp filter and waits for the supervisor to take the listener (pidfd_getfd: a sendmsg
// would be the filter's own first notification) and to say go; this process becomes the
// supervisor. Returns only an exit status.
static int supervised(jail_spec *jail, policy *p, int control, const char *listen_path, bool required, unsigned proxy, const int *keep, int nkeep,
                      char **argv) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    fprintf(stderr, "msb-vmm: socketpair: %s\n", strerror(errno));
    return 1;
  }
  pid_t self = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "msb-vmm: fork: %s\n", strerror(errno));
    return 1;
  }
  if (pid == 0) {
    close(sv[0]);
    if (control >= 0) close(control);
    if (guard_parent(self, true)) _exit(1);
    child_report r = {.listener = -1};
    apply_confinement(jail, &r.k);
    char why[256];
    if (!r.k.fatal) {
      if (seccomp_install(&r.listener, why, sizeof why) == 0) r.k.c.seccomp = true;
      else missing(&r.k, "seccomp", why);
    }
    char go = 0;
    if (write(sv[1], &r, sizeof r) != (ssize_t)sizeof r || read(sv[1], &go, 1) != 1 || go != 'g') _exit(1);
    if (r.listener >= 0) close(r.listener);  // QEMU must never answer its own calls
    close(sv[1]);
    // A change of uid disarmed the parent-death signal: the supervisor's death must end QEMU.
    if (guard_parent(self, true)) _exit(1);
    execvp(argv[0], argv);
    fprintf(stderr, "msb-vmm: cannot execute %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(sv[1]);
  // A QEMU of the same uid (not root, or a failed uid change) must not ptrace its supervisor.
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  int mine[3] = {control, sv[0], -1}, nmine = control >= 0 ? 2 : 1;
  if (control < 0) mine[0] = sv[0];
  if (nmine == 2 && mine[0] > mine[1]) mine[2] = mine[0], mine[0] = mine[1], mine[1] = mine[2];
  (void)keep, (void)nkeep;
  close_others(mine, nmine);  // QEMU's descriptors are QEMU's alone
  child_report r;
  int status;
  if (read(sv[0], &r, sizeof r) != (ssize_t)sizeof r) {
    waitpid(pid, &status, 0);
    fprintf(stderr, "msb-vmm: the VMM's process ended before it was confined\n");
    return 1;
  }
  if (r.k.fatal) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fprintf(stderr, "msb-vmm: %s\n", r.k.message);
    return 1;
  }
  r.k.c.vmm_pid = (uint32_t)pid;
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0), listener = -1;
  if (pidfd < 0) {
    missing(&r.k, "seccomp", "pidfd_open needs Linux 5.3");
  } else if (r.k.c.seccomp && (listener = (int)syscall(SYS_pidfd_getfd, pidfd, r.listener, 0)) < 0) {
    char why[128];
    snprintf(why, sizeof why, "pidfd_getfd (Linux 5.6): %s", strerror(errno));
    missing(&r.k, "seccomp", why);
  }
  if (listener >= 0) snprintf(r.k.c.network, sizeof r.k.c.network, "supervisor");
  if (!report(control, &r.k, required)) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return 1;
  }
  // Served by the supervisor's loop: nothing serves it where there is nothing to supervise with.
  int accepting = -1;
  if (listen_path && pidfd >= 0 && (accepting = listen_control(listen_path)) < 0) {
    fprintf(stderr, "msb-vmm: --control-listen %s: %s\n", listen_path, strerror(errno));
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return 1;
  }
  if (write(sv[0], "g", 1) != 1) return 1;
  close(sv[0]);
  if (pidfd < 0) {  // nothing to supervise with: wait as a plain parent
    while (waitpid(pid, &status, 0) < 0)
      if (errno != EINTR) return 1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  return supervise(pid, pidfd, listener, control, accepting, listen_path, p, jail->rundir, proxy);
}
#endif

static int exec_mode(int argc, char **argv) {
  if (argc < 5) return usage();
  long parent = number(argv[2]);
  if (parent < 0) return usage();
  int keep[MAX_KEEP], nkeep = 0, i = 3, control = -1;
  long proxy = 0;
  bool required = true, outlive = false;
  const char *listen_path = NULL;
  jail_spec jail = {0};
  char *opens[JAIL_MAX_RO];
  int nopen = 0;
  const char *rules = NULL;
  for (; i + 1 < argc && strcmp(argv[i], "--") != 0; i += 2) {
    const char *opt = argv[i], *val = argv[i + 1];
    bool fd_opt = strcmp(opt, "--keep") == 0 || strcmp(opt, "--control") == 0;
    if (fd_opt) {
      long fd = number(val);
      if (fd < 3 || nkeep == MAX_KEEP || fcntl((int)fd, F_GETFD) < 0) {
        fprintf(stderr, "msb-vmm: %s %s: not an open descriptor above 2 (at most %d)\n", opt, val, MAX_KEEP);
        return 2;
      }
      if (opt[2] == 'c') control = (int)fd;
      int at = nkeep++;
      for (; at > 0 && keep[at - 1] > fd; at--) keep[at] = keep[at - 1];
      keep[at] = (int)fd;
    } else if (strcmp(opt, "--no-network") == 0) {
      jail.no_network = true, i--;  // takes no value
    } else if (strcmp(opt, "--outlive") == 0) {
      outlive = true, i--;
    } else if (strcmp(opt, "--control-listen") == 0 && val[0] == '/') {
      listen_path = val;
    } else if (strcmp(opt, "--net-policy") == 0) {
      rules = val;
    } else if (strcmp(opt, "--proxy") == 0 && (proxy = number(val)) > 0 && proxy < 65536) {
    } else if (strcmp(opt, "--confinement") == 0 && (strcmp(val, "required") == 0 || strcmp(val, "best-effort") == 0)) {
      required = val[0] == 'r';
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
  // Only a supervisor stays to serve a control socket: without --net-policy this process becomes QEMU.
  if (i + 1 >= argc || strcmp(argv[i], "--") != 0 || (rules && jail.no_network) || (listen_path && !rules)) return usage();
  const char *program = argv[i + 1];
  policy *pol = NULL;
  if (rules) {
    char why[256];
    if (!(pol = policy_parse(rules, why, sizeof why))) {
      fprintf(stderr, "msb-vmm: --net-policy: %s\n", why);
      return 2;
    }
  }
  // The control channel is the host's and this helper's: never QEMU's.
  if (control >= 0) fcntl(control, F_SETFD, FD_CLOEXEC);
  int err = guard_parent((pid_t)parent, !outlive);
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
  char lib[PATH_MAX + 32];
  if (nopen && (err = preload("msb-openfd.so", lib, sizeof lib, &jail))) {
    fprintf(stderr, "msb-vmm: cannot preload %s's descriptors: %s\n", program, strerror(err));
    return 1;
  }
  if (pol) {
#ifdef __linux__
    return supervised(&jail, pol, control, listen_path, required, (unsigned)proxy, keep, nkeep, argv + i + 1);
#else
    confined k = {0};
    missing(&k, "seccomp", "not on this system");
    if (!report(control, &k, required)) return 1;
#endif
  }
  confined k = {0};
  apply_confinement(&jail, &k);
  if (k.fatal) {
    fprintf(stderr, "msb-vmm: %s\n", k.message);
    return 1;
  }
  k.c.vmm_pid = (uint32_t)getpid();
  if (!report(control, &k, required)) return 1;
  // A change of uid disarms the parent-death signal: arm it again, and check the parent once more.
  if (k.c.namespaces && !outlive && (err = guard_parent((pid_t)parent, true))) return 1;
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
  int err = guard_parent((pid_t)parent, true);
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
