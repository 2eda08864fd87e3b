// Metrics: the guest's counters as its kernel keeps them, read from /proc, /sys and statfs on
// request. Each source is small and read whole; a missing one leaves its fields 0.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "agent.h"

// Reads a small file whole; the length read, 0 when it could not be read.
static size_t slurp(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t got = 0;
  ssize_t n;
  while (got < size - 1 && (n = read(fd, buf + got, size - 1 - got)) > 0) got += (size_t)n;
  close(fd);
  buf[got] = 0;
  return got;
}

// The number after "KEY:" in /proc/meminfo's text, in bytes (the file counts kB).
static uint64_t meminfo(const char *text, const char *key) {
  const char *at = strstr(text, key);
  return at ? strtoull(at + strlen(key), NULL, 10) * 1024 : 0;
}

static void cpu(microsandbox_agent_MetricsResult *r) {
  char buf[8192];
  if (!slurp("/proc/stat", buf, sizeof buf)) return;
  // cpu  user nice system idle iowait irq softirq steal ...
  unsigned long long v[8] = {0};
  if (sscanf(buf, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) < 4) return;
  uint64_t tick_ns = 1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK);
  uint64_t total = 0;
  for (int i = 0; i < 8; i++) total += v[i];
  r->cpu_total_ns = total * tick_ns;
  r->cpu_busy_ns = (total - v[3] - v[4]) * tick_ns;
  for (char *line = strchr(buf, '\n'); line; line = strchr(line + 1, '\n'))
    if (strncmp(line + 1, "cpu", 3) == 0 && line[4] >= '0' && line[4] <= '9') r->cpus++;
}

static void disk(microsandbox_agent_MetricsResult *r) {
  struct statfs fs;
  if (statfs("/", &fs) == 0) {
    r->disk_total_bytes = (uint64_t)fs.f_blocks * (uint64_t)fs.f_bsize;
    r->disk_free_bytes = (uint64_t)fs.f_bavail * (uint64_t)fs.f_bsize;
  }
  // /proc/diskstats: major minor name reads merged sectors_read ms writes merged sectors_written
  char buf[8192];
  if (!slurp("/proc/diskstats", buf, sizeof buf)) return;
  for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    char name[32];
    unsigned long long rd, rd_sectors, wr, wr_sectors, skip;
    if (sscanf(line, " %*u %*u %31s %llu %llu %llu %llu %llu %llu %llu", name, &rd, &skip, &rd_sectors, &skip, &wr, &skip, &wr_sectors) != 8) continue;
    // Whole virtio disks only (vda, not its partitions vda1).
    if (strncmp(name, "vd", 2) != 0 || name[strlen(name) - 1] < 'a') continue;
    r->disk_read_bytes += rd_sectors * 512;
    r->disk_written_bytes += wr_sectors * 512;
  }
}

static void network(microsandbox_agent_MetricsResult *r) {
  char buf[8192];
  if (!slurp("/proc/net/dev", buf, sizeof buf)) return;
  // Two header lines, then "  eth0: rx_bytes packets errs drop fifo frame compressed multicast tx_bytes ..."
  for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    char *colon = strchr(line, ':');
    char *eol = strchr(line, '\n');
    if (!colon || (eol && colon > eol)) continue;
    char *name = line;
    while (*name == ' ') name++;
    if (strncmp(name, "lo:", 3) == 0) continue;
    unsigned long long rx, tx;
    if (sscanf(colon + 1, "%llu %*u %*u %*u %*u %*u %*u %*u %llu", &rx, &tx) == 2) {
      r->net_rx_bytes += rx;
      r->net_tx_bytes += tx;
    }
  }
}

void metrics_send(struct conn *c, uint32_t id) {
  microsandbox_agent_GuestMessage m = microsandbox_agent_GuestMessage_init_zero;
  m.session = id;
  m.which_body = microsandbox_agent_GuestMessage_metrics_tag;
  microsandbox_agent_MetricsResult *r = &m.body.metrics;
  char buf[4096];
  cpu(r);
  if (slurp("/proc/meminfo", buf, sizeof buf)) {
    r->memory_total_bytes = meminfo(buf, "MemTotal:");
    r->memory_available_bytes = meminfo(buf, "MemAvailable:");
  }
  disk(r);
  network(r);
  r->processes = cgroup_processes();
  if (slurp("/proc/uptime", buf, sizeof buf)) r->uptime_ns = (uint64_t)(strtod(buf, NULL) * 1e9);
  conn_send(c, &m);
}
