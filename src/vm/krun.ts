// KrunBackend: boots a VM through libkrun (KVM on Linux, Hypervisor.framework on macOS) in the
// per-VM helper msb-vmm, never inside Node: krun_start_enter takes over the calling process. The
// launch config goes to the helper on an inherited pipe (proto/vmm.proto), failures before the
// VM starts come back on another; the agent connects over vsock, which libkrun maps to a unix
// socket this process listens on for exactly one connection.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import path from "node:path";
import type { Readable, Writable } from "node:stream";

import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { DEFAULT_PATH } from "../agent-client/process.js";
import { lengthPrefixed } from "../agent-client/protocol.js";
import { ConfinementError, KrunStartError } from "../errors.js";
import { KrunConfig_Network, KrunConfigSchema, KrunStatusSchema } from "../gen/vmm_pb.js";
import { vmmHelperPath } from "../native.js";
import { makeRuntimeDir } from "../paths.js";
import { type Backend, type Capability, type Confinement, finishBoot, type Vm, type VmConfig } from "./backend.js";
import { agentBinaryPath, BOOT_CONFIG_FILE, type BootConfig, encodeBootConfig, guestArch } from "./guest.js";

const MAX_STATUS = 64 * 1024;
// The agent's vsock port; libkrun reserves 620, 123 and 1024-1031 for itself.
export const AGENT_VSOCK_PORT = 7070;
export const IMAGE_TAG = "msb-image";
// With the root on virtio-fs, the first disk libkrun adds is the guest's /dev/vda.
const IMAGE_DISK_DEVICE = "/dev/vda";

export interface KrunOptions {
  /**
   * How the image reaches the guest read-only: "virtiofs" shares the unpacked directory
   * (krun_add_virtiofs3, libkrun >= 1.18), "disk" attaches the image's ext4 disk (older libkrun).
   */
  imageShare: "virtiofs" | "disk";
}

/** How the agent boots `config` under libkrun: over vsock, the image by virtio-fs or as a disk. */
export function krunBootConfig(config: VmConfig, image: { dir: string } | { disk: string }): BootConfig {
  return {
    channel: { case: "vsockPort", value: AGENT_VSOCK_PORT },
    image: "dir" in image ? { case: "virtiofs", value: IMAGE_TAG } : { case: "disk", value: IMAGE_DISK_DEVICE },
    maxProcesses: config.maxProcesses,
  };
}

/** The launch config the helper receives for `config`. */
export function krunConfig(
  config: VmConfig,
  dirs: { boot: string; socket: string; consoleLog: string },
  image: { dir: string } | { disk: string },
): MessageInitShape<typeof KrunConfigSchema> {
  return {
    logLevel: 1,
    cpus: config.cpus,
    memoryMib: config.memory,
    rootDir: dirs.boot,
    ...("dir" in image ? { imageDir: image.dir } : { imageDisk: image.disk }),
    imageTag: IMAGE_TAG,
    vsockPort: AGENT_VSOCK_PORT,
    vsockSocket: dirs.socket,
    network: config.network === "all" ? KrunConfig_Network.ALL : KrunConfig_Network.NONE,
    execPath: "/msb-agent",
    // The agent boots as BOOT_CONFIG_FILE in its root says.
    argv: [],
    env: [`PATH=${DEFAULT_PATH}`],
    workdir: "/",
    consoleLog: dirs.consoleLog,
  };
}

// Reads the status pipe to its end: nothing means the VM is starting, a message means it is not.
async function readStatus(stream: Readable): Promise<KrunStartError | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_STATUS) break;
    chunks.push(chunk);
  }
  const data = Buffer.concat(chunks);
  if (data.length === 0) return undefined;
  try {
    const len = data.readUInt32BE(0);
    const s = fromBinary(KrunStatusSchema, data.subarray(4, 4 + len));
    return new KrunStartError(`libkrun could not start the VM at ${s.step}: ${s.message}`, s.step, s.errnum);
  } catch {
    return new KrunStartError(`the VM helper reported an unreadable failure (${data.length} bytes)`, "status", 0);
  }
}

/**
 * None: libkrun saves nothing, and its network (TSI) goes out through the host's sockets, where
 * no policy holds it; volumes are attached by QEMU only, for now.
 */
export const KRUN_CAPABILITIES: ReadonlySet<Capability> = new Set();

/**
 * What `msb-vmm krun` applies: no_new_privs, and for network "none" an empty network namespace
 * where the host allows one; no mount jail or uid of its own (it lacks capability "jail", so a
 * sandbox that requires confinement goes to QEMU).
 */
function krunConfinement(config: VmConfig): Confinement {
  return {
    mode: config.confinement,
    namespaces: false,
    uid: false,
    noNewPrivs: true,
    seccomp: false,
    network: config.network === "none" ? "none" : "tsi",
    missing: ["namespaces: libkrun's VMM runs without a mount jail (QEMU's has one)", "uid: libkrun's VMM runs as its creator's user"],
  };
}

export class KrunBackend implements Backend {
  readonly name = "krun";
  readonly capabilities = KRUN_CAPABILITIES;
  readonly arch = guestArch();

  constructor(private readonly opts: KrunOptions) {}

  describe(): string {
    return "krun";
  }

  // libkrun brings its own kernel (libkrunfw): the helper and our agent are all it needs of ours.
  async check(): Promise<void> {
    vmmHelperPath();
    agentBinaryPath();
  }

  async boot(config: VmConfig): Promise<Vm> {
    // The decision never picks libkrun for a required confinement (it lacks capability "jail").
    if (config.confinement === "required") {
      throw new ConfinementError(
        `sandbox ${config.name} requires confinement, and libkrun's VMM runs without a jail: use backend "qemu" or confinement: "best-effort"`,
        ["namespaces: libkrun's VMM is not jailed"],
      );
    }
    const t0 = performance.now();
    const helper = vmmHelperPath();
    const agentBinary = agentBinaryPath();
    const disk = this.opts.imageShare === "disk" ? await config.rootDisk() : undefined;
    if (this.opts.imageShare === "disk" && !disk) throw new KrunStartError(`sandbox ${config.name} has no image disk to attach`, "image", 0);
    const image = disk ? { disk } : { dir: config.rootfs };
    const dir = makeRuntimeDir();
    // The guest's first root: the agent, its BootConfig, and what libkrun's own init mounts on
    // before it starts the agent (the agent makes its own mount points).
    const boot = path.join(dir, "root");
    for (const d of ["dev", "proc", "sys"]) mkdirSync(path.join(boot, d), { recursive: true });
    copyFileSync(agentBinary, path.join(boot, "msb-agent"));
    writeFileSync(path.join(boot, BOOT_CONFIG_FILE), encodeBootConfig(krunBootConfig(config, image)), { mode: 0o400 });
    const socket = path.join(dir, "agent.sock");
    const consoleLog = path.join(dir, "console.log");
    // libkrun connects to this socket when the guest connects to its vsock port: listen first,
    // and for one connection only, so nothing else in the guest can open another to the host.
    const server = createServer();
    server.maxConnections = 1;
    server.listen(socket);
    await once(server, "listening");
    const accepted = once(server, "connection").then(([s]) => {
      server.close();
      return s as Socket;
    });
    accepted.catch(() => {}); // rejects when the server closes unused
    const hostPrepMs = performance.now() - t0;

    const child = spawn(helper, ["krun", String(process.pid), "3", "4"], { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
    const configPipe = child.stdio[3] as Writable;
    configPipe.on("error", () => {}); // a helper that died early is reported through the status pipe
    configPipe.end(lengthPrefixed(toBinary(KrunConfigSchema, create(KrunConfigSchema, krunConfig(config, { boot, socket, consoleLog }, image)))));
    const status = readStatus(child.stdio[4] as Readable);
    return finishBoot({
      label: this.describe(),
      vmm: "libkrun",
      config,
      child,
      dir,
      consoleLog,
      t0,
      hostPrepMs,
      vmmStartMs: performance.now() - t0,
      connect: async () => {
        const failure = await status;
        if (failure) throw failure;
        return accepted;
      },
      confinement: Promise.resolve({ confinement: krunConfinement(config) }),
      release: () => server.close(),
      // libkrun's own refusal, naming the step, says more than "did not boot".
      report: status,
    });
  }
}
