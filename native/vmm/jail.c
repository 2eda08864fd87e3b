// The jail msb-vmm builds for QEMU before exec: a mount namespace whose root is an empty, read-only
// tmpfs holding only what a VM needs (the system's programs and libraries read-only, a few device
// nodes, the VM's own files read-only, its runtime dir writable), and, when started as root,
// a uid and gid of the VM's own. A QEMU the guest took over sees no other host file, owns nothing
// outside its runtime dir, and shares its uid with no other process.
//
// Files the VM needs open read-write outside its runtime dir (guest RAM in a snapshot file) are
// opened here, before the jail, and handed to QEMU by msb-openfd.so: never bound into the jail.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sched.h>
#include <unistd.h>

#include "vmm.h"

#ifdef __linux__

// What any QEMU needs: its program, libraries and firmware (read-only), and the device nodes it
// may open. Missing ones are skipped (a host without /lib64, without /dev/kvm). No /proc: a QEMU
// that keeps its creator's uid (the jail in a user namespace) would reach, through /proc/PID/root,
// cwd and fd, the whole host as its creator sees it; QEMU runs without it.
static const char *const SYSTEM[] = {
    "/usr",      "/bin",      "/sbin",     "/lib",        "/lib32",       "/lib64",   "/libx32", "/etc/ld.so.cache",
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/kvm",
};
// libslirp forwards the guest's DNS to the host's resolvers, named here.
static const char *const NETWORK[] = {"/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf"};

static int fail(char *why, size_t n, const char *what, const char *path) {
  int err = errno ? errno : EINVAL;
  snprintf(why, n, "%s %s: %s", what, path, strerror(err));
  return err;
}

// mkdir -p of `dir` (an absolute path), mode 0755.
static int make_dirs(const char *dir) {
  char buf[PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) return errno = ENAMETOOLONG, -1;
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == 0) {
      char c = *p;
      *p = 0;
      if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
      if (!(*p = c)) return 0;
    }
  }
}

// The mount flags a bind of `src` must keep when remounted: in a user namespace the source's
// nodev/nosuid/noexec are locked, and leaving one out fails.
static unsigned long kept_flags(const char *src) {
  struct statvfs s;
  unsigned long f = 0;
  if (statvfs(src, &s) < 0) return 0;
  if (s.f_flag & ST_NODEV) f |= MS_NODEV;
  if (s.f_flag & ST_NOSUID) f |= MS_NOSUID;
  if (s.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
  if (s.f_flag & ST_NOATIME) f |= MS_NOATIME;
  if (s.f_flag & ST_RELATIME) f |= MS_RELATIME;
  return f;
}

// Places `src` at the same path under `top`: a top-level symlink is copied (so /lib -> usr/lib
// still resolves), anything else bind-mounted (with what is mounted below it, for a system
// directory), read-only unless `rw`. ENOENT when src is missing.
static int place(const char *top, const char *src, bool rw, char *why, size_t n) {
  char dst[PATH_MAX];
  struct stat st;
  if (snprintf(dst, sizeof dst, "%s%s", top, src) >= (int)sizeof dst) return errno = ENAMETOOLONG, fail(why, n, "jail path for", src);
  if (lstat(src, &st) < 0) return errno;
  if (S_ISLNK(st.st_mode) && src[1] && !strchr(src + 1, '/')) {  // a top-level link (usrmerge)
    char target[PATH_MAX];
    ssize_t len = readlink(src, target, sizeof target - 1);
    if (len < 0) return fail(why, n, "readlink", src);
    target[len] = 0;
    if (symlink(target, dst) < 0 && errno != EEXIST) return fail(why, n, "symlink in the jail for", src);
    return 0;
  }
  if (stat(src, &st) < 0) return errno;
  char parent[PATH_MAX];
  snprintf(parent, sizeof parent, "%s", dst);
  *strrchr(parent, '/') = 0;
  if (make_dirs(parent) < 0) return fail(why, n, "mkdir in the jail for", src);
  if (S_ISDIR(st.st_mode)) {
    if (mkdir(dst, 0755) < 0 && errno != EEXIST) return fail(why, n, "mkdir in the jail for", src);
  } else {
    int fd = open(dst, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);  // may exist in a bound directory
    if (fd < 0) return fail(why, n, "mount point in the jail for", src);
    close(fd);
  }
  // Not recursive for the runtime dir: the jail's own tmpfs is mounted inside it.
  if (mount(src, dst, NULL, MS_BIND | (rw ? 0 : MS_REC), NULL) < 0) return fail(why, n, "bind", src);
  unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID | kept_flags(src) | (rw ? 0 : MS_RDONLY);
  if (mount(NULL, dst, NULL, flags, NULL) < 0) return fail(why, n, "remount in the jail", src);
  return 0;
}

// In a new user namespace (not root), this process's uid and gid map to themselves.
static int map_self(uid_t uid, gid_t gid) {
  char line[64];
  struct {
    const char *file, *text;
  } w[3] = {{"/proc/self/setgroups", "deny"}, {"/proc/self/uid_map", line}, {"/proc/self/gid_map", NULL}};
  char gline[64];
  snprintf(line, sizeof line, "%u %u 1", (unsigned)uid, (unsigned)uid);
  snprintf(gline, sizeof gline, "%u %u 1", (unsigned)gid, (unsigned)gid);
  w[2].text = gline;
  for (int i = 0; i < 3; i++) {
    int fd = open(w[i].file, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t len = (ssize_t)strlen(w[i].text);
    bool ok = write(fd, w[i].text, (size_t)len) == len;
    close(fd);
    if (!ok) return -1;
  }
  return 0;
}

// Root gives the VM a uid and gid of its own (JAIL_ID_BASE + pid: unique among running VMs, in a
// range no distribution allocates), keeping only /dev/kvm's group for a KVM VM.
static int drop_root(const char *rundir, char *why, size_t n) {
  uid_t id = JAIL_ID_BASE + (uid_t)getpid();
  if (chown(rundir, id, id) < 0) return fail(why, n, "chown", rundir);
  struct stat kvm;
  gid_t groups[1];
  int ngroups = 0;
  if (stat("/dev/kvm", &kvm) == 0) groups[ngroups++] = kvm.st_gid;
  if (setgroups((size_t)ngroups, groups) < 0) return fail(why, n, "setgroups for", "the VM");
  if (setresgid(id, id, id) < 0 || setresuid(id, id, id) < 0) return fail(why, n, "setresuid for", "the VM");
  return 0;
}

int jail_enter(const jail_spec *j, bool *unavailable, char *why, size_t n) {
  uid_t uid = geteuid();
  gid_t gid = getegid();
  int flags = CLONE_NEWNS | (j->no_network ? CLONE_NEWNET : 0);
  errno = 0;
  *unavailable = false;
  if (uid == 0 ? unshare(flags) < 0 : (unshare(flags | CLONE_NEWUSER) < 0 || map_self(uid, gid) < 0)) {
    *unavailable = true;  // no CAP_SYS_ADMIN (a container), or user namespaces turned off
    return fail(why, n, "namespaces for", "the VM");
  }
  // Nothing mounted from here on propagates back to the host.
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) return fail(why, n, "make private", "/");
  char top[PATH_MAX];
  if (snprintf(top, sizeof top, "%s/jail", j->rundir) >= (int)sizeof top) return errno = ENAMETOOLONG, fail(why, n, "jail in", j->rundir);
  if (mkdir(top, 0755) < 0 && errno != EEXIST) return fail(why, n, "mkdir", top);
  if (mount("msb-jail", top, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=256k") < 0) return fail(why, n, "tmpfs at", top);
  int err;
  for (size_t i = 0; i < sizeof SYSTEM / sizeof *SYSTEM; i++)
    if ((err = place(top, SYSTEM[i], false, why, n)) && err != ENOENT) return err;
  for (size_t i = 0; !j->no_network && i < sizeof NETWORK / sizeof *NETWORK; i++)
    if ((err = place(top, NETWORK[i], false, why, n)) && err != ENOENT) return err;
  // The VM's own files must all be there; the runtime dir last, so that no read-only directory
  // bound above it (a QEMU installed beside it) hides it.
  for (int i = 0; i < j->nro; i++)
    if ((err = place(top, j->ro[i], false, why, n))) return err == ENOENT ? (errno = ENOENT, fail(why, n, "no such file:", j->ro[i])) : err;
  if ((err = place(top, j->rundir, true, why, n))) return err;
  if (chdir(top) < 0) return fail(why, n, "chdir", top);
  if (syscall(SYS_pivot_root, ".", ".") < 0) return fail(why, n, "pivot_root into", top);
  if (umount2(".", MNT_DETACH) < 0) return fail(why, n, "detach the host's root from", top);
  if (chdir("/") < 0) return fail(why, n, "chdir", "/");
  if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) return fail(why, n, "remount read-only", "/");
  return uid == 0 ? drop_root(j->rundir, why, n) : 0;
}

#else
int jail_enter(const jail_spec *j, bool *unavailable, char *why, size_t n) {
  (void)j;
  *unavailable = true;
  snprintf(why, n, "namespaces for the VM: not on this system");
  return ENOTSUP;
}
#endif
