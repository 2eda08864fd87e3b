// Shared declarations of msb-vmm's parts: failure reporting, the launch config, the host checks
// and libkrun loader, the libkrun run and the host probe.
#ifndef MSB_VMM_H
#define MSB_VMM_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "vmm.pb.h"

typedef microsandbox_vmm_KrunConfig krun_config;

// Frames on the config, status and probe descriptors: 4-byte big-endian length, then the message.
#define VMM_FRAME_MAX (1u << 20)

// Writes one framed message on fd; 0, or -1 when it could not be encoded or written.
int vmm_write_frame(int fd, const pb_msgdesc_t *fields, const void *msg);

// Writes a KrunStatus {step, errnum, message} on status_fd (stderr when that fails) and
// returns 1, the helper's exit status for "failed before the VM started".
int vmm_fail(int status_fd, const char *step, int errnum, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

// Reads one framed KrunConfig from fd, decodes and validates it; 0 or a reported failure.
int config_read(int fd, int status_fd, krun_config *cfg);

// The libkrun entry points msb-vmm may call; signatures follow libkrun's include/libkrun.h (no
// libkrun at build time). An optional one a library lacks is NULL.
typedef struct {
  int32_t (*set_log_level)(uint32_t level);
  int32_t (*init_log)(int target_fd, uint32_t level, uint32_t style, uint32_t options);
  int32_t (*create_ctx)(void);
  int32_t (*set_vm_config)(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib);
  int32_t (*set_root)(uint32_t ctx_id, const char *root_path);
  int32_t (*add_virtiofs3)(uint32_t ctx_id, const char *c_tag, const char *c_path, uint64_t shm_size, bool read_only);
  int32_t (*add_disk2)(uint32_t ctx_id, const char *block_id, const char *disk_path, uint32_t disk_format, bool read_only);
  int32_t (*add_disk)(uint32_t ctx_id, const char *block_id, const char *disk_path, bool read_only);
  int32_t (*disable_implicit_vsock)(uint32_t ctx_id);
  int32_t (*add_vsock)(uint32_t ctx_id, uint32_t tsi_features);
  int32_t (*add_vsock_port2)(uint32_t ctx_id, uint32_t port, const char *c_filepath, bool listen);
  int32_t (*add_vsock_port)(uint32_t ctx_id, uint32_t port, const char *c_filepath);
  int32_t (*set_rlimits)(uint32_t ctx_id, const char *const rlimits[]);
  int32_t (*set_exec)(uint32_t ctx_id, const char *exec_path, const char *const argv[], const char *const envp[]);
  int32_t (*set_workdir)(uint32_t ctx_id, const char *workdir_path);
  int32_t (*set_console_output)(uint32_t ctx_id, const char *c_filepath);
  int32_t (*start_enter)(uint32_t ctx_id);
} krun_api;

// Why a host check or a load failed: the step ("kvm", "dlopen", "dlsym"), an errno, a message.
typedef struct {
  const char *step;
  int errnum;
  char message[768];
} host_error;

// The KVM device node checked (MSB_VMM_KVM_DEVICE, else /dev/kvm).
const char *kvm_device(void);
// 0 when the KVM device opens read-write (always on non-Linux hosts), else -1 and *e.
int kvm_check(host_error *e);
// Whether the host's KVM is the PVM hypervisor, which runs only PVM guest kernels.
bool kvm_is_pvm(void);
// The libkrun library tried: MSB_LIBKRUN_PATH, else the platform's soname.
const char *libkrun_name(void);
// Loads libkrun and resolves its entry points: the handle, or NULL and *e (library missing,
// or a required entry point missing).
void *libkrun_load(krun_api *api, host_error *e);
// Names of the entry points `api` has, into out (room for every entry point); their count.
size_t libkrun_symbols(const krun_api *api, const char **out);
// Loads libkrunfw (MSB_LIBKRUNFW_PATH, else the sonames libkrun pairs with): the handle with
// *name the library loaded, or NULL with *name the first one tried and *e.
void *libkrunfw_open(const char **name, host_error *e);

// The KVM check, the load and the libkrun call sequence. Returns only on failure (exit status).
int krun_run(const krun_config *cfg, int status_fd);

// Writes one framed HostProbe on fd; the exit status.
int probe_run(int fd);

// The jail QEMU runs in (jail.c): a mount namespace holding the system's programs, the `ro`
// files and the runtime dir; with `no_network`, an empty network namespace; as root, the uid and
// gid JAIL_ID_BASE + pid. 0, or an errno and `why`; `unavailable` when the host allows no
// namespaces here at all (nothing was changed).
#define JAIL_ID_BASE 0x70000000u
#define JAIL_MAX_RO 16
typedef struct {
  const char *rundir;
  const char *ro[JAIL_MAX_RO];
  int nro;
  bool no_network;
} jail_spec;
int jail_enter(const jail_spec *j, bool *unavailable, char *why, size_t n);

// The network supervisor (supervise.c, Linux). seccomp_install, in the process about to become
// QEMU (no_new_privs set): the filter that hands QEMU's socket calls naming a destination to
// `*listener`. 0, or an errno and `why`.
int seccomp_install(int *listener, char *why, size_t n);
// Answers QEMU's (pid `qemu`, `pidfd`) notifications on `listener` by the policy `p` (owned from
// here on; --jail RUNDIR for unix sockets; the egress proxy's port or 0), reads SetPolicy from
// `control` and writes events on it, until QEMU exits: then QEMU's exit status (a signal death
// is raised on this process). `accepting` (-1: none) listens at `accept_path` (--control-listen):
// each host that connects there becomes the control channel in place of the one before.
struct policy;
int supervise(pid_t qemu, int pidfd, int listener, int control, int accepting, const char *accept_path, struct policy *p, const char *rundir, unsigned proxy);

#endif
