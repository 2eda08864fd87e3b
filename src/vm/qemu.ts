// QemuBackend: boots QEMU with the agent as PID 1 — `-M microvm` for x86_64 guests, `-M virt` for
// aarch64 ones — under KVM or TCG as decided up front (src/vm/select.ts), and saves and restores
// VMs (snapshots, forks). The agent channel is a virtio-serial port backed by one end of a
// socketpair that only QEMU holds, the monitor (QMP) another; QEMU runs under msb-vmm so it dies
// with this process, confined: its own seccomp filter, no new privileges, no descriptors of ours
// but those, a jail holding only its own files (as root, with a uid of its own), and no host
// network when the VM has none.
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, closeSync, createWriteStream, openSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { debuglog } from "node:util";

import { AgentClient, type ResumeOptions } from "../agent-client/client.js";
import { BackendUnavailableError, ConfinementError, MicrosandboxError, NetworkError, QmpError, TimeoutError, VmGoneError } from "../errors.js";
import { Redirect_Kind } from "../gen/vmm_pb.js";
import { alive, stampOf } from "../liveness.js";
import { vmmHelperPath } from "../native.js";
import { besideRuntimeDir, makeRuntimeDir, removeRuntimeDir, setRuntimeDirOwner } from "../paths.js";
import {
  type Backend,
  type BootTimeline,
  type Capability,
  type Confinement,
  finishBoot,
  type GuestRam,
  keepTail,
  type NetworkMode,
  type Redirect,
  runningVm,
  type StartedVmm,
  type Vm,
  type VmConfig,
  type VmRecord,
} from "./backend.js";
import { type BootConfig, encodeBootConfig, FLOOR_MARKER, floorInitramfs, type GuestArch, guestArch, guestBoot, initramfsWithBoot } from "./guest.js";
import { Qmp } from "./qmp.js";
import { confinementAdvice, confinementOf, VmmControl } from "./vmm-control.js";

const debug = debuglog("microsandbox");
const PORT_NAME = "msb.agent";
// Where the agent's, the monitor's and the bare port's sockets, and a saved VM being loaded, sit
// in QEMU's descriptor table (msb-vmm keeps them open across exec).
const CHANNEL_FD = 3;
const MONITOR_FD = 4;
const RAW_FD = 5;
const STATE_FD = 6;
const CONTROL_FD = 7; // msb-vmm's control channel (src/vm/vmm-control.ts), never QEMU's
const SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
// The agent's port and the benchmark's bare one, after port 0, which QEMU keeps for a console. The
// device's default of 31 costs the guest ~20 ms of boot under TCG setting up queues for ports
// that never come.
const SERIAL_PORTS = 3;
// An outliving VM's sockets in its runtime dir: the agent's port, the monitor, its helper's control.
const AGENT_SOCKET = "agent.sock";
const MONITOR_SOCKET = "monitor.sock";
const CONTROL_SOCKET = "control.sock";

export type Accel = "kvm" | "tcg";

/** The QEMU binary for `arch` guests: MSB_QEMU for this host's own architecture, else qemu-system-ARCH on the PATH. */
export function qemuBinary(env: NodeJS.ProcessEnv = process.env, arch: GuestArch = guestArch()): string {
  return (arch === guestArch() && env.MSB_QEMU) || `qemu-system-${arch}`;
}

/** Host TSC frequency in kHz, for tsc_early_khz under TCG; undefined where the host does not say. */
function hostTscKhz(): number | undefined {
  try {
    return Number(readFileSync("/sys/devices/system/cpu/cpu0/tsc_freq_khz", "utf8").trim()) || undefined;
  } catch {
    try {
      const mhz = /cpu MHz\s*:\s*([\d.]+)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1];
      return mhz ? Math.round(Number(mhz) * 1000) : undefined;
    } catch {
      return undefined;
    }
  }
}

/** The machine QEMU emulates for a guest: `-M`, `-cpu`, the kernel's console, and what the kernel is told. */
interface Machine {
  machine: string;
  cpu: string;
  console: string;
  cmdline: string[];
}

/**
 * What QEMU boots each guest architecture on: microvm for x86_64 (virtio-mmio devices found
 * through ACPI), virt for aarch64 (through the device tree). Under KVM the host's CPU; under TCG
 * on virt an ARMv8.0 core, whose emulation is cheaper than `max`'s pointer authentication. An
 * emulated x86 guest needs more, each a cost of TCG that KVM does not have (measured with
 * initcall_debug, RIP sampling and strace: guest/kernel/README.md):
 * - `-cpu qemu64,+arat`: without an always-running APIC timer the kernel must assume the timer
 *   stops in deep idle, and with no broadcast timer on microvm it keeps a periodic tick for ever
 *   (100 wakeups a second of an idle VM).
 * - tsc_early_khz: the host's TSC frequency. Without it about half of the boots hang calibrating
 *   against the PIT; with it the guest needs no PIT, whose timer QEMU would otherwise run ~80
 *   times a second in an idle VM's main loop (pit=off).
 * - lapic_timer_khz (our kernel's patch): TCG's local APIC counts QEMU's nanoseconds, a 1 GHz
 *   timer, and has no TSC-deadline mode; untold, the kernel calibrates it by polling for 100 ms.
 * - noreplace-smp: on one vCPU the kernel rewrites every lock prefix, one text_poke each, and
 *   each poke flushes TCG's TLB (~45 ms).
 * - tsc=reliable: TCG's TSC is the host's, and the guest has no other clock to check it against;
 *   the watchdog that would try wakes an idle guest twice a second.
 */
function machineFor(arch: GuestArch, accel: Accel): Machine {
  if (arch === "aarch64") {
    return accel === "kvm"
      ? { machine: "virt,gic-version=host", cpu: "host", console: "ttyAMA0", cmdline: [] }
      : { machine: "virt", cpu: "cortex-a57", console: "ttyAMA0", cmdline: [] };
  }
  if (accel === "kvm") return { machine: "microvm,rtc=on", cpu: "host", console: "ttyS0", cmdline: [] };
  const khz = hostTscKhz();
  return {
    machine: khz ? "microvm,rtc=on,pit=off" : "microvm,rtc=on",
    cpu: "qemu64,+arat",
    console: "ttyS0",
    cmdline: [...(khz ? [`tsc_early_khz=${khz}`] : []), "lapic_timer_khz=1000000", "noreplace-smp", "tsc=reliable"],
  };
}

// The serial of the i-th volume's disk, by which the agent finds it.
const volumeSerial = (i: number) => `msbvol${i}`;

// QEMU option values are comma-separated: a comma inside one (a path) is written twice.
const value = (s: string) => s.replaceAll(",", ",,");

export interface QemuOptions {
  accel: Accel;
  /** The guest kernel. Default: MSB_KERNEL, else ours for the guest's architecture. */
  kernel?: string;
  /** The guest's architecture. Default: this host's (another one runs only under TCG). */
  arch?: GuestArch;
}

// Every VM QEMU runs can be saved, restored and copied, and holds its network to a policy from
// outside the guest.
const CAPABILITIES: ReadonlySet<Capability> = new Set(["snapshot", "fork", "pause", "volumes", "egress-policy", "ports", "jail", "outlive"]);
const qemuVersions = new Map<string, string>();

export class QemuBackend implements Backend {
  readonly name = "qemu";
  readonly capabilities = CAPABILITIES;

  constructor(private readonly opts: QemuOptions) {}

  get accel(): Accel {
    return this.opts.accel;
  }

  get arch(): GuestArch {
    return this.opts.arch ?? guestArch();
  }

  /** The machine, CPU and serial device QEMU emulates: a saved VM loads only into the same. */
  get machine(): string {
    const m = machineFor(this.arch, this.opts.accel);
    return `${m.machine} -cpu ${m.cpu} serial-ports=${SERIAL_PORTS}`;
  }

  describe(): string {
    return this.arch === guestArch() ? `qemu (${this.opts.accel})` : `qemu (${this.opts.accel}, ${this.arch})`;
  }

  async snapshotKey(config: VmConfig): Promise<Record<string, string>> {
    const boot = await this.guestBoot();
    const k = statSync(boot.kernel);
    const qemu = qemuBinary(process.env, this.arch);
    let version = qemuVersions.get(qemu);
    if (!version) {
      version = execFileSync(qemu, ["--version"], { encoding: "utf8" }).split("\n")[0]!;
      qemuVersions.set(qemu, version);
    }
    return {
      kernel: `${boot.kernel}:${k.size}:${k.mtimeMs}`,
      // The initramfs is named by its content (the agent and the modules).
      initramfs: path.basename(boot.initramfs),
      boot: createHash("sha256").update(this.bootConfig(config)).digest("hex"),
      accel: this.accel,
      machine: this.machine,
      qemu: `${qemu} ${version}`,
    };
  }

  private guestBoot() {
    return guestBoot({ arch: this.arch, ...(this.opts.kernel ? { kernel: this.opts.kernel } : {}) });
  }

  async check(): Promise<void> {
    vmmHelperPath();
    await this.guestBoot();
  }

  /**
   * How the agent boots `config` on QEMU: the channel is the port named PORT_NAME, the image the
   * first disk, and each volume the disk with the serial volumeSerial(i).
   */
  bootConfig(config: VmConfig): Uint8Array {
    const boot: BootConfig = {
      channel: { case: "virtioPort", value: PORT_NAME },
      image: { case: "disk", value: "/dev/vda" },
      network: config.network === "all",
      maxProcesses: config.maxProcesses,
      volumes: (config.volumes ?? []).map((v, i) => ({ serial: volumeSerial(i), path: v.path, readOnly: v.readOnly })),
    };
    return encodeBootConfig(boot);
  }

  /**
   * QEMU's arguments for `config`; the console goes to a file, or to stdout ("stdio"). With
   * `listen` (an outliving VM's runtime dir) the agent's port and the monitor listen on sockets
   * there, for whichever host comes next, instead of descriptors only this process holds.
   */
  args(config: VmConfig, boot: { kernel: string; initramfs: string }, disk: string | undefined, console: string, ram?: GuestRam, listen?: string): string[] {
    const socket = (id: string, fd: number) =>
      listen ? `socket,id=${id},path=${value(path.join(listen, `${id}.sock`))},server=on,wait=off` : `socket,id=${id},fd=${fd}`;
    const { accel } = this.opts;
    const m = machineFor(this.arch, accel);
    const append = [`console=${m.console}`, "quiet", "panic=-1", ...m.cmdline];
    const args = [
      "-M",
      `${m.machine},memory-backend=mem`,
      "-accel",
      accel,
      "-cpu",
      m.cpu,
      "-m",
      String(config.memory),
      // Every VM names its RAM "mem", so that any VM's saved state loads into any other.
      "-object",
      ram
        ? `memory-backend-file,id=mem,size=${config.memory}M,mem-path=${value(ram.file)},share=${ram.share ? "on" : "off"}`
        : `memory-backend-ram,id=mem,size=${config.memory}M`,
      "-smp",
      String(config.cpus),
      "-nodefaults",
      "-no-user-config",
      "-nographic",
      "-no-reboot",
      "-kernel",
      boot.kernel,
      "-initrd",
      boot.initramfs,
      "-append",
      append.join(" "),
      "-chardev",
      console === "stdio" ? "stdio,id=console" : `file,id=console,path=${value(console)}`,
      "-serial",
      "chardev:console",
      "-device",
      `virtio-serial-device,max_ports=${SERIAL_PORTS}`,
      // The host's randomness: without it the guest's getrandom() blocks until the kernel has
      // gathered its own entropy (2-3 s of jitter under TCG), and Python's first import waits.
      "-object",
      "rng-random,id=rng,filename=/dev/urandom",
      "-device",
      "virtio-rng-device,rng=rng",
      "-chardev",
      socket("agent", CHANNEL_FD),
      "-device",
      `virtserialport,chardev=agent,name=${PORT_NAME}`,
      "-chardev",
      socket("monitor", MONITOR_FD),
      "-mon",
      "chardev=monitor,mode=control",
    ];
    // QEMU's own seccomp filter: no obsolete system calls, no privilege changes, no spawning, no
    // scheduler or affinity changes (saves go through a socket of ours, not a spawned writer).
    if (process.platform === "linux") args.push("-sandbox", SECCOMP);
    if (config.rawPort) args.push("-chardev", `socket,id=raw,fd=${RAW_FD}`, "-device", "virtserialport,chardev=raw,name=msb.raw");
    if (disk) args.push("-drive", `id=root,file=${value(disk)},format=raw,if=none,readonly=on`, "-device", "virtio-blk-device,drive=root");
    // Volumes: found by the agent by serial, not by order.
    (config.volumes ?? []).forEach((v, i) => {
      args.push(
        "-drive",
        `id=vol${i},file=${value(v.file)},format=raw,if=none${v.readOnly ? ",readonly=on" : ""}`,
        "-device",
        `virtio-blk-device,drive=vol${i},serial=${volumeSerial(i)}`,
      );
    });
    if (config.network === "all") {
      const forwards = (config.ports ?? []).map((p) => `,hostfwd=tcp:${p.address}:${p.host}-:${p.guest}`).join("");
      args.push("-netdev", `user,id=net0${forwards}`, "-device", "virtio-net-device,netdev=net0");
    }
    return args;
  }

  // Spawns QEMU under msb-vmm, jailed (see jailArgs), with a connected pair of unix sockets as
  // its agent channel (spawn's "pipe" is a socketpair on Unix, and QEMU's socket chardev takes
  // either end), another as its monitor, with `raw` a third for the benchmark's bare port, and
  // `state` (a saved VM to load) at STATE_FD. Only QEMU holds the other ends: no listening
  // socket or path exists for anyone else.
  private spawnQemu(
    args: string[],
    stdout: "ignore" | "pipe",
    opts: {
      network: NetworkMode;
      egress?: string;
      proxyPort?: number;
      confinement: Confinement["mode"];
      raw?: boolean;
      state?: number;
      jail: Jail;
      outlive?: boolean;
    },
  ) {
    // An outliving VM's agent and monitor listen in its runtime dir (args' `listen`).
    const own = opts.outlive ? "ignore" : "pipe";
    const stdio: ("ignore" | "pipe" | number)[] = ["ignore", stdout, "pipe", own, own, opts.raw ? "pipe" : "ignore"];
    stdio[STATE_FD] = opts.state ?? "ignore";
    const keep = stdio.flatMap((fd, i) => (i > 2 && fd !== "ignore" ? ["--keep", String(i)] : []));
    stdio[CONTROL_FD] = "pipe";
    const network =
      opts.network === "none"
        ? ["--no-network"]
        : ["--net-policy", opts.egress ?? "", ...(opts.proxyPort !== undefined ? ["--proxy", String(opts.proxyPort)] : [])];
    const qemu = qemuBinary(process.env, this.arch);
    const confine = ["--control", String(CONTROL_FD), "--confinement", opts.confinement];
    // An outliving VM's helper runs on without this process, in a session of its own (no signal
    // of this process's terminal reaches it), and takes the next host's control connection.
    // Its control socket sits beside the runtime dir, out of QEMU's jail: a VMM the guest took over
    // must not become its own supervisor's host.
    const outlive = opts.outlive
      ? ["--outlive", ...(opts.network === "none" ? [] : ["--control-listen", besideRuntimeDir(opts.jail.dir, CONTROL_SOCKET)])]
      : [];
    const argv = ["exec", String(process.pid), ...keep, ...confine, ...outlive, ...jailArgs(opts.jail, qemu), ...network, "--", qemu, ...args];
    debug("starting %s", argv.join(" "));
    const child = spawn(vmmHelperPath(), argv, { stdio, detached: !!opts.outlive });
    const socket = (fd: number) => child.stdio[fd] as Socket;
    const control = new VmmControl(socket(CONTROL_FD));
    const gone = () => child.exitCode !== null || child.signalCode !== null;
    const listening = (name: string) => () => connectWhenListening(path.join(opts.jail.dir, name), { gone });
    return {
      child,
      channel: opts.outlive ? listening(AGENT_SOCKET) : async () => socket(CHANNEL_FD),
      monitor: opts.outlive ? listening(MONITOR_SOCKET) : async () => socket(MONITOR_FD),
      rawPort: opts.raw ? socket(RAW_FD) : undefined,
      control,
    };
  }

  // Everything a boot and a restore share: host prep, the spawn, and the boot ending, with the
  // monitor connected once the agent is (and closed with the VM).
  private async start(
    config: VmConfig,
    opts: { ram?: GuestRam; incoming?: { state: string } },
    ready: (vmm: { qmp: Promise<Qmp>; channel: () => Promise<Socket> }) => Pick<StartedVmm, "connect" | "handshake">,
  ): Promise<Vm> {
    const t0 = performance.now();
    const { kernel, initramfs: agentInitramfs } = await this.guestBoot();
    const disk = await config.rootDisk();
    const initramfs = initramfsWithBoot(agentInitramfs, this.bootConfig(config));
    const dir = makeRuntimeDir();
    const hostPrepMs = performance.now() - t0;
    const consoleLog = path.join(dir, "console.log");
    const args = this.args(config, { kernel, initramfs }, disk, consoleLog, opts.ram, config.outlive ? dir : undefined);
    if (opts.incoming) args.push("-S", "-incoming", "defer");
    let started: ReturnType<QemuBackend["spawnQemu"]>;
    let state: number | undefined;
    try {
      if (opts.incoming) state = openSync(opts.incoming.state, "r");
      const jail = { dir, files: [kernel, initramfs, ...(disk ? [disk] : [])], ram: opts.ram, volumes: config.volumes };
      started = this.spawnQemu(args, "ignore", {
        network: config.network,
        ...(config.egress !== undefined ? { egress: config.egress } : {}),
        ...(config.proxyPort !== undefined ? { proxyPort: config.proxyPort } : {}),
        confinement: config.confinement,
        raw: config.rawPort,
        state,
        jail,
        outlive: !!config.outlive,
      });
    } catch (err) {
      rmSync(dir, { recursive: true, force: true });
      if (err instanceof MicrosandboxError) throw err;
      throw new MicrosandboxError(`could not start QEMU for sandbox ${config.name}: ${(err as Error).message}`, { cause: err });
    } finally {
      if (state !== undefined) closeSync(state);
    }
    const { child, channel, monitor, rawPort, control } = started;
    let monitorStream: Socket | undefined;
    const qmp = monitor().then((m) => {
      monitorStream = m;
      return Qmp.connect(m);
    });
    qmp.catch(() => {}); // a QEMU that dies early is reported by the boot ending
    const sharedRam = !!opts.ram?.share;
    return finishBoot({
      label: this.describe(),
      vmm: "QEMU",
      config,
      child,
      dir,
      consoleLog,
      t0,
      hostPrepMs,
      vmmStartMs: performance.now() - t0,
      ...ready({ qmp, channel }),
      release: () => {
        rawPort?.destroy();
        void qmp.then(
          (q) => q.close(),
          () => monitorStream?.destroy(),
        );
      },
      confinement: control.confinement.then((c) => ({ confinement: confinementOf(c, config.confinement), vmmPid: c.vmmPid || undefined })),
      // A helper that exits because it could not confine QEMU as required said why first.
      report: control.confinement.then(
        (c) => (config.confinement === "required" && c.missing.length ? confinementError(config.name, c.missing) : undefined),
        () => undefined,
      ),
      extend: (agent, vmm) => {
        const held = { on: false };
        const running = this.controls(config, dir, agent, qmp, control, sharedRam, held);
        if (!config.outlive) return { ...running, ...(rawPort ? { rawPort } : {}) };
        // The helper listens for a next host only where it supervises the network.
        const record: VmRecord = {
          dir,
          helper: stampOf(vmm.helper),
          pid: vmm.pid,
          confinement: vmm.confinement,
          supervised: vmm.confinement.network === "supervisor",
        };
        return {
          ...running,
          record,
          hold: () => {
            if (held.on) return;
            held.on = true;
            agent.linger(true);
            // From now on the runtime dir is the helper's: it goes when the VM does, not with us.
            setRuntimeDirOwner(dir, record.helper);
          },
          detach: () => {
            agent.close();
            void qmp.then(
              (q) => q.close(),
              () => monitorStream?.destroy(),
            );
            control.close();
          },
        };
      },
      explain: (stderr) =>
        // A QEMU built without user-mode networking (libslirp) refuses "-netdev user".
        config.network === "all" && /netdev|network backend/i.test(stderr)
          ? new NetworkError(
              `sandbox ${config.name} cannot have network "all": this QEMU has no user-mode networking (${stderr}). ` +
                'Install a QEMU built with libslirp, or use network: "none".',
            )
          : /host forwarding rule/i.test(stderr)
            ? new NetworkError(`sandbox ${config.name} cannot publish its ports (${stderr}): is a host port taken? ${portList(config)}`)
            : /sandbox|seccomp/i.test(stderr)
              ? new BackendUnavailableError(
                  `QEMU cannot confine sandbox ${config.name} with its seccomp filter (${stderr}): install a QEMU built with libseccomp ` +
                    "(Debian's qemu-system-x86 is)",
                )
              : undefined,
    });
  }

  // What a running QEMU VM does through its monitor and its helper's control channel: save and
  // go on, hold its network to new rules, and hand redirected connections to the egress proxy.
  private controls(
    config: VmConfig,
    dir: string,
    agent: AgentClient,
    qmp: Promise<Qmp>,
    control: VmmControl | undefined,
    sharedRam: boolean,
    held: { on: boolean },
  ) {
    const refusals = () => control?.refusals() ?? 0;
    return {
      ...(config.egress !== undefined ? { networkRefusals: refusals } : {}),
      ...(control
        ? {
            setPolicy: async (rules: string) => {
              const applied = await control.setPolicy(rules);
              if (applied.error) throw new NetworkError(`sandbox ${config.name}'s network policy was not changed: ${applied.error}`);
              return { closed: applied.closed };
            },
            onRedirect: (listener: (r: Redirect) => void) =>
              control.on("redirect", (r) =>
                listener({ localPort: r.localPort, address: r.address, port: r.port, kind: REDIRECT_KINDS[r.kind], rule: r.rule, names: [...r.names] }),
              ),
          }
        : {}),
      save: async (file: string) => {
        const q = await qmp;
        // A saved guest must not find its next host's port hung up and hold on for another.
        if (held.on) agent.linger(false);
        await agent.suspend();
        await q.execute("stop");
        // RAM in a shared file is the snapshot's already: only device state goes in the stream.
        await q.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: sharedRam }] });
        // QEMU throttles migration to 128 MiB/s by default, meant for a network; this is a file.
        await q.execute("migrate-set-parameters", { "max-bandwidth": Number.MAX_SAFE_INTEGER });
        // Complete once it has its name.
        const part = `${file}.part`;
        await migrateInto(q, path.join(dir, "migration.sock"), part);
        renameSync(part, file);
      },
      proceed: async () => {
        await (await qmp).execute("cont");
        await agent.resume({ generation: agent.hello.generation });
        if (held.on) agent.linger(true);
      },
    };
  }

  /**
   * Takes over the VM `record` names, booted with VmConfig.outlive by a process that is gone (or
   * let go of it): its agent, monitor and helper are waiting on sockets in its runtime dir.
   */
  async adopt(config: VmConfig, record: VmRecord, keep: readonly number[]): Promise<Vm> {
    const t0 = performance.now();
    const { dir } = record;
    if (!alive(record.helper)) throw new VmGoneError(`the VM of sandbox ${config.name} is no longer running (its helper, pid ${record.helper.pid}, is gone)`);
    const gone = () => !alive(record.helper);
    const opened: Socket[] = [];
    const openAt = async (file: string) => {
      const sock = await connectWhenListening(file, { gone });
      opened.push(sock);
      return sock;
    };
    const open = (name: string) => openAt(path.join(dir, name));
    try {
      const agent = await lingeringAgent(() => open(AGENT_SOCKET), keep, config.bootTimeout);
      agent.linger(true);
      const monitor = await open(MONITOR_SOCKET);
      const qmp = Qmp.connect(monitor);
      qmp.catch(() => {});
      await qmp;
      const control = record.supervised ? new VmmControl(await openAt(besideRuntimeDir(dir, CONTROL_SOCKET)), { adopted: true }) : undefined;
      // Not our child: its end is seen by its stamp, checked when the agent's channel closes and
      // every second meanwhile.
      let ended!: () => void;
      const exited = new Promise<void>((resolve) => (ended = resolve));
      const check = () => {
        if (gone()) {
          clearInterval(poll);
          ended();
        }
      };
      const poll = setInterval(check, 1000);
      poll.unref();
      let letGo!: () => void;
      const detached = new Promise<void>((resolve) => (letGo = resolve));
      const timeline: BootTimeline = { hostPrepMs: 0, vmmStartMs: 0, agentReadyMs: performance.now() - t0, guest: [] };
      const release = () => {
        clearInterval(poll);
        void qmp.then(
          (q) => q.close(),
          () => monitor.destroy(),
        );
        control?.close();
      };
      const vm = runningVm({
        agent,
        backend: this.describe(),
        pid: record.pid,
        kill: () => {
          if (!gone()) process.kill(record.helper.pid, "SIGKILL");
        },
        running: () => !gone(),
        exited: Promise.race([exited, detached]),
        timeline,
        consoleLog: path.join(dir, "console.log"),
        cleanup: () => {
          release();
          if (config.consoleKeep) keepTail(path.join(dir, "console.log"), config.consoleKeep, 64 * 1024);
          removeRuntimeDir(dir);
        },
      });
      return {
        ...vm,
        confinement: record.confinement,
        ...this.controls(config, dir, agent, qmp, control, false, { on: true }),
        record,
        detach: () => {
          agent.close();
          release();
          letGo();
        },
      };
    } catch (err) {
      for (const sock of opened) sock.destroy();
      throw err;
    }
  }

  /** Boots `config` cold; with `ram`, guest RAM lives in that file. */
  boot(config: VmConfig, ram?: GuestRam): Promise<Vm> {
    // The guest speaks first: bytes sent before it opens its port would be dropped.
    return this.start(config, { ram }, ({ channel }) => ({ connect: channel }));
  }

  /**
   * Starts a VM from a saved state (`state`, from save()) instead of booting: RAM from `ram`, a
   * template mapped privately, or from the state itself. The agent is told it is a copy (new
   * generation, randomness, clock, identity) before anything else runs in it.
   */
  restore(config: VmConfig, saved: { state: string; ram?: string; resume: ResumeOptions }): Promise<Vm> {
    const ram = saved.ram ? { file: saved.ram, share: false } : undefined;
    return this.start(config, { ram, incoming: { state: saved.state } }, ({ qmp, channel }) => ({
      connect: async () => {
        // Connected before the guest runs: a guest that found no host would take it as gone.
        const stream = await channel();
        const q = await qmp;
        await q.execute("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: !!ram }] });
        await q.execute("migrate-incoming", { uri: `fd:${STATE_FD}` });
        await migration(q);
        await q.execute("cont");
        return stream;
      },
      // The restored guest is running already and waits for the host: the host speaks first.
      handshake: (stream, timeout) => AgentClient.fromRestoredStream(stream, saved.resume, { timeout }),
    }));
  }

  async floor(config: VmConfig): Promise<number> {
    const { kernel } = await this.guestBoot();
    const initramfs = floorInitramfs(this.arch);
    const disk = await config.rootDisk();
    const dir = makeRuntimeDir();
    const jail = { dir, files: [kernel, initramfs, ...(disk ? [disk] : [])] };
    const t0 = performance.now();
    const { child, rawPort } = this.spawnQemu(this.args(config, { kernel, initramfs }, disk, "stdio"), "pipe", {
      network: config.network,
      ...(config.egress !== undefined ? { egress: config.egress } : {}),
      confinement: config.confinement,
      raw: config.rawPort,
      jail,
    });
    let seen = "";
    let at: number | undefined;
    child.stdout!.on("data", (d: Buffer) => {
      seen = (seen + d.toString()).slice(-4000);
      if (at === undefined && seen.includes(FLOOR_MARKER)) at = performance.now() - t0;
    });
    let stderr = "";
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr = (stderr + d).slice(-2000)));
    const timer = setTimeout(() => child.kill("SIGKILL"), config.bootTimeout * 1000);
    await new Promise((resolve) => child.once("exit", resolve));
    clearTimeout(timer);
    for (const fd of [CHANNEL_FD, MONITOR_FD]) (child.stdio[fd] as Socket | null)?.destroy();
    rawPort?.destroy();
    rmSync(dir, { recursive: true, force: true });
    if (at === undefined) throw new MicrosandboxError(`the floor VM (${this.describe()}) printed no marker within ${config.bootTimeout} s:\n${seen}${stderr}`);
    return at;
  }
}

/** What a QEMU's jail holds: its runtime dir, the files it reads, and guest RAM's file if any. */
interface Jail {
  dir: string;
  files: string[];
  ram?: GuestRam;
  volumes?: VmConfig["volumes"];
}

// msb-vmm's jail options: the runtime dir (writable), the files QEMU reads by path (read-only),
// a QEMU installed outside the system's programs (which are always there), and guest RAM's file
// and volumes opened by msb-vmm itself: RAM read-write for a template being made, read-only for
// a clone, whose private mapping must never reach the template another clone maps too.
function jailArgs(jail: Jail, qemu: string): string[] {
  const files = [...jail.files];
  if (path.isAbsolute(qemu) && !qemu.startsWith("/usr/")) {
    // A QEMU installed elsewhere brings its prefix (PREFIX/bin/qemu: libraries and firmware
    // beside it); a lone executable only its directory.
    const dir = path.dirname(qemu);
    files.push(path.basename(dir) === "bin" ? path.dirname(dir) : dir);
  }
  const ro = files.flatMap((f) => ["--ro", path.resolve(f)]);
  const ram = jail.ram ? ["--open", `${path.resolve(jail.ram.file)}:${jail.ram.share ? "w" : "r"}`] : [];
  // Volumes too are opened by msb-vmm: their files belong to the Node process's user.
  const volumes = (jail.volumes ?? []).flatMap((v) => ["--open", `${path.resolve(v.file)}:${v.readOnly ? "r" : "w"}`]);
  return ["--jail", jail.dir, ...ro, ...ram, ...volumes];
}

// Streams the outgoing migration into `file`, private to this user (it holds guest memory),
// through a unix socket in the VM's runtime dir that QEMU connects to: its seccomp filter lets
// it spawn no writer of its own.
async function migrateInto(q: Qmp, socketPath: string, file: string): Promise<void> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, resolve);
  });
  // QEMU runs as the VM's own uid: the socket is open to it, and to nobody else (the 0700
  // runtime dir is that uid's).
  chmodSync(socketPath, 0o666);
  try {
    const received = new Promise<void>((resolve, reject) => {
      server.once("connection", (sock) => {
        server.close();
        pipeline(sock, createWriteStream(file, { mode: 0o600 })).then(resolve, reject);
      });
    });
    received.catch(() => {}); // a migration that fails before connecting is reported below
    await q.execute("migrate", { uri: `unix:${socketPath}` });
    await migration(q);
    await received;
  } finally {
    server.close();
    rmSync(socketPath, { force: true });
  }
}

const portList = (config: VmConfig) => `asked for ${(config.ports ?? []).map((p) => `${p.address}:${p.host} -> ${p.guest}`).join(", ")}`;

// Waits for the migration under way (outgoing or incoming) to end; throws if it failed.
async function migration(q: Qmp): Promise<void> {
  for (;;) {
    const info = (await q.execute("query-migrate")) as { status?: string; "error-desc"?: string };
    if (info.status === "completed") return;
    if (info.status === "failed" || info.status === "cancelled") throw new QmpError(`migration ${info.status}: ${info["error-desc"] ?? "no reason given"}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

// How long a VM's socket may take to appear: QEMU makes it at its start, before any guest work.
const LISTEN_WAIT_MS = 10_000;
// How long a new host of a lingering VM waits for the agent's Hello before it hangs up and comes
// again, and how long it stays away in between.
const HELLO_WAIT_S = 2;
const REDIAL_MS = 250;

/**
 * The agent of a lingering VM, taken up on a connection `dial` makes: it says Hello to each new
 * host it sees, then holds everything until the Resume that keeps `keep`. A host that comes right
 * after the last one ended can find the agent not yet aware that one went (the port closed and
 * opened again between two of its looks): it hears no Hello, so it hangs up, which the agent
 * cannot miss, and comes again, until `timeoutS` has passed.
 */
async function lingeringAgent(dial: () => Promise<Socket>, keep: readonly number[], timeoutS: number): Promise<AgentClient> {
  const deadline = performance.now() + timeoutS * 1000;
  for (;;) {
    const left = Math.max(1, Math.ceil((deadline - performance.now()) / 1000));
    try {
      return await AgentClient.fromLingeringStream(await dial(), keep, { timeout: Math.min(HELLO_WAIT_S, left) });
    } catch (err) {
      if (!(err instanceof TimeoutError) || performance.now() >= deadline) throw err;
      await new Promise((r) => setTimeout(r, REDIAL_MS));
    }
  }
}

/**
 * Connects to the unix socket `file` that QEMU or msb-vmm listens on, retrying while it is not
 * there yet (the VMM is starting) and the process behind it is not `gone`.
 */
async function connectWhenListening(file: string, opts: { gone: () => boolean }): Promise<Socket> {
  const deadline = performance.now() + LISTEN_WAIT_MS;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const sock = connect(file);
        sock.once("connect", () => {
          sock.off("error", reject);
          resolve(sock);
        });
        sock.once("error", reject);
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== "ENOENT" && code !== "ECONNREFUSED") || opts.gone() || performance.now() > deadline) {
        throw new VmGoneError(`cannot connect to ${file}: ${(err as Error).message}`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

const REDIRECT_KINDS = { [Redirect_Kind.INTERCEPT]: "intercept", [Redirect_Kind.REFUSED]: "refused", [Redirect_Kind.TUNNEL]: "tunnel" } as const;

function confinementError(name: string, missing: readonly string[]): ConfinementError {
  return new ConfinementError(
    `sandbox ${name} cannot be confined as required on this host (${missing.join("; ")}): ${confinementAdvice(missing).join("; ")}`,
    missing,
  );
}
