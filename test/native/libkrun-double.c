// A recording test double of libkrun for test/native/vmm-krun.test.ts (built there, never by
// binding.gyp). Each call appends "name(args)" to $KRUN_DOUBLE_LOG; KRUN_DOUBLE_FAIL=name:-22,...
// makes calls fail; -DKRUN_DOUBLE_VERSION=11800 etc. leaves out entry points newer than that
// release, as dlsym would find them missing. Signatures are libkrun.h's, written out here.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef KRUN_DOUBLE_VERSION
#define KRUN_DOUBLE_VERSION 11800
#endif

static const uint32_t CTX = 7;

static void append(const char *line) {
  const char *path = getenv("KRUN_DOUBLE_LOG");
  if (path == NULL) return;
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  if (write(fd, line, strlen(line)) < 0) { /* nothing to do: the test will see the line missing */
  }
  close(fd);
}

// Renders a string as a JSON string literal, NULL as null.
static void str(FILE *f, const char *s) {
  if (s == NULL) {
    fputs("null", f);
    return;
  }
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
    else fputc(*s, f);
  }
  fputc('"', f);
}

// Renders a NULL-terminated string array as a JSON array, NULL as null.
static void strs(FILE *f, const char *const v[]) {
  if (v == NULL) {
    fputs("null", f);
    return;
  }
  fputc('[', f);
  for (size_t i = 0; v[i] != NULL; i++) {
    if (i) fputs(", ", f);
    str(f, v[i]);
  }
  fputc(']', f);
}

// Records the call: fmt uses %d %u %s (string) %S (string array) %b (bool) %U (uint64).
static void record(const char *name, const char *fmt, ...) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  fprintf(f, "%s(", name);
  va_list ap;
  va_start(ap, fmt);
  for (const char *p = fmt; *p; p++) {
    if (p != fmt) fputs(", ", f);
    switch (*p) {
      case 'd': fprintf(f, "%d", va_arg(ap, int)); break;
      case 'u': fprintf(f, "%u", va_arg(ap, unsigned)); break;
      case 'U': fprintf(f, "%llu", (unsigned long long)va_arg(ap, uint64_t)); break;
      case 'b': fputs(va_arg(ap, int) ? "true" : "false", f); break;
      case 's': str(f, va_arg(ap, const char *)); break;
      case 'S': strs(f, va_arg(ap, const char *const *)); break;
    }
  }
  va_end(ap);
  fputs(")\n", f);
  fclose(f);
  append(buf);
  free(buf);
}

// The result KRUN_DOUBLE_FAIL assigns to this call, else ok.
static int32_t result(const char *name, int32_t ok) {
  const char *spec = getenv("KRUN_DOUBLE_FAIL");
  size_t n = strlen(name);
  for (const char *p = spec; p && *p;) {
    if (strncmp(p, name, n) == 0 && p[n] == ':') return (int32_t)strtol(p + n + 1, NULL, 10);
    p = strchr(p, ',');
    if (p) p++;
  }
  return ok;
}

#define REC(fn, fmt, ...) (record(#fn, fmt, __VA_ARGS__), result(#fn, 0))

int32_t krun_set_log_level(uint32_t level) { return REC(krun_set_log_level, "u", level); }
int32_t krun_create_ctx(void) {
  record("krun_create_ctx", "");
  return result("krun_create_ctx", (int32_t)CTX);
}
int32_t krun_set_vm_config(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib) {
  return REC(krun_set_vm_config, "uuu", ctx_id, (unsigned)num_vcpus, ram_mib);
}
int32_t krun_set_root(uint32_t ctx_id, const char *root_path) { return REC(krun_set_root, "us", ctx_id, root_path); }
int32_t krun_set_rlimits(uint32_t ctx_id, const char *const rlimits[]) { return REC(krun_set_rlimits, "uS", ctx_id, rlimits); }
int32_t krun_set_workdir(uint32_t ctx_id, const char *workdir_path) { return REC(krun_set_workdir, "us", ctx_id, workdir_path); }
int32_t krun_set_exec(uint32_t ctx_id, const char *exec_path, const char *const argv[], const char *const envp[]) {
  return REC(krun_set_exec, "usSS", ctx_id, exec_path, argv, envp);
}

#if KRUN_DOUBLE_VERSION >= 10800
int32_t krun_add_vsock_port(uint32_t ctx_id, uint32_t port, const char *c_filepath) { return REC(krun_add_vsock_port, "uus", ctx_id, port, c_filepath); }
int32_t krun_set_console_output(uint32_t ctx_id, const char *c_filepath) { return REC(krun_set_console_output, "us", ctx_id, c_filepath); }
#endif
#if KRUN_DOUBLE_VERSION >= 10905
int32_t krun_add_disk(uint32_t ctx_id, const char *block_id, const char *disk_path, bool read_only) {
  return REC(krun_add_disk, "ussb", ctx_id, block_id, disk_path, read_only);
}
#endif
#if KRUN_DOUBLE_VERSION >= 11000
int32_t krun_add_disk2(uint32_t ctx_id, const char *block_id, const char *disk_path, uint32_t disk_format, bool read_only) {
  return REC(krun_add_disk2, "ussub", ctx_id, block_id, disk_path, disk_format, read_only);
}
int32_t krun_add_vsock_port2(uint32_t ctx_id, uint32_t port, const char *c_filepath, bool listen) {
  return REC(krun_add_vsock_port2, "uusb", ctx_id, port, c_filepath, listen);
}
#endif
#if KRUN_DOUBLE_VERSION >= 11300
int32_t krun_init_log(int target_fd, uint32_t level, uint32_t style, uint32_t options) { return REC(krun_init_log, "duuu", target_fd, level, style, options); }
#endif
#if KRUN_DOUBLE_VERSION >= 11700
int32_t krun_disable_implicit_vsock(uint32_t ctx_id) { return REC(krun_disable_implicit_vsock, "u", ctx_id); }
int32_t krun_add_vsock(uint32_t ctx_id, uint32_t tsi_features) { return REC(krun_add_vsock, "uu", ctx_id, tsi_features); }
#endif
#if KRUN_DOUBLE_VERSION >= 11800
int32_t krun_add_virtiofs3(uint32_t ctx_id, const char *c_tag, const char *c_path, uint64_t shm_size, bool read_only) {
  return REC(krun_add_virtiofs3, "ussUb", ctx_id, c_tag, c_path, shm_size, read_only);
}
#endif

// Like a VM that ran and ended: the process exits. KRUN_DOUBLE_PROBE_FDS=3,4 first records which
// of those descriptors are still open (the helper must have closed them by now).
int32_t krun_start_enter(uint32_t ctx_id) {
  record("krun_start_enter", "u", ctx_id);
  for (const char *p = getenv("KRUN_DOUBLE_PROBE_FDS"); p && *p;) {
    int fd = (int)strtol(p, NULL, 10);
    char line[64];
    snprintf(line, sizeof line, "fd %d %s\n", fd, fcntl(fd, F_GETFD) < 0 ? "closed" : "open");
    append(line);
    p = strchr(p, ',');
    if (p) p++;
  }
  int32_t rc = result("krun_start_enter", 0);
  if (rc < 0) return rc;
  _exit(0);
}
