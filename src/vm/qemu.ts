// QemuBackend: boots `qemu-system-x86_64 -M microvm` with the agent as PID 1. KVM when /dev/kvm
// opens read-write, else TCG (with the host TSC frequency on the command line: without it about
// half of TCG boots hang calibrating against the PIT). The agent channel is a virtio-serial port
// backed by a unix socket; QEMU runs under msb-vmm so it dies with this process.
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { once } from "node:events";
import { createConnection, type Socket } from "node:net";
import path from "node:path";
import { debuglog } from "node:util";

import { AgentClient } from "../agent-client/client.js";
import { InvalidArgumentError, NetworkError, VmBootError } from "../errors.js";
import { probe } from "../native.js";
import { cacheDir, makeRuntimeDir } from "../paths.js";
import { type Backend, type BootTimeline, runningVm, type Vm, type VmConfig } from "./backend.js";
import { guestBoot } from "./guest.js";
import { vmmHelperPath } from "./helper.js";

const debug = debuglog("microsandbox");
const PORT_NAME = "msb.agent";


/** Host TSC frequency in kHz, for tsc_early_khz under TCG. */
function hostTscKhz(): number | undefined {
  try {
    return Number(readFileSync("/sys/devices/system/cpu/cpu0/tsc_freq_khz", "utf8").trim()) || undefined;
  } catch {
    const mhz = /cpu MHz\s*:\s*([\d.]+)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1];
    return mhz ? Math.round(Number(mhz) * 1000) : undefined;
  }
}

function tail(file: string, bytes = 2000): string {
  try {
    const text = readFileSync(file, "utf8");
    return text.slice(-bytes);
  } catch {
    return "";
  }
}

// QEMU binds the socket a moment before it listens: refused connections are retried while it lives.
async function connectSocket(path: string, dead: () => boolean, deadline: number): Promise<Socket> {
  for (;;) {
    const socket = createConnection(path);
    try {
      await once(socket, "connect");
      return socket;
    } catch (err) {
      socket.destroy();
      if ((err as NodeJS.ErrnoException).code !== "ECONNREFUSED" || dead() || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

export interface QemuOptions {
  /** The QEMU binary. Default: MSB_QEMU or qemu-system-x86_64. */
  qemu?: string;
  /** Force TCG even where KVM works (benchmarks). */
  accel?: "kvm" | "tcg";
  /** Uncompressed guest kernel (vmlinux). */
  kernel?: string;
}

// A /dev/kvm that opens is not always one that runs guests (nested virtualization can refuse the
// host CPU's MSRs): when QEMU dies at once under KVM, this process uses TCG from then on.
let kvmBroken: string | undefined;

export class QemuBackend implements Backend {
  readonly name = "qemu";
  private readonly requested: "kvm" | "tcg" | undefined;

  constructor(private readonly opts: QemuOptions = {}) {
    const env = process.env.MSB_QEMU_ACCEL;
    if (env !== undefined && env !== "kvm" && env !== "tcg") {
      throw new InvalidArgumentError(`MSB_QEMU_ACCEL=${JSON.stringify(env)} is invalid: use "kvm" or "tcg"`);
    }
    this.requested = opts.accel ?? (env as "kvm" | "tcg" | undefined);
  }

  /** The acceleration the next boot uses. */
  get accel(): "kvm" | "tcg" {
    if (this.requested) return this.requested;
    return !kvmBroken && probe().kvm.ok ? "kvm" : "tcg";
  }

  /** Why that acceleration (visible on sandboxes and in debug output). */
  get reason(): string {
    if (this.requested) return `accel ${this.requested} requested`;
    if (kvmBroken) return `KVM failed to start a guest (${kvmBroken}); using TCG`;
    const kvm = probe().kvm;
    return kvm.ok ? "/dev/kvm is usable" : `no KVM: ${kvm.detail}`;
  }

  args(accel: "kvm" | "tcg", config: VmConfig, boot: { kernel: string; initramfs: string }, disk: string, socket: string, consoleLog: string): string[] {
    const append = ["console=ttyS0", "quiet", "panic=-1", `msb.port=${PORT_NAME}`, "msb.root=/dev/vda", `msb.net=${config.network === "all" ? 1 : 0}`, `msb.pids=${config.maxProcesses}`];
    const accelArgs = accel === "kvm" ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg"];
    if (accel === "tcg") {
      const khz = hostTscKhz();
      if (khz) append.push(`tsc_early_khz=${khz}`);
    }
    const args = [
      "-M", "microvm,rtc=on",
      ...accelArgs,
      "-m", String(config.memory),
      "-smp", String(config.cpus),
      "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
      "-kernel", boot.kernel,
      "-initrd", boot.initramfs,
      "-append", append.join(" "),
      "-chardev", `file,id=console,path=${consoleLog}`,
      "-serial", "chardev:console",
      "-device", "virtio-serial-device",
      "-chardev", `socket,id=agent,path=${socket},server=on,wait=off`,
      "-device", `virtserialport,chardev=agent,name=${PORT_NAME}`,
      "-drive", `id=root,file=${disk},format=raw,if=none,readonly=on`,
      "-device", "virtio-blk-device,drive=root",
    ];
    if (config.network === "all") args.push("-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0");
    return args;
  }

  async boot(config: VmConfig): Promise<Vm> {
    const accel = this.accel;
    try {
      return await this.bootWith(accel, config);
    } catch (err) {
      if (accel === "kvm" && !this.requested && err instanceof VmBootError && err.vmmExitedEarly) {
        kvmBroken = err.message.split("\n").find((l) => l.startsWith("QEMU said:"))?.slice(11) ?? "QEMU exited";
        debug("KVM unusable, retrying %s with TCG: %s", config.name, kvmBroken);
        return this.bootWith("tcg", config);
      }
      throw err;
    }
  }

  private async bootWith(accel: "kvm" | "tcg", config: VmConfig): Promise<Vm> {
    const t0 = performance.now();
    const boot = await guestBoot(this.opts.kernel ? { kernel: this.opts.kernel } : {});
    const disk = await config.rootDisk();
    const helper = vmmHelperPath();
    const hostPrepMs = performance.now() - t0;
    const dir = makeRuntimeDir();
    const socket = path.join(dir, "agent.sock");
    const consoleLog = path.join(dir, "console.log");
    const qemu = this.opts.qemu ?? process.env.MSB_QEMU ?? "qemu-system-x86_64";
    const argv = [qemu, ...this.args(accel, config, boot, disk, socket, consoleLog)];
    debug("booting %s with %s: %s", config.name, accel, argv.join(" "));
    const child = spawn(helper, ["exec", String(process.pid), "--", ...argv], { stdio: ["ignore", "ignore", "pipe"] });
    const vmmStartMs = performance.now() - t0;
    let stderr = "";
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr = (stderr + d).slice(-4000)));
    let exitedFlag = false;
    let exitedAtMs = Infinity;
    const exited = new Promise<void>((resolve) => {
      child.once("exit", () => ((exitedFlag = true), (exitedAtMs = performance.now() - t0), resolve()));
      child.once("error", (err) => ((stderr += String(err)), (exitedFlag = true), resolve()));
    });

    const fail = async (what: string, cause?: unknown): Promise<never> => {
      // A VMM that is failing by itself (an abort under KVM) gets a moment to say so and exit.
      await Promise.race([exited, new Promise((r) => setTimeout(r, 500))]);
      child.kill("SIGKILL");
      await exited;
      // Dead by its own hand (an error exit or an abort), not by our SIGKILL, and quickly.
      const early = child.signalCode !== "SIGKILL" && exitedAtMs < 2000;
      // The console log outlives the failed VM so the error can point at it.
      const logs = path.join(cacheDir(), "logs");
      mkdirSync(logs, { recursive: true });
      const kept = path.join(logs, `${config.name}.console.log`);
      let log: string | undefined;
      try {
        // Copied, not renamed: the runtime dir and the cache may be on different filesystems.
        if (existsSync(consoleLog)) {
          copyFileSync(consoleLog, kept);
          log = kept;
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      const details = [stderr.trim() && `QEMU said: ${stderr.trim()}`, log && `guest console (${log}) ends with:\n${tail(log, 1500)}`];
      // A QEMU built without user-mode networking (libslirp) refuses "-netdev user".
      if (config.network === "all" && /netdev|network backend/i.test(stderr)) {
        throw new NetworkError(
          `sandbox ${config.name} cannot have network "all": this QEMU has no user-mode networking (${stderr.trim()}). ` +
            'Install a QEMU built with libslirp, or use network: "none".',
        );
      }
      const err = new VmBootError(`sandbox ${config.name} did not boot: ${what}\n${details.filter(Boolean).join("\n")}`, log, { cause });
      err.vmmExitedEarly = early;
      throw err;
    };

    // QEMU creates the socket before the guest runs; the guest speaks first, so connecting early loses nothing.
    const deadline = Date.now() + config.bootTimeout * 1000;
    while (!existsSync(socket)) {
      if (exitedFlag) return fail("QEMU exited during start-up");
      if (Date.now() > deadline) return fail(`no agent socket after ${config.bootTimeout} s`);
      await new Promise((r) => setTimeout(r, 5));
    }
    let agent: AgentClient;
    try {
      const stream = await connectSocket(socket, () => exitedFlag, deadline);
      const onExit = () => stream.destroy(new Error("QEMU exited"));
      child.once("exit", onExit);
      agent = await AgentClient.fromStream(stream, { timeout: Math.max(0.001, (deadline - Date.now()) / 1000) });
      child.off("exit", onExit);
    } catch (err) {
      return fail(exitedFlag ? "QEMU exited before the agent was ready" : (err as Error).message, err);
    }
    const timeline: BootTimeline = {
      hostPrepMs,
      vmmStartMs,
      agentReadyMs: performance.now() - t0,
      guest: agent.hello.boot.map((e) => ({ name: e.name, ms: e.ns / 1e6 })),
    };
    debug("%s ready in %d ms", config.name, Math.round(timeline.agentReadyMs));

    return runningVm({ agent, backend: `qemu (${accel})`, child, exited, timeline, consoleLog, cleanup: () => rmSync(dir, { recursive: true, force: true }) });
  }
}
