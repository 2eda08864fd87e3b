// Shared declarations of msb-vmm's parts: failure reporting, the launch config, the libkrun run.
#ifndef MSB_VMM_H
#define MSB_VMM_H

#include <stdarg.h>

#include "vmm.pb.h"

typedef microsandbox_vmm_KrunConfig krun_config;

// Frames on the config and status descriptors: 4-byte big-endian length, then the message.
#define VMM_FRAME_MAX (1u << 20)

// Writes a KrunStatus {step, errnum, message} on status_fd (stderr when that fails) and
// returns 1, the helper's exit status for "failed before the VM started".
int vmm_fail(int status_fd, const char *step, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

// Reads one framed KrunConfig from fd, decodes and validates it; 0 or a reported failure.
int config_read(int fd, int status_fd, krun_config *cfg);

// The KVM probe, dlopen and the libkrun call sequence. Returns only on failure (exit status).
int krun_run(const krun_config *cfg, int status_fd);

#endif
