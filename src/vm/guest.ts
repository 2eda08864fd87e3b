// The guest's boot artifacts per guest architecture, found by src/artifacts.ts (an environment
// override, a checkout's build-guest/ARCH, or a platform package): our kernel, the static agent
// and the floor's trivial init; and the initramfs made from the agent (plus the modules of a
// kernel that has them beside it), built once per content and cached.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";

import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";

import { type GuestArch, guestArtifact, KERNEL_FILE, nativeGuestArch } from "../artifacts.js";
import { GuestKernelError, InvalidArgumentError } from "../errors.js";
import { BootConfigSchema } from "../gen/agent_pb.js";
import { cacheDir } from "../paths.js";
import { buildInitramfs, cpioNewc } from "./initramfs.js";

export { type GuestArch, KERNEL_FILE } from "../artifacts.js";

/** The guest architecture that runs natively on a host of Node's `process.arch`. */
export function guestArch(hostArch: string = process.arch): GuestArch {
  const arch = nativeGuestArch(hostArch);
  if (!arch) throw new InvalidArgumentError(`no guest architecture for a ${hostArch} host: microsandbox runs on x64 and arm64`);
  return arch;
}

/** The static guest agent for `arch` (MSB_AGENT_PATH overrides the native one). */
export function agentBinaryPath(env: NodeJS.ProcessEnv = process.env, arch: GuestArch = guestArch()): string {
  return guestArtifact(arch, "msb-agent", env).path;
}

export interface GuestBoot {
  arch: GuestArch;
  /** The kernel: an uncompressed vmlinux (x86_64, PVH) or an Image (aarch64). */
  kernel: string;
  initramfs: string;
}

const built = new Map<string, GuestBoot>();

/**
 * The kernel for `arch` (the `kernel` option, else MSB_KERNEL for the native architecture, else
 * ours) and a matching initramfs, built on first use.
 */
export async function guestBoot(opts: { kernel?: string; arch?: GuestArch; env?: NodeJS.ProcessEnv } = {}): Promise<GuestBoot> {
  const env = opts.env ?? process.env;
  const arch = opts.arch ?? guestArch();
  if (opts.kernel !== undefined && !existsSync(opts.kernel)) {
    throw new GuestKernelError(
      `guest kernel ${opts.kernel} (the kernel option) not found: name an uncompressed ${KERNEL_FILE[arch]} with its virtio drivers built in, or a modules/ dir beside it`,
    );
  }
  const kernel = opts.kernel ?? guestArtifact(arch, KERNEL_FILE[arch], env).path;
  const key = `${arch}\0${kernel}`;
  const memo = built.get(key);
  if (memo) return memo;
  const agent = agentBinaryPath(env, arch);
  const hash = createHash("sha256").update(readFileSync(agent));
  // A kernel built with modules keeps them in modules/ beside it (bench/debian-kernel.sh's do):
  // the initramfs is named by everything it holds, each module file with its name.
  const modules = path.join(path.dirname(kernel), "modules");
  if (existsSync(modules)) {
    for (const f of readdirSync(modules).sort()) hash.update(f).update(readFileSync(path.join(modules, f)));
  }
  const initramfs = path.join(cacheDir(env), "initramfs", `${hash.digest("hex").slice(0, 24)}.cpio`);
  if (!existsSync(initramfs)) {
    mkdirSync(path.dirname(initramfs), { recursive: true });
    await buildInitramfs({ agentPath: agent, kernelDir: path.dirname(kernel), outPath: initramfs });
  }
  const boot = { arch, kernel, initramfs };
  built.set(key, boot);
  return boot;
}

/** What msb-floor-init prints once the kernel has handed over to it. */
export const FLOOR_MARKER = "MSB-FLOOR-MARKER";

/** An initramfs whose /init is msb-floor-init (built with the agent), made once per process and architecture. */
const floors = new Map<GuestArch, string>();
export function floorInitramfs(arch: GuestArch = guestArch()): string {
  const memo = floors.get(arch);
  if (memo) return memo;
  const data = readFileSync(guestArtifact(arch, "msb-floor-init").path);
  const out = path.join(cacheDir(), "initramfs", `floor-${createHash("sha256").update(data).digest("hex").slice(0, 16)}.cpio`);
  if (!existsSync(out)) {
    mkdirSync(path.dirname(out), { recursive: true });
    const tmp = `${out}.${process.pid}.tmp`;
    writeFileSync(tmp, cpioNewc([{ path: "init", mode: 0o100755, data }]));
    renameSync(tmp, out);
  }
  floors.set(arch, out);
  return out;
}

/**
 * Where the agent finds its BootConfig in the guest's first root (BOOT_CONFIG_PATH in
 * native/agent/agent.h): how it boots, on every backend, instead of kernel parameters or argv.
 */
export const BOOT_CONFIG_FILE = "msb-boot.pb";

export type BootConfig = MessageInitShape<typeof BootConfigSchema>;

export const encodeBootConfig = (boot: BootConfig): Uint8Array => toBinary(BootConfigSchema, create(BootConfigSchema, boot));

/**
 * The initramfs of a VM booted with `boot`: `initramfs` (the agent, built once per content) with
 * an archive holding the BootConfig appended, which the kernel unpacks after the first. Made once
 * per (initramfs, BootConfig) in the cache: every VM of a kind, and every restore of one, uses
 * the same file.
 */
export function initramfsWithBoot(initramfs: string, boot: Uint8Array): string {
  const digest = createHash("sha256").update(boot).digest("hex").slice(0, 16);
  const out = path.join(path.dirname(initramfs), `${path.basename(initramfs, ".cpio")}-boot-${digest}.cpio`);
  if (!existsSync(out)) {
    const tmp = `${out}.${process.pid}.tmp`;
    writeFileSync(tmp, Buffer.concat([readFileSync(initramfs), cpioNewc([{ path: BOOT_CONFIG_FILE, mode: 0o100400, data: boot }])]), { mode: 0o644 });
    renameSync(tmp, out);
  }
  return out;
}
