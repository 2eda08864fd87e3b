// `msb-vmm probe`: the host's facts for choosing a backend, found by the checks and the loader
// `msb-vmm krun` uses (host.c), written as one framed HostProbe (proto/vmm.proto).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "vmm.h"

typedef microsandbox_vmm_HostProbe_Check check;

static check failed(const host_error *e, char *buf, size_t n) {
  snprintf(buf, n, "%s", e->message);
  return (check){.ok = false, .detail = buf, .errnum = e->errnum};
}

int probe_run(int fd) {
  microsandbox_vmm_HostProbe p = microsandbox_vmm_HostProbe_init_zero;
  host_error e;
  char kvm_detail[800], krun_detail[800], fw_detail[800];

  p.kvm_path = (char *)kvm_device();
  p.has_kvm = true;
  if (kvm_check(&e) == 0) {
#ifdef __linux__
    snprintf(kvm_detail, sizeof kvm_detail, "%s is readable and writable", p.kvm_path);
#else
    snprintf(kvm_detail, sizeof kvm_detail, "no KVM on this platform: the hypervisor is the system's own");
#endif
    p.kvm = (check){.ok = true, .detail = kvm_detail};
  } else {
    p.kvm = failed(&e, kvm_detail, sizeof kvm_detail);
  }
  p.kvm_pvm = kvm_is_pvm();

  krun_api api;
  const char *symbols[32];
  p.libkrun_name = (char *)libkrun_name();
  p.has_libkrun = true;
  void *krun = libkrun_load(&api, &e);
  if (krun) {
    snprintf(krun_detail, sizeof krun_detail, "%s loaded", p.libkrun_name);
    p.libkrun = (check){.ok = true, .detail = krun_detail};
    p.libkrun_symbols_count = (pb_size_t)libkrun_symbols(&api, symbols);
    p.libkrun_symbols = (char **)symbols;
  } else {
    p.libkrun = failed(&e, krun_detail, sizeof krun_detail);
  }

  const char *fw_name = "";
  p.has_libkrunfw = true;
  void *fw = libkrunfw_open(&fw_name, &e);
  p.libkrunfw_name = (char *)fw_name;
  if (fw) {
    snprintf(fw_detail, sizeof fw_detail, "%s loaded", fw_name);
    p.libkrunfw = (check){.ok = true, .detail = fw_detail};
  } else {
    p.libkrunfw = failed(&e, fw_detail, sizeof fw_detail);
  }

  int rc = vmm_write_frame(fd, microsandbox_vmm_HostProbe_fields, &p);
  if (fw) dlclose(fw);
  if (krun) dlclose(krun);
  if (rc < 0) {
    fprintf(stderr, "msb-vmm: cannot write the probe\n");
    return 1;
  }
  return 0;
}
