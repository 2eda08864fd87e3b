// The interface every VMM backend implements (QEMU, libkrun): boot a VM whose agent connects back,
// hand back a connected AgentClient, and stop or kill it. Also the part of booting both share:
// waiting for the agent's hello, the timeline, and a failure's cleanup and VmBootError.
import type { ChildProcess } from "node:child_process";
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, readSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Duplex } from "node:stream";
import { debuglog } from "node:util";

import { AgentClient, type ResumeOptions } from "../agent-client/client.js";
import { VmBootError } from "../errors.js";
import type { ProcessStamp } from "../liveness.js";
import { cacheDir, removeRuntimeDir } from "../paths.js";
import type { GuestArch } from "./guest.js";
import type { PortForward } from "./netpolicy.js";
import type { SnapshotOutcome } from "./snapshot.js";

const debug = debuglog("microsandbox");

export type NetworkMode = "none" | "all";

/**
 * What a backend can do beyond booting: restore-on-create from memory snapshots ("snapshot"),
 * copies of a running VM ("fork"), saving one to disk and restoring it ("pause"), volumes, a
 * network held to a policy ("egress-policy"), guest ports published on the host ("ports"), a
 * VMM jailed in namespaces of its own ("jail"), and VMs that outlive this process, to be adopted
 * by another ("outlive").
 */
export type Capability = "snapshot" | "fork" | "pause" | "volumes" | "egress-policy" | "ports" | "jail" | "outlive";

/** What confines a VM's VMM process on the host, as applied (Sandbox.confinement). */
export interface Confinement {
  /** What was asked: "required" fails a create() that cannot have it all; "best-effort" runs with what the host allows. */
  mode: "required" | "best-effort";
  /** A mount namespace whose root holds only the VM's own files (and the user namespace it needs as a non-root user). */
  namespaces: boolean;
  /** A uid and gid of the VM's own (only when started as root). */
  uid: boolean;
  /** no_new_privs: no set-uid program or file capability gains the VMM anything. */
  noNewPrivs: boolean;
  /** A seccomp filter under which the VMM's socket calls are made by a supervisor outside it. */
  seccomp: boolean;
  /**
   * How the network is held: "none" (no network device, an empty network namespace),
   * "supervisor" (the VMM's connect/send calls are made by the supervisor, held to the policy, so
   * a VMM the guest took over reaches nothing the policy refuses), "tsi" (libkrun: the guest's
   * sockets are the host's, unpoliced), "unenforced" (a best-effort VM on a host without them).
   */
  network: "none" | "supervisor" | "tsi" | "unenforced";
  /** Each part the host could not apply, "what: why". Empty under "required". */
  missing: string[];
}

export interface VmConfig {
  /** Guest RAM in MiB. */
  memory: number;
  /** Virtual CPUs (whole number). */
  cpus: number;
  network: NetworkMode;
  /** With a network: the rules the VMM's sockets are held to (src/vm/netpolicy.ts). */
  egress?: string;
  /** With a network: the host's egress proxy on 127.0.0.1 (intercepted, refused and tunnelled connections). */
  proxyPort?: number;
  /** Whether a VMM the host cannot confine fully may run anyway. */
  confinement: Confinement["mode"];
  /** Guest TCP ports published on host addresses. */
  ports?: PortForward[];
  /** The image, unpacked (libkrun shares it read-only by virtio-fs). */
  rootfs: string;
  /**
   * The image as a read-only ext4 disk (QEMU, older libkrun); made lazily, only for backends that
   * use it. Undefined: no disk (a floor boot that needs none).
   */
  rootDisk: () => Promise<string | undefined>;
  /** Most processes the sandbox's commands may have at once (the guest's pids cgroup). */
  maxProcesses: number;
  /** Seconds to wait for the agent's hello. */
  bootTimeout: number;
  /** A name for logs and errors. */
  name: string;
  /**
   * @internal The data-path benchmark's baseline: a second virtio-serial port, named "msb.raw",
   * whose host end is Vm.rawPort, so the agent's path and the bare port are measured in one VM.
   * QEMU only.
   */
  rawPort?: boolean;
  /** Where the guest console's last 64 KiB go when the VM ends (the sandbox's log). */
  consoleKeep?: string;
  /** Disk images the agent mounts at guest paths (nosuid, nodev). QEMU only. */
  volumes?: { file: string; path: string; readOnly: boolean }[];
  /**
   * The VM does not die with this process (capability "outlive"): its helper runs on, and its
   * agent, monitor and helper wait on sockets in its runtime dir for the next host (Backend.adopt).
   */
  outlive?: boolean;
}

/** What another process needs to take over a running VM booted with VmConfig.outlive. */
export interface VmRecord {
  /** The runtime dir: its sockets, console log and the state files of the layers above. */
  dir: string;
  /** The VM's helper (msb-vmm): while it runs, the VM does; killing it ends the VM. */
  helper: ProcessStamp;
  /** The VMM's own pid (QEMU). */
  pid: number;
  confinement: Confinement;
  /** Whether its helper holds the network and takes a control connection (control.sock). */
  supervised: boolean;
}

/** Milliseconds from the start of boot() for each phase, and the guest's own timeline. */
export interface BootTimeline {
  /** Host-side preparation before the VMM was started (kernel, initramfs, disks). */
  hostPrepMs: number;
  /** The VMM process was spawned. */
  vmmStartMs: number;
  /** The agent's hello arrived. */
  agentReadyMs: number;
  /**
   * Guest milestones (agent_start, modules_loaded, root_mounted, ...) in ms by the guest's clock,
   * which starts once its kernel has set up timekeeping: the VMM's own start-up and the kernel's
   * first steps come before it (about agentReadyMs - vmmStartMs - the last milestone).
   */
  guest: { name: string; ms: number }[];
  /** A cold boot's kernel share: its start to the agent's, by the guest's clock. Undefined for a VM restored from a saved state. */
  kernelMs?: number;
  /** How a memory snapshot was used: restored from, made for this sandbox, or replaced and why. */
  snapshot?: SnapshotOutcome;
}

/**
 * Guest RAM: anonymous, or a file mapped shared (a snapshot template being made: its pages are the
 * snapshot) or private (a clone of a template: pages shared with every clone until written).
 */
export type GuestRam = { file: string; share: boolean } | undefined;

/** A process a saved VM keeps running for its next host: its protocol session and guest pid. */
export interface KeptSession {
  session: number;
  pid: number;
}

export interface Vm {
  readonly agent: AgentClient;
  /** The VMM as configured, e.g. "qemu (tcg)" or "krun". */
  readonly backend: string;
  /** Process id of the VMM (QEMU, not its supervisor). */
  readonly pid: number;
  readonly timeline: BootTimeline;
  /** The guest console log, kept while the VM runs and after a failure. */
  readonly consoleLog: string;
  /** Resolves when the VMM process ended. */
  readonly exited: Promise<void>;
  /** Graceful: agent shutdown, then a bounded wait, then kill. Idempotent. */
  stop(): Promise<void>;
  /** Kills the VMM at once. */
  kill(): void;
  /**
   * Pauses the VM (the agent quiet, the vCPUs stopped) and writes its device state, and its RAM
   * unless that lives in a shared file, to `file`. The VM stays paused until proceed() or stop().
   * Undefined where the backend cannot save (libkrun).
   */
  save?(file: string): Promise<void>;
  /** Lets a VM paused by save() run on, as it was. */
  proceed?(): Promise<void>;
  /** @internal The host end of the "msb.raw" port, when VmConfig.rawPort asked for one. */
  readonly rawPort?: Duplex;
  /** Connections the network policy refused so far (VmConfig.egress). */
  readonly networkRefusals?: () => number;
  /** What confines the VMM, as applied. */
  readonly confinement: Confinement;
  /**
   * Replaces the network rules (VmConfig.egress) for new connections and shuts the VMM's open
   * TCP connections the new rules refuse; resolves once applied, with how many were shut.
   * Undefined where the backend cannot (capability "egress-policy").
   */
  setPolicy?(rules: string): Promise<{ closed: number }>;
  /** Connections the VMM's supervisor handed to the egress proxy (VmConfig.proxyPort), as they happen. */
  onRedirect?(listener: (r: Redirect) => void): void;
  /** A VM booted with VmConfig.outlive: what Backend.adopt takes it back by. */
  readonly record?: VmRecord;
  /**
   * From now on the VM outlives this process (VmConfig.outlive): its agent holds its processes
   * when this host goes, and its runtime dir is its helper's. Called once the host has recorded it
   * somewhere a next host finds it: a VM whose host dies before that ends with it.
   */
  hold?(): void;
  /**
   * Lets go of a VM booted with VmConfig.outlive: this process's connections to it close and it
   * runs on, its processes held for the next host (Backend.adopt). `exited` then resolves.
   */
  detach?(): void;
}

/** A TCP connection the supervisor connected to the egress proxy in place of its destination. */
export interface Redirect {
  /** Its source port, as the proxy sees it. */
  localPort: number;
  /** The destination the guest asked for. */
  address: string;
  port: number;
  kind: "intercept" | "refused" | "tunnel";
  /** The refusing rule (kind "refused"). */
  rule: string;
  /** DNS names the supervisor saw resolve to `address`, newest first. */
  names: string[];
}

export interface Backend {
  /** "qemu" or "krun". */
  readonly name: string;
  readonly capabilities: ReadonlySet<Capability>;
  /** The guest's architecture. */
  readonly arch: GuestArch;
  /** The VMM as it will run, e.g. "qemu (tcg)". */
  describe(): string;
  /**
   * Throws what this backend lacks to boot anything (the VM helper, the guest agent, the kernel),
   * before a caller spends time on an image. Cheap once it has passed.
   */
  check(): Promise<void>;
  /** Boots `config` cold; with `ram` (capability "snapshot"), guest RAM lives in that file. */
  boot(config: VmConfig, ram?: GuestRam): Promise<Vm>;
  /**
   * Starts a VM from a state save() wrote (capabilities "fork", "pause", "snapshot"): RAM from
   * `ram`, a template mapped privately, or from the state itself; the agent is told it is a copy.
   */
  restore?(config: VmConfig, saved: { state: string; ram?: string; resume: ResumeOptions }): Promise<Vm>;
  /**
   * Takes over the running VM `record` names, booted with VmConfig.outlive by another process
   * (capability "outlive"): its agent is told to carry on with the sessions in `keep`, the others
   * ending. Throws VmGoneError when the VM is no longer running.
   */
  adopt?(config: VmConfig, record: VmRecord, keep: readonly number[]): Promise<Vm>;
  /**
   * What a memory snapshot of `config` depends on beyond the image (kernel, initramfs, the
   * agent's boot config, the VMM and machine): a snapshot is made anew when any changes.
   */
  snapshotKey?(config: VmConfig): Promise<Record<string, string>>;
  /**
   * Boots the benchmark's floor: the same kernel, flags and devices as boot(), with a trivial init
   * that prints a marker. Milliseconds from the VMM's start to the marker. Undefined where the
   * backend has no such boot (libkrun runs its own init).
   */
  floor?(config: VmConfig): Promise<number>;
}

/** A VMM process that was just started, for finishBoot(). */
export interface StartedVmm {
  /** The VMM as configured, e.g. "qemu (tcg)", and what to call it in messages ("QEMU"). */
  label: string;
  vmm: string;
  config: VmConfig;
  child: ChildProcess;
  /** The VM's runtime dir (removed when the VM is gone) and the guest console log in it. */
  dir: string;
  consoleLog: string;
  /** performance.now() when boot() began, and the phases so far. */
  t0: number;
  hostPrepMs: number;
  vmmStartMs: number;
  /** The agent's stream, once the VMM has connected it. */
  connect(): Promise<Duplex>;
  /** The handshake on that stream; default: wait for the guest's hello. */
  handshake?(stream: Duplex, timeoutSeconds: number): Promise<AgentClient>;
  /** What confines the VMM, and its pid when that is not the child's, known by the time its agent is ready. */
  confinement: Promise<{ confinement: Confinement; vmmPid?: number }>;
  /** What the running VM can do beyond the basics (save, proceed; an outliving VM's record and detach). */
  extend?(
    agent: AgentClient,
    vmm: { helper: number; pid: number; confinement: Confinement },
  ): Pick<Vm, "save" | "proceed" | "rawPort" | "networkRefusals" | "setPolicy" | "onRedirect" | "record" | "hold" | "detach">;
  /** More to release with the runtime dir (a listening socket). */
  release?(): void;
  /** The VMM's own report of a failure to start, settled once it has exited (libkrun's status). */
  report?: Promise<Error | undefined>;
  /** A more specific error than VmBootError, from what the VMM printed. */
  explain?(stderr: string): Error | undefined;
}

function tail(file: string, bytes: number): string {
  try {
    return readFileSync(file, "utf8").slice(-bytes);
  } catch {
    return "";
  }
}

/**
 * Waits for the agent's hello within the boot timeout, whatever the VMM does meanwhile, and returns
 * the running Vm. On any failure the VMM is killed, the console log is kept in the cache's logs/,
 * the runtime dir is removed, and a VmBootError (or the backend's more specific error) is thrown.
 */
export async function finishBoot(s: StartedVmm): Promise<Vm> {
  const { child, config } = s;
  let stderr = "";
  child.stderr?.setEncoding("utf8").on("data", (d: string) => {
    stderr = (stderr + d).slice(-4000);
  });
  let gone = false;
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      gone = true;
      resolve();
    });
    child.once("error", (err) => {
      stderr += String(err);
      gone = true;
      resolve();
    });
  });
  const release = () => {
    s.release?.();
    removeRuntimeDir(s.dir);
  };
  const deadline = s.t0 + config.bootTimeout * 1000;
  let timer: NodeJS.Timeout | undefined;
  let ready: Promise<AgentClient> | undefined;
  try {
    const died = exited.then(() => {
      throw new Error(`${s.vmm} exited before the agent was ready`);
    });
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no agent within ${config.bootTimeout} s`)), Math.max(0, deadline - performance.now()));
    });
    died.catch(() => {});
    ready = (async () => {
      const stream = await s.connect();
      if (gone) stream.destroy();
      child.once("exit", () => stream.destroy(new Error(`${s.vmm} exited`)));
      const timeout = Math.max(0.001, (deadline - performance.now()) / 1000);
      return s.handshake ? s.handshake(stream, timeout) : AgentClient.fromStream(stream, { timeout });
    })();
    const agent = await Promise.race([ready, died, late]);
    clearTimeout(timer);
    const guest = agent.hello.boot.map((e) => ({ name: e.name, ms: e.ns / 1e6 }));
    const agentStart = guest.find((e) => e.name === "agent_start")?.ms;
    const timeline: BootTimeline = {
      hostPrepMs: s.hostPrepMs,
      vmmStartMs: s.vmmStartMs,
      agentReadyMs: performance.now() - s.t0,
      guest,
      // A restored VM did not boot (its own handshake): its hello tells of the saved VM's boot.
      ...(s.handshake || agentStart === undefined ? {} : { kernelMs: agentStart }),
    };
    debug("%s ready on %s in %d ms", config.name, s.label, Math.round(timeline.agentReadyMs));
    const cleanup = () => {
      if (config.consoleKeep) keepTail(s.consoleLog, config.consoleKeep, 64 * 1024);
      release();
    };
    const { confinement, vmmPid } = await s.confinement;
    // The VMM's own pid (QEMU under its supervisor), for what is measured of it on the host.
    const pid = vmmPid ?? child.pid!;
    const extended = s.extend?.(agent, { helper: child.pid!, pid, confinement });
    // Let go of (an outliving VM), the VM runs on without this process: its `exited` resolves.
    let letGo!: () => void;
    const detached = new Promise<void>((resolve) => (letGo = resolve));
    const vm = runningVm({
      agent,
      backend: s.label,
      pid,
      kill: () => void child.kill("SIGKILL"),
      running: () => child.exitCode === null && child.signalCode === null,
      exited: Promise.race([exited, detached]),
      timeline,
      consoleLog: s.consoleLog,
      cleanup,
    });
    return {
      ...vm,
      confinement,
      ...extended,
      ...(extended?.detach
        ? {
            detach: () => {
              extended.detach!();
              child.unref();
              for (const io of child.stdio) (io as { unref?: () => void } | null)?.unref?.();
              letGo();
            },
          }
        : {}),
    };
  } catch (cause) {
    clearTimeout(timer);
    ready?.then(
      (agent) => agent.close(),
      () => {},
    ); // a hello that comes after the race was lost
    // A VMM that is failing by itself gets a moment to say why and exit.
    await Promise.race([exited, new Promise((r) => setTimeout(r, 500))]);
    child.kill("SIGKILL");
    await exited;
    let kept: string | undefined;
    try {
      // The console log outlives the failed VM so the error can point at it. Copied, not renamed:
      // the runtime dir and the cache may be on different filesystems.
      if (existsSync(s.consoleLog)) {
        const logs = path.join(cacheDir(), "logs");
        mkdirSync(logs, { recursive: true });
        kept = path.join(logs, `${config.name}.console.log`);
        copyFileSync(s.consoleLog, kept);
      }
    } finally {
      release();
    }
    const specific = (await s.report) ?? s.explain?.(stderr.trim());
    if (specific) throw specific;
    const details = [stderr.trim() && `${s.vmm} said: ${stderr.trim()}`, kept && `guest console (${kept}) ends with:\n${tail(kept, 1500)}`];
    throw new VmBootError(`sandbox ${config.name} did not boot on ${s.label}: ${(cause as Error).message}\n${details.filter(Boolean).join("\n")}`, kept, {
      cause,
    });
  }
}

/** Copies the last `bytes` of `from` to `to` (best effort: a log, not a result). */
export function keepTail(from: string, to: string, bytes: number): void {
  try {
    const size = statSync(from).size;
    const fd = openSync(from, "r");
    try {
      const buf = Buffer.alloc(Math.min(size, bytes));
      readSync(fd, buf, 0, buf.length, size - buf.length);
      writeFileSync(to, buf, { mode: 0o600 });
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    debug("keeping the console of %s: %s", from, (err as Error).message);
  }
}

/**
 * The Vm of a VMM process with a connected agent (its child, or one adopted from another
 * process). stop(): the agent shuts the guest down (there is no graceful stop from outside with
 * libkrun on Linux, and QEMU's would race the agent), a bounded wait for the VMM to exit, kill
 * after it, then `cleanup`.
 */
export function runningVm(parts: {
  agent: AgentClient;
  backend: string;
  pid: number;
  kill: () => void;
  running: () => boolean;
  exited: Promise<void>;
  timeline: BootTimeline;
  consoleLog: string;
  cleanup: () => void;
}): Omit<Vm, "confinement"> {
  const { agent, exited } = parts;
  let stopping: Promise<void> | undefined;
  return {
    agent,
    backend: parts.backend,
    pid: parts.pid,
    timeline: parts.timeline,
    consoleLog: parts.consoleLog,
    exited,
    kill: parts.kill,
    stop() {
      stopping ??= (async () => {
        if (parts.running()) {
          await agent.shutdown({ timeout: 5 }).catch(() => {});
          const timer = setTimeout(parts.kill, 5000);
          await exited;
          clearTimeout(timer);
        }
        agent.close();
        parts.cleanup();
      })();
      return stopping;
    },
  };
}
