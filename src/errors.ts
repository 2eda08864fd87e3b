// The error hierarchy: one base class, a subclass per failure, each with a stable `code` that
// callers can switch on; `cause` carries the underlying error where there is one.

export class MicrosandboxError extends Error {
  readonly code: string = "MSB_ERROR";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** An argument or option was out of range; nothing was started. */
export class InvalidArgumentError extends MicrosandboxError {
  override readonly code = "MSB_INVALID_ARGUMENT";
}

/** The channel to the guest agent could not be opened, or it broke. */
export class AgentConnectionError extends MicrosandboxError {
  override readonly code = "MSB_AGENT_CONNECTION";
}

/** The guest sent something the protocol does not allow (bad frame, wrong version, oversized data). */
export class AgentProtocolError extends MicrosandboxError {
  override readonly code = "MSB_AGENT_PROTOCOL";
}

/** The agent refused a request (bad request, limit, internal error). `kind` is the agent's error kind. */
export class AgentError extends MicrosandboxError {
  override readonly code = "MSB_AGENT_ERROR";
  constructor(
    message: string,
    readonly kind: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** An errno reported by the guest, with its Linux name ("ENOENT") for matching. */
interface GuestErrno {
  errno: number;
  errnoName: string;
}

/** A process could not be started in the guest: missing binary, bad cwd, permission, user. */
export class ExecError extends MicrosandboxError implements GuestErrno {
  override readonly code = "MSB_EXEC_FAILED";
  constructor(
    message: string,
    readonly errno: number,
    readonly errnoName: string,
  ) {
    super(message);
  }
}

/** A file operation in the guest failed; `errnoName` says why (ENOENT, EACCES, ...). */
export class FileOperationError extends MicrosandboxError implements GuestErrno {
  override readonly code = "MSB_FILE_OPERATION";
  constructor(
    message: string,
    readonly errno: number,
    readonly errnoName: string,
  ) {
    super(message);
  }
}

/** A time limit passed: connecting, the handshake, or a process's `timeout`. */
export class TimeoutError extends MicrosandboxError {
  override readonly code = "MSB_TIMEOUT";
}

/** A process produced more output than the caller allowed (`maxBuffer`); it was killed. */
export class OutputLimitError extends MicrosandboxError {
  override readonly code = "MSB_OUTPUT_LIMIT";
}

/** The requested VMM cannot run on this host; the message says what is missing. */
export class BackendUnavailableError extends MicrosandboxError {
  override readonly code = "MSB_BACKEND_UNAVAILABLE";
}

/**
 * The host cannot confine the VMM as `confinement: "required"` asks (namespaces, the network
 * supervisor); `missing` names each part and why. `confinement: "best-effort"` runs without them.
 */
export class ConfinementError extends MicrosandboxError {
  override readonly code = "MSB_CONFINEMENT";
  constructor(
    message: string,
    readonly missing: readonly string[],
  ) {
    super(message);
  }
}

/** The sandbox is not running: call start() first, or it was stopped. */
export class SandboxNotRunningError extends MicrosandboxError {
  override readonly code: string = "MSB_SANDBOX_NOT_RUNNING";
}

/** A VM that outlived its host (the outlive option) is gone: it cannot be adopted. */
export class VmGoneError extends SandboxNotRunningError {
  override readonly code: string = "MSB_VM_GONE";
}

/**
 * The sandbox reached a lifetime limit (maxDuration or idleTimeout, named by `limit`) and was
 * stopped; calls pending then and made later fail with this error.
 */
export class SandboxExpiredError extends SandboxNotRunningError {
  override readonly code = "MSB_SANDBOX_EXPIRED";
  constructor(
    message: string,
    readonly limit: "maxDuration" | "idleTimeout",
  ) {
    super(message);
  }
}

/** A volume is in use in a way that excludes this use: a second writer, or a writer beside readers. */
export class VolumeBusyError extends MicrosandboxError {
  override readonly code = "MSB_VOLUME_BUSY";
}

/** A volume was attached but the guest could not mount it (its console says why). */
export class VolumeMountError extends MicrosandboxError {
  override readonly code = "MSB_VOLUME_MOUNT";
}

/** The sandbox ran out of a resource: memory (the guest OOM killer struck) or processes. */
export class ResourceError extends MicrosandboxError {
  override readonly code = "MSB_RESOURCE";
}

/** The sandbox's network is not available as configured. */
export class NetworkError extends MicrosandboxError {
  override readonly code = "MSB_NETWORK";
}

/** The interpreter behind run() ended unexpectedly; its state is lost and the next run() starts afresh. */
export class ExecutionError extends MicrosandboxError {
  override readonly code = "MSB_EXECUTION";
}

/** The operation was cancelled through its AbortSignal; `cause` is the signal's reason. */
export class AbortError extends MicrosandboxError {
  override readonly code = "MSB_ABORTED";
}

/** A layer could not be applied: unsafe, malformed or over a limit. The target is left partial; discard it. */
export class LayerError extends MicrosandboxError {
  override readonly code = "MSB_LAYER";
  constructor(
    readonly layer: string,
    /** The entry's path as written in the archive ("" when the archive itself is broken before any entry). */
    readonly entry: string,
    why: string,
    options?: { cause?: unknown },
  ) {
    const short = /^(sha256:[0-9a-f]{12})[0-9a-f]{52}$/.exec(layer)?.[1];
    const name = entry.length > 200 ? `${entry.slice(0, 200)}…` : entry;
    super(`layer ${short ? `${short}…` : layer}: ${entry ? `entry ${JSON.stringify(name)}` : "archive"} ${why}`, options);
  }
}

/** A layer could not be decompressed. */
export class LayerFormatError extends MicrosandboxError {
  override readonly code = "MSB_LAYER_FORMAT";
}

/** The archive is malformed: bad checksum, bad numeric field, truncated data, oversized metadata. */
export class TarError extends MicrosandboxError {
  override readonly code = "MSB_TAR";
  constructor(
    message: string,
    /** Byte offset of the header the problem was found in. */
    readonly offset: number,
    /** Best-effort name of the entry involved ("" when unknown). */
    readonly entry: string = "",
  ) {
    super(message);
  }
}

/** The registry refused or failed a request; `status` is the HTTP status when there was one. */
export class RegistryError extends MicrosandboxError {
  override readonly code: string = "MSB_REGISTRY";
  constructor(
    message: string,
    readonly status?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** An image index has no manifest for the wanted platform; `available` lists the ones it has. */
export class PlatformNotFoundError extends MicrosandboxError {
  override readonly code = "MSB_PLATFORM_NOT_FOUND";
  constructor(
    message: string,
    readonly available: string[],
  ) {
    super(message);
  }
}

/** The image is unknown or could not be materialized. */
export class ImageError extends MicrosandboxError {
  override readonly code = "MSB_IMAGE";
}

/** Downloaded content did not match the digest or size that named it; nothing was kept. */
export class DigestMismatchError extends MicrosandboxError {
  override readonly code = "MSB_DIGEST_MISMATCH";
}

export class LockTimeoutError extends MicrosandboxError {
  override readonly code = "MSB_LOCK_TIMEOUT";
}

/** The guest agent binary is missing or not executable. */
export class AgentBinaryError extends MicrosandboxError {
  override readonly code = "MSB_AGENT_BINARY";
}

/** The guest kernel or initramfs is missing or unusable. */
export class GuestKernelError extends MicrosandboxError {
  override readonly code = "MSB_GUEST_KERNEL";
}

/** libkrun refused the VM before it started; `step` names the failing call. */
export class KrunStartError extends MicrosandboxError {
  override readonly code = "MSB_KRUN_START";
  constructor(
    message: string,
    readonly step: string,
    readonly errnum: number,
  ) {
    super(message);
  }
}

export class VmmHelperError extends MicrosandboxError {
  override readonly code = "MSB_VMM_HELPER";
}

/** The VM did not boot to a ready agent; `consoleLog` holds what the guest printed. */
export class VmBootError extends MicrosandboxError {
  override readonly code = "MSB_VM_BOOT";
  constructor(
    message: string,
    readonly consoleLog: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** QEMU's monitor refused a command or broke (snapshots, restores). */
export class QmpError extends MicrosandboxError {
  override readonly code = "MSB_QMP";
}

/** This backend cannot save, restore or fork a VM (libkrun has no snapshots). */
export class SnapshotUnsupportedError extends MicrosandboxError {
  override readonly code = "MSB_SNAPSHOT_UNSUPPORTED";
}

/**
 * A build step failed: a RUN exited non-zero (exitCode), or a COPY or the guest failed (exitCode
 * null). step is its index in spec.steps; log is the file that keeps the build's output. Nothing
 * of the build was stored and its VM is stopped.
 */
export class BuildError extends MicrosandboxError {
  override readonly code = "MSB_BUILD";
  constructor(
    message: string,
    readonly step: number,
    readonly exitCode: number | null,
    readonly log: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A Dockerfile msb build cannot take: line is 1-based, instruction as written ("" when none). */
export class DockerfileError extends MicrosandboxError {
  override readonly code = "MSB_DOCKERFILE";
  constructor(
    message: string,
    readonly line: number,
    readonly instruction: string,
  ) {
    super(message);
  }
}

/** Sandbox.resume(name) found no sandbox paused under that name. */
export class PausedSandboxNotFoundError extends MicrosandboxError {
  override readonly code = "MSB_PAUSED_NOT_FOUND";
}

// Linux errno numbers: the guest is Linux whatever the host is, so the host's own table
// (os.constants.errno) would misname them on macOS.
const LINUX_ERRNO: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  7: "E2BIG",
  8: "ENOEXEC",
  9: "EBADF",
  10: "ECHILD",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  18: "EXDEV",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  25: "ENOTTY",
  26: "ETXTBSY",
  27: "EFBIG",
  28: "ENOSPC",
  29: "ESPIPE",
  30: "EROFS",
  31: "EMLINK",
  32: "EPIPE",
  36: "ENAMETOOLONG",
  38: "ENOSYS",
  39: "ENOTEMPTY",
  40: "ELOOP",
  95: "EOPNOTSUPP",
  122: "EDQUOT",
};

export function linuxErrnoName(errno: number): string {
  return LINUX_ERRNO[errno] ?? (errno ? `errno ${errno}` : "");
}

export function abortError(signal: AbortSignal): AbortError {
  return new AbortError("the operation was aborted", { cause: signal.reason });
}
