// Reads the framed KrunConfig from its descriptor (bounded), decodes it with nanopb, and
// refuses values libkrun would mangle or truncate rather than pass them on.
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pb_decode.h>

#include "vmm.h"

// Reads exactly n bytes; returns the count read before EOF, or -1 with errno.
static ssize_t read_full(int fd, uint8_t *p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, p + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

static int set(const char *s) { return s != NULL && s[0] != '\0'; }

// Most entries libkrun passes on; the guest's kernel command line is small anyway.
#define MAX_ENTRIES 256

// libkrun puts exec_path and workdir on the guest's kernel command line bare: whitespace,
// quotes or control characters there would split it into other parameters.
static int bare_ok(const char *s) {
  for (; s && *s; s++)
    if (*s <= ' ' || *s == '"' || *s == 0x7f) return 0;
  return 1;
}

// Environment entries become kernel parameters (quoted): they must look like NAME=value, and
// must not name what steers the guest's init.
static const char *bad_env(char **v, pb_size_t n) {
  for (pb_size_t i = 0; i < n; i++) {
    const char *e = v[i], *p = e;
    if (!e || !((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || *p == '_')) return e ? e : "(null)";
    while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_') p++;
    if (*p != '=' || strncmp(e, "KRUN_", 5) == 0 || strncmp(e, "init=", 5) == 0 || strncmp(e, "rdinit=", 7) == 0) return e;
  }
  return NULL;
}

// Rlimits are joined with ',' inside one quoted value: only NAME=soft:hard fits.
static const char *bad_rlimit(char **v, pb_size_t n) {
  for (pb_size_t i = 0; i < n; i++)
    if (!v[i] || strchr(v[i], ',') || !strchr(v[i], '=') || !strchr(v[i], ':')) return v[i] ? v[i] : "(null)";
  return NULL;
}

// libkrun wraps argv, env and rlimits in double quotes on the guest's kernel command line
// without escaping, so a quote would silently split or merge values.
static const char *quoted(char **v, pb_size_t n) {
  for (pb_size_t i = 0; i < n; i++)
    if (v[i] == NULL || strchr(v[i], '"') != NULL) return v[i] ? v[i] : "(null)";
  return NULL;
}

static int validate(const krun_config *c, int st) {
  // krun_set_vm_config takes the vCPU count as a uint8_t.
  if (c->cpus < 1 || c->cpus > 255) return vmm_fail(st, "config", EINVAL, "cpus must be 1..255, got %u", c->cpus);
  if (c->memory_mib < 1) return vmm_fail(st, "config", EINVAL, "memory_mib must be at least 1, got 0");
  if (!set(c->root_dir)) return vmm_fail(st, "config", EINVAL, "root_dir is empty: libkrun needs a root directory");
  if (!set(c->exec_path)) return vmm_fail(st, "config", EINVAL, "exec_path is empty: nothing to run in the guest");
  if ((set(c->image_dir) || set(c->image_disk)) && !set(c->image_tag))
    return vmm_fail(st, "config", EINVAL, "image_tag is empty: the guest cannot find the image without it");
  if (c->vsock_port != 0 && !set(c->vsock_socket)) return vmm_fail(st, "config", EINVAL, "vsock_port %u has no vsock_socket", c->vsock_port);
  if (c->network != microsandbox_vmm_KrunConfig_Network_NONE && c->network != microsandbox_vmm_KrunConfig_Network_ALL)
    return vmm_fail(st, "config", EINVAL, "unknown network mode %d", (int)c->network);
  const char *bad;
  if ((bad = quoted(c->argv, c->argv_count)) || (bad = quoted(c->env, c->env_count)) || (bad = quoted(c->rlimits, c->rlimits_count)))
    return vmm_fail(st, "config", EINVAL, "argv, env and rlimits cannot contain '\"' (libkrun cannot quote it): %s", bad);
  if (!bare_ok(c->exec_path) || !bare_ok(c->workdir))
    return vmm_fail(st, "config", EINVAL, "exec_path and workdir cannot contain spaces, quotes or control characters");
  if ((bad = bad_env(c->env, c->env_count)))
    return vmm_fail(st, "config", EINVAL, "env entry \"%s\" must be NAME=value and not set KRUN_*, init or rdinit", bad);
  if ((bad = bad_rlimit(c->rlimits, c->rlimits_count))) return vmm_fail(st, "config", EINVAL, "rlimit \"%s\" must be NAME=soft:hard without commas", bad);
  if (c->argv_count > MAX_ENTRIES || c->env_count > MAX_ENTRIES || c->rlimits_count > MAX_ENTRIES)
    return vmm_fail(st, "config", E2BIG, "at most %d argv, env and rlimits entries each", MAX_ENTRIES);
  if (set(c->image_tag) && strcmp(c->image_tag, "/dev/root") == 0) return vmm_fail(st, "config", EINVAL, "image_tag /dev/root is libkrun's own root tag");
  return 0;
}

int config_read(int fd, int st, krun_config *cfg) {
  uint8_t hdr[4];
  ssize_t n = read_full(fd, hdr, 4);
  if (n < 0) return vmm_fail(st, "config", errno, "reading config fd %d: %s", fd, strerror(errno));
  if (n < 4) return vmm_fail(st, "config", EIO, "config fd %d ended after %zd of 4 length bytes", fd, n);
  uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
  if (len > VMM_FRAME_MAX) return vmm_fail(st, "config", EMSGSIZE, "config frame of %u bytes exceeds the %u-byte limit", len, VMM_FRAME_MAX);
  uint8_t *buf = malloc(len ? len : 1);
  if (buf == NULL) return vmm_fail(st, "config", ENOMEM, "cannot allocate %u bytes for the config", len);
  n = read_full(fd, buf, len);
  if (n < 0) return vmm_fail(st, "config", errno, "reading config fd %d: %s", fd, strerror(errno));
  if ((size_t)n < len) return vmm_fail(st, "config", EIO, "config fd %d ended after %zd of %u bytes", fd, n, len);
  close(fd);  // the VM has no use for it

  *cfg = (krun_config)microsandbox_vmm_KrunConfig_init_zero;
  pb_istream_t is = pb_istream_from_buffer(buf, len);
  if (!pb_decode(&is, microsandbox_vmm_KrunConfig_fields, cfg))
    return vmm_fail(st, "config", EINVAL, "cannot decode KrunConfig (%u bytes): %s", len, PB_GET_ERROR(&is));
  free(buf);
  return validate(cfg, st);
}
