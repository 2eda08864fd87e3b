// Per-process-tree cgroups in the guest. Every exec gets its own cgroup under "sandbox", which
// carries the sandbox's pids limit, so a fork bomb fails its forks instead of taking the guest
// down; and each tree's own counters (OOM kills in memory.events, refused forks in pids.events)
// go back in its Exit, so the host can tell "ran out of memory / processes" apart per command,
// with its CPU time.
// The agent itself stays outside, in the root cgroup. Making and removing a cgroup costs more than
// the fork and exec of a small command under emulation (~10 ms of a 20 ms `true`), so emptied
// cgroups are kept for the next commands, their counters read at release as the next user's zero.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define ROOT "/sys/fs/cgroup"
#define SANDBOX ROOT "/sandbox"

static bool g_enabled;
static uint32_t g_serial;
#define SPARES 16
static struct cgroup g_spares[SPARES];
static int g_nspares;

static bool write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
  close(fd);
  return ok;
}

// Reads "<key> <number>" from a small cgroup file such as memory.events.
static uint64_t read_counter(const char *path, const char *key) {
  char buf[1024];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  size_t klen = strlen(key);
  for (char *line = buf; line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
    if (strncmp(line, key, klen) == 0 && line[klen] == ' ') return strtoull(line + klen + 1, NULL, 10);
  return 0;
}

bool cgroup_setup(unsigned max_pids) {
  char max[32];
  snprintf(max, sizeof max, "%u", max_pids);
  mkdir(ROOT, 0755);
  // pids.events must count the forks refused in each command's own cgroup, whichever ancestor's
  // limit refused them. Linux >= 6.12 counts them at the limiting cgroup (the sandbox) unless
  // mounted with pids_localevents, which older kernels do not know (and count locally anyway).
  unsigned long flags = MS_NOSUID | MS_NODEV | MS_NOEXEC;
  if (mount("cgroup2", ROOT, "cgroup2", flags, "pids_localevents") < 0 && (errno != EINVAL || mount("cgroup2", ROOT, "cgroup2", flags, NULL) < 0)) return false;
  if (!write_file(ROOT "/cgroup.subtree_control", "+pids +memory")) return false;
  if (mkdir(SANDBOX, 0755) < 0 && errno != EEXIST) return false;
  if (!write_file(SANDBOX "/pids.max", max)) return false;
  if (!write_file(SANDBOX "/cgroup.subtree_control", "+pids +memory")) return false;
  g_enabled = true;
  return true;
}

static struct tree_counters counters(uint32_t serial) {
  char path[96];
  struct tree_counters t;
  snprintf(path, sizeof path, SANDBOX "/exec-%u/memory.events", serial);
  t.oom_kills = read_counter(path, "oom_kill");
  snprintf(path, sizeof path, SANDBOX "/exec-%u/pids.events", serial);
  t.pids_limit_hits = read_counter(path, "max");
  snprintf(path, sizeof path, SANDBOX "/exec-%u/cpu.stat", serial);
  t.cpu_ns = read_counter(path, "usage_usec") * 1000;
  return t;
}

uint32_t cgroup_processes(void) {
  char buf[32] = "";
  int fd = open(SANDBOX "/pids.current", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  return n > 0 ? (uint32_t)strtoul(buf, NULL, 10) : 0;
}

int cgroup_open(struct cgroup *cg) {
  *cg = (struct cgroup){0};
  if (!g_enabled) return -1;
  char path[96];
  struct cgroup next = {0};
  if (g_nspares) {
    next = g_spares[--g_nspares];
  } else {
    next.serial = ++g_serial;
    snprintf(path, sizeof path, SANDBOX "/exec-%u", next.serial);
    if (mkdir(path, 0755) < 0) return -1;
  }
  snprintf(path, sizeof path, SANDBOX "/exec-%u", next.serial);
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) *cg = next;
  return fd;
}

void cgroup_rebase(struct cgroup *cg) {
  if (cg->serial) cg->base.pids_limit_hits = counters(cg->serial).pids_limit_hits;
}

void cgroup_close(const struct cgroup *cg, struct tree_counters *used) {
  if (!cg->serial) return;
  struct tree_counters now = counters(cg->serial);
  used->oom_kills = now.oom_kills - cg->base.oom_kills;
  used->pids_limit_hits = now.pids_limit_hits - cg->base.pids_limit_hits;
  used->cpu_ns = now.cpu_ns - cg->base.cpu_ns;
  char path[96];
  snprintf(path, sizeof path, SANDBOX "/exec-%u/cgroup.events", cg->serial);
  // Background processes of the tree that live on keep it: it is neither reused nor removed.
  if (read_counter(path, "populated") != 0) return;
  if (g_nspares < SPARES) {
    g_spares[g_nspares++] = (struct cgroup){cg->serial, now};
    return;
  }
  snprintf(path, sizeof path, SANDBOX "/exec-%u", cg->serial);
  rmdir(path);
}
