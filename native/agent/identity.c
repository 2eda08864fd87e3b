// A restored copy of a VM must not be a twin of its siblings: it mixes host entropy into the
// kernel's RNG and reseeds it, steps its clock to the host's, and takes its own hostname, boot id
// and machine id. Failures are reported on stderr (the console) and do not stop the agent.
// An agent on a host (tests) reseeds too, but leaves the host's clock, name and ids alone.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

// From <linux/random.h>, which clashes with musl's <sys/ioctl.h> over the _IO macros.
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#define RNDRESEEDCRNG _IO('R', 0x07)

#define BOOT_ID_FILE "/run/msb/boot_id"
#define BOOT_ID_PROC "/proc/sys/kernel/random/boot_id"

static void say(const char *what) { fprintf(stderr, "msb-agent: %s: %s (errno %d)\n", what, strerror(errno), errno); }

static void reseed(const uint8_t *bytes, size_t n) {
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return say("open /dev/urandom");
  struct {
    int entropy_count, buf_size;
    uint8_t buf[RESUME_MAX_ENTROPY];  // the Resume was checked against it
  } add = {.entropy_count = (int)n * 8, .buf_size = (int)n};
  if (n) memcpy(add.buf, bytes, n);
  if (n && ioctl(fd, RNDADDENTROPY, &add) < 0) say("RNDADDENTROPY");
  // The CRNG takes the new entropy now, not at its next scheduled reseed (Linux >= 4.17; older
  // kernels answer ENOTTY or EINVAL and reseed on their own schedule).
  if (ioctl(fd, RNDRESEEDCRNG) < 0 && errno != ENOTTY && errno != EINVAL) say("RNDRESEEDCRNG");
  close(fd);
}

static bool uuid_ok(const char *s) {
  if (strlen(s) != 36) return false;
  for (int i = 0; i < 36; i++) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  }
  return true;
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444);
  if (fd < 0) return say(path);
  if (write(fd, text, strlen(text)) < 0) say(path);
  close(fd);
}

// The kernel's boot id is read-only: a file bound over it shows the copy's own.
static void take_boot_id(const char *id) {
  char line[40];
  snprintf(line, sizeof line, "%s\n", id);
  mkdir_parents("/run/msb", 0755);
  write_file(BOOT_ID_FILE, line);
  if (umount2(BOOT_ID_PROC, MNT_DETACH) < 0 && errno != EINVAL) say("umount " BOOT_ID_PROC);
  if (mount(BOOT_ID_FILE, BOOT_ID_PROC, NULL, MS_BIND, NULL) < 0) say("bind " BOOT_ID_PROC);
  char machine[34];
  size_t j = 0;
  for (const char *p = id; *p && j < 32; p++)
    if (*p != '-') machine[j++] = *p;
  machine[j++] = '\n';
  machine[j] = '\0';
  if (access("/etc", F_OK) == 0) write_file("/etc/machine-id", machine);
}

void identity_renew(const microsandbox_agent_Resume *r) {
  reseed(r->entropy ? r->entropy->bytes : NULL, r->entropy ? r->entropy->size : 0);
  if (!g_owns_machine) {
    fprintf(stderr, "msb-agent: not the machine's init: its clock, hostname and boot id stay as they are\n");
    return;
  }
  if (r->unix_time_ns) {
    struct timespec ts = {.tv_sec = (time_t)(r->unix_time_ns / 1000000000), .tv_nsec = (long)(r->unix_time_ns % 1000000000)};
    if (clock_settime(CLOCK_REALTIME, &ts) < 0) say("clock_settime");
  }
  if (r->hostname && r->hostname[0] && sethostname(r->hostname, strlen(r->hostname)) < 0) say("sethostname");
  if (r->boot_id && r->boot_id[0]) {
    if (uuid_ok(r->boot_id)) take_boot_id(r->boot_id);
    else fprintf(stderr, "msb-agent: boot id '%s' is not a lower-case UUID: ignored\n", r->boot_id);
  }
}
