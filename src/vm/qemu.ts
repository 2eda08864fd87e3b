// QemuBackend: boots `qemu-system-x86_64 -M microvm` with the agent as PID 1, under KVM or TCG as
// decided up front (src/vm/select.ts). Under TCG the host TSC frequency goes on the command line:
// without it about half of TCG boots hang calibrating against the PIT. The agent channel is a
// virtio-serial port backed by one end of a socketpair that only QEMU holds; QEMU runs under
// msb-vmm so it dies with this process.
import { spawn } from "node:child_process";
import { closeSync, readFileSync } from "node:fs";
import { Socket } from "node:net";
import path from "node:path";
import { debuglog } from "node:util";

import { MicrosandboxError, NetworkError } from "../errors.js";
import { socketPair, vmmHelperPath } from "../native.js";
import { makeRuntimeDir } from "../paths.js";
import { type Backend, finishBoot, type Vm, type VmConfig } from "./backend.js";
import { floorInitramfs, FLOOR_MARKER, guestBoot } from "./guest.js";

const debug = debuglog("microsandbox");
const PORT_NAME = "msb.agent";
// Where the agent's socket sits in QEMU's descriptor table (msb-vmm keeps it open across exec).
const CHANNEL_FD = 3;

export type Accel = "kvm" | "tcg";

/** The QEMU binary: MSB_QEMU, else qemu-system-x86_64 on the PATH. */
export function qemuBinary(env: NodeJS.ProcessEnv = process.env): string {
  return env.MSB_QEMU || "qemu-system-x86_64";
}

/** Host TSC frequency in kHz, for tsc_early_khz under TCG. */
function hostTscKhz(): number | undefined {
  try {
    return Number(readFileSync("/sys/devices/system/cpu/cpu0/tsc_freq_khz", "utf8").trim()) || undefined;
  } catch {
    const mhz = /cpu MHz\s*:\s*([\d.]+)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1];
    return mhz ? Math.round(Number(mhz) * 1000) : undefined;
  }
}

// QEMU option values are comma-separated: a comma inside one (a path) is written twice.
const value = (s: string) => s.replaceAll(",", ",,");

export interface QemuOptions {
  accel: Accel;
  /** Uncompressed guest kernel (vmlinux). Default: MSB_KERNEL or the cached Debian cloud kernel. */
  kernel?: string;
}

export class QemuBackend implements Backend {
  readonly name = "qemu";

  constructor(private readonly opts: QemuOptions) {}

  get accel(): Accel {
    return this.opts.accel;
  }

  describe(): string {
    return `qemu (${this.opts.accel})`;
  }

  /** QEMU's arguments for `config`; the console goes to a file, or to stdout ("stdio"). */
  args(config: VmConfig, boot: { kernel: string; initramfs: string }, disk: string | undefined, console: string): string[] {
    const append = ["console=ttyS0", "quiet", "panic=-1", `msb.port=${PORT_NAME}`, "msb.root=/dev/vda", `msb.net=${config.network === "all" ? 1 : 0}`, `msb.pids=${config.maxProcesses}`];
    const accelArgs = this.opts.accel === "kvm" ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg"];
    if (this.opts.accel === "tcg") {
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
      "-chardev", console === "stdio" ? "stdio,id=console" : `file,id=console,path=${value(console)}`,
      "-serial", "chardev:console",
      "-device", "virtio-serial-device",
      "-chardev", `socket,id=agent,fd=${CHANNEL_FD}`,
      "-device", `virtserialport,chardev=agent,name=${PORT_NAME}`,
    ];
    if (disk) args.push("-drive", `id=root,file=${value(disk)},format=raw,if=none,readonly=on`, "-device", "virtio-blk-device,drive=root");
    if (config.network === "all") args.push("-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0");
    return args;
  }

  // Spawns QEMU under msb-vmm with one end of a fresh socketpair as its agent channel.
  private spawnQemu(args: string[], stdout: "ignore" | "pipe") {
    const [ours, theirs] = socketPair();
    try {
      const argv = ["exec", String(process.pid), "--keep", String(CHANNEL_FD), "--", qemuBinary(), ...args];
      debug("starting %s", argv.join(" "));
      const child = spawn(vmmHelperPath(), argv, { stdio: ["ignore", stdout, "pipe", theirs] });
      return { child, channel: new Socket({ fd: ours, readable: true, writable: true }) };
    } catch (err) {
      closeSync(ours);
      throw err;
    } finally {
      closeSync(theirs);
    }
  }

  async boot(config: VmConfig): Promise<Vm> {
    const t0 = performance.now();
    const boot = await guestBoot(this.opts.kernel ? { kernel: this.opts.kernel } : {});
    const disk = await config.rootDisk();
    const hostPrepMs = performance.now() - t0;
    const dir = makeRuntimeDir();
    const consoleLog = path.join(dir, "console.log");
    let started;
    try {
      started = this.spawnQemu(this.args(config, boot, disk, consoleLog), "ignore");
    } catch (err) {
      throw new MicrosandboxError(`could not start QEMU for sandbox ${config.name}: ${(err as Error).message}`, { cause: err });
    }
    const { child, channel } = started;
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
      // The guest speaks first: bytes sent before it opens its port would be dropped.
      connect: async () => channel,
      explain: (stderr) =>
        // A QEMU built without user-mode networking (libslirp) refuses "-netdev user".
        config.network === "all" && /netdev|network backend/i.test(stderr)
          ? new NetworkError(
              `sandbox ${config.name} cannot have network "all": this QEMU has no user-mode networking (${stderr}). ` +
                'Install a QEMU built with libslirp, or use network: "none".',
            )
          : undefined,
    });
  }

  async floor(config: VmConfig): Promise<number> {
    const { kernel } = await guestBoot(this.opts.kernel ? { kernel: this.opts.kernel } : {});
    const initramfs = floorInitramfs();
    const disk = await config.rootDisk();
    const t0 = performance.now();
    const { child, channel } = this.spawnQemu(this.args(config, { kernel, initramfs }, disk, "stdio"), "pipe");
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
    channel.destroy();
    if (at === undefined) throw new MicrosandboxError(`the floor VM (${this.describe()}) printed no marker within ${config.bootTimeout} s:\n${seen}${stderr}`);
    return at;
  }
}
