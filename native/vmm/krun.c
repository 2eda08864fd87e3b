// The libkrun sequence: check KVM, load libkrun at run time (host.c), configure the VM, and
// become it (krun_start_enter).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vmm.h"

// From libkrun.h.
#define KRUN_LOG_TARGET_DEFAULT -1
#define KRUN_LOG_STYLE_AUTO 0
#define KRUN_LOG_OPTION_NO_ENV 1
#define KRUN_DISK_FORMAT_RAW 0

static int set(const char *s) { return s != NULL && s[0] != '\0'; }

// Decides, before any libkrun call, whether this libkrun can honour the config: an image it
// cannot keep read-only, or "no network" it cannot turn off, is refused, never degraded.
static int check_capabilities(const krun_api *api, const krun_config *c, int st) {
  bool dir_ok = set(c->image_dir) && api->add_virtiofs3;
  bool disk_ok = set(c->image_disk) && (api->add_disk2 || api->add_disk);
  if ((set(c->image_dir) || set(c->image_disk)) && !dir_ok && !disk_ok)
    return vmm_fail(st, "image", ENOTSUP,
                    "this libkrun cannot share the image read-only: a directory needs krun_add_virtiofs3 "
                    "(libkrun >= 1.18), a disk needs krun_add_disk2 or krun_add_disk (libkrun >= 1.9.5); "
                    "image_dir=%s image_disk=%s",
                    set(c->image_dir) ? c->image_dir : "(none)", set(c->image_disk) ? c->image_disk : "(none)");
  if (c->network == microsandbox_vmm_KrunConfig_Network_NONE && !(api->disable_implicit_vsock && api->add_vsock))
    return vmm_fail(st, "network", ENOTSUP,
                    "network \"none\" needs libkrun >= 1.17 (krun_disable_implicit_vsock, krun_add_vsock): "
                    "this libkrun would give the guest the host's network; upgrade libkrun or allow network");
  if (c->vsock_port != 0 && !api->add_vsock_port2 && !api->add_vsock_port)
    return vmm_fail(st, "dlsym", ENOSYS, "this libkrun has no krun_add_vsock_port: the agent channel needs libkrun >= 1.8");
  return 0;
}

// A NULL-terminated copy of a repeated field, as libkrun's string arrays are read.
static const char *const *strv(char **v, pb_size_t n) {
  const char **out = calloc((size_t)n + 1, sizeof *out);
  if (out == NULL) abort();
  for (pb_size_t i = 0; i < n; i++) out[i] = v[i];
  return out;
}

#define CALL(fn, ...)                                                                               \
  do {                                                                                              \
    int32_t rc_ = api.fn(__VA_ARGS__);                                                              \
    if (rc_ < 0) return vmm_fail(st, "krun_" #fn, -rc_, "krun_" #fn " failed: %s", strerror(-rc_)); \
  } while (0)

int krun_run(const krun_config *c, int st) {
  krun_api api;
  host_error e;
  if (kvm_check(&e) < 0)
    return vmm_fail(st, e.step, e.errnum,
                    "%s; libkrun needs KVM: enable virtualization and give this user read-write "
                    "access to %s (the kvm group)",
                    e.message, kvm_device());
  if (libkrun_load(&api, &e) == NULL)
    return vmm_fail(st, e.step, e.errnum, "%s%s", e.message, strcmp(e.step, "dlopen") == 0 ? "; install libkrun or set MSB_LIBKRUN_PATH" : "");
  int rc = check_capabilities(&api, c, st);
  if (rc) return rc;

  if (api.init_log) CALL(init_log, KRUN_LOG_TARGET_DEFAULT, c->log_level, KRUN_LOG_STYLE_AUTO, KRUN_LOG_OPTION_NO_ENV);
  else CALL(set_log_level, c->log_level);
  int32_t id = api.create_ctx();
  if (id < 0) return vmm_fail(st, "krun_create_ctx", -id, "krun_create_ctx failed: %s", strerror(-id));
  uint32_t ctx = (uint32_t)id;
  CALL(set_vm_config, ctx, (uint8_t)c->cpus, c->memory_mib);
  CALL(set_root, ctx, c->root_dir);

  if (set(c->image_dir) && api.add_virtiofs3) CALL(add_virtiofs3, ctx, c->image_tag, c->image_dir, 0, true);                    // shm_size 0: no DAX window
  else if (set(c->image_disk) && api.add_disk2) CALL(add_disk2, ctx, c->image_tag, c->image_disk, KRUN_DISK_FORMAT_RAW, true);  // never probe a format
  else if (set(c->image_disk)) CALL(add_disk, ctx, c->image_tag, c->image_disk, true);

  if (c->network == microsandbox_vmm_KrunConfig_Network_NONE) {
    // The implicit vsock carries TSI (the host's network); re-add it with no TSI features.
    CALL(disable_implicit_vsock, ctx);
    CALL(add_vsock, ctx, 0);
  }
  if (c->vsock_port != 0) {
    if (api.add_vsock_port2) CALL(add_vsock_port2, ctx, c->vsock_port, c->vsock_socket, false);  // the guest connects out
    else CALL(add_vsock_port, ctx, c->vsock_port, c->vsock_socket);
  }
  if (c->rlimits_count > 0) CALL(set_rlimits, ctx, strv(c->rlimits, c->rlimits_count));
  // argv excludes the program (libkrun passes exec_path itself); envp is never NULL, since
  // libkrun would then copy this helper's whole environment into the guest.
  CALL(set_exec, ctx, c->exec_path, strv(c->argv, c->argv_count), strv(c->env, c->env_count));
  if (set(c->workdir)) CALL(set_workdir, ctx, c->workdir);
  if (set(c->console_log) && api.set_console_output) CALL(set_console_output, ctx, c->console_log);

  // End-of-file on the status descriptor tells the host the VM is starting.
  close(st);
  int32_t err = api.start_enter(ctx);  // returns only when the VM could not start
  return vmm_fail(-1, "krun_start_enter", err < 0 ? -err : EINVAL, "krun_start_enter failed: %s", strerror(err < 0 ? -err : EINVAL));
}
