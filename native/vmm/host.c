// What the host offers a libkrun VM, found the one way both `msb-vmm probe` and `msb-vmm krun`
// use: the KVM device check, the library names tried, and the table of libkrun entry points.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vmm.h"

// Entry points present in every libkrun this helper supports are required; the rest mark
// generations (add_vsock_port 1.8, add_disk 1.9.5, add_disk2/add_vsock_port2 1.10, init_log
// 1.13, disable_implicit_vsock/add_vsock 1.17, add_virtiofs3 1.18) and may be missing.
static const struct {
  const char *name;
  size_t off;
  bool required;
} SYMBOLS[] = {
#define SYM(fn, req) \
  { "krun_" #fn, offsetof(krun_api, fn), req }
    SYM(set_log_level, true),       SYM(init_log, false),        SYM(create_ctx, true),
    SYM(set_vm_config, true),       SYM(set_root, true),         SYM(add_virtiofs3, false),
    SYM(add_disk2, false),          SYM(add_disk, false),        SYM(disable_implicit_vsock, false),
    SYM(add_vsock, false),          SYM(add_vsock_port2, false), SYM(add_vsock_port, false),
    SYM(set_rlimits, true),         SYM(set_exec, true),         SYM(set_workdir, true),
    SYM(set_console_output, false), SYM(start_enter, true),
#undef SYM
};
#define NSYMBOLS (sizeof SYMBOLS / sizeof SYMBOLS[0])

static int set(const char *s) { return s != NULL && s[0] != '\0'; }

const char *kvm_device(void) {
  // MSB_VMM_KVM_DEVICE points the check at another node, for tests.
  const char *dev = getenv("MSB_VMM_KVM_DEVICE");
  return set(dev) ? dev : "/dev/kvm";
}

int kvm_check(host_error *e) {
#ifdef __linux__
  // libkrun aborts (SIGABRT) without a usable KVM: callers fail with this report instead.
  const char *dev = kvm_device();
  int fd = open(dev, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    e->step = "kvm";
    e->errnum = errno;
    snprintf(e->message, sizeof e->message, "open(%s, O_RDWR) failed: %s", dev, strerror(errno));
    return -1;
  }
  close(fd);
  return 0;
#else
  (void)e;
  return 0;
#endif
}

bool kvm_is_pvm(void) {
  // The PVM hypervisor's module: its /dev/kvm runs only guest kernels built for PVM.
  const char *module = getenv("MSB_VMM_PVM_MODULE");
  return access(set(module) ? module : "/sys/module/kvm_pvm", F_OK) == 0;
}

const char *libkrun_name(void) {
  const char *name = getenv("MSB_LIBKRUN_PATH");
  if (set(name)) return name;
#ifdef __APPLE__
  return "libkrun.1.dylib";
#else
  return "libkrun.so.1";
#endif
}

void *libkrunfw_open(const char **name, host_error *e) {
  // libkrun >= 1.17 pairs with libkrunfw 5, older ones with 4.
#ifdef __APPLE__
  static const char *const names[] = {"libkrunfw.5.dylib", "libkrunfw.4.dylib", NULL};
#else
  static const char *const names[] = {"libkrunfw.so.5", "libkrunfw.so.4", NULL};
#endif
  const char *forced = getenv("MSB_LIBKRUNFW_PATH");
  const char *const one[] = {forced, NULL};
  const char *const *list = set(forced) ? one : names;
  // The first failure says the most (the newest soname); the rest are named.
  char first[512] = "";
  size_t used = 0;
  char tried[256] = "";
  for (size_t i = 0; list[i]; i++) {
    void *h = dlopen(list[i], RTLD_NOW | RTLD_LOCAL);
    if (h) {
      *name = list[i];
      return h;
    }
    const char *why = dlerror();
    if (i == 0) snprintf(first, sizeof first, "%s", why ? why : "unknown error");
    used += (size_t)snprintf(tried + used, used < sizeof tried ? sizeof tried - used : 0, "%s%s", i ? ", " : "", list[i]);
  }
  *name = list[0];
  e->step = "dlopen";
  e->errnum = ELIBACC;
  snprintf(e->message, sizeof e->message, "dlopen(%s) failed: %s", tried, first);
  return NULL;
}

void *libkrun_load(krun_api *api, host_error *e) {
  const char *name = libkrun_name();
  memset(api, 0, sizeof *api);
  void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    // dlopen does not set errno reliably (a stale ENOENT from the search path is common): one
    // fixed code, and dlerror() says what happened.
    const char *why = dlerror();
    e->step = "dlopen";
    e->errnum = ELIBACC;
    snprintf(e->message, sizeof e->message, "dlopen(%s) failed: %s", name, why ? why : "unknown error");
    return NULL;
  }
  for (size_t i = 0; i < NSYMBOLS; i++) {
    void *sym = dlsym(h, SYMBOLS[i].name);
    if (sym == NULL && SYMBOLS[i].required) {
      e->step = "dlsym";
      e->errnum = ENOSYS;
      snprintf(e->message, sizeof e->message, "%s has no %s: not libkrun, or too old", name, SYMBOLS[i].name);
      memset(api, 0, sizeof *api);
      dlclose(h);
      return NULL;
    }
    // POSIX guarantees data and function pointers convert; memcpy keeps the compiler quiet.
    memcpy((char *)api + SYMBOLS[i].off, &sym, sizeof sym);
  }
  return h;
}

size_t libkrun_symbols(const krun_api *api, const char **out) {
  size_t n = 0;
  for (size_t i = 0; i < NSYMBOLS; i++) {
    void *sym;
    memcpy(&sym, (const char *)api + SYMBOLS[i].off, sizeof sym);
    if (sym) out[n++] = SYMBOLS[i].name;
  }
  return n;
}
