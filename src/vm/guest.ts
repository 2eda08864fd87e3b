// The guest's boot artifacts: the kernel (Debian's cloud kernel prepared by
// scripts/guest-kernel.sh, or one named by option / MSB_KERNEL) and an initramfs holding the
// agent as /init, built once per (agent, modules) content and cached; and the floor's initramfs,
// whose trivial init only prints a marker (the benchmark's floor, KVM's trial boot).
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { agentBinaryPath, guestArch } from "./agent-binary.js";
import { GuestKernelError } from "../errors.js";
import { cacheDir } from "../paths.js";
import { buildInitramfs, cpioNewc } from "./initramfs.js";


export interface GuestBoot {
  /** Uncompressed vmlinux (PVH-bootable ELF). */
  kernel: string;
  initramfs: string;
}

const built = new Map<string, GuestBoot>();

/** Finds the kernel and returns it with a matching initramfs, building that on first use. */
export async function guestBoot(opts: { kernel?: string; env?: NodeJS.ProcessEnv } = {}): Promise<GuestBoot> {
  const env = opts.env ?? process.env;
  const kernel = opts.kernel ?? env.MSB_KERNEL ?? defaultKernel(env);
  if (!existsSync(kernel)) {
    throw new GuestKernelError(
      `guest kernel ${kernel} not found.\nPossible solutions:\n` +
        `- on Debian: bash scripts/guest-kernel.sh ${cacheDir(env)} (fetches the cloud kernel without installing it)\n` +
        "- name an uncompressed vmlinux with the `kernel` option or MSB_KERNEL (virtio drivers built in, or a modules/ dir beside it)",
    );
  }
  const memo = built.get(kernel);
  if (memo) return memo;
  const kernelDir = path.dirname(kernel);
  const agent = agentBinaryPath(env);
  const hash = createHash("sha256").update(readFileSync(agent));
  // The initramfs is named by everything it holds: the agent, and each module file with its name.
  const modules = path.join(kernelDir, "modules");
  if (existsSync(modules)) {
    for (const f of readdirSync(modules).sort()) hash.update(f).update(readFileSync(path.join(modules, f)));
  }
  const initramfs = path.join(cacheDir(env), "initramfs", `${hash.digest("hex").slice(0, 24)}.cpio`);
  if (!existsSync(initramfs)) {
    mkdirSync(path.dirname(initramfs), { recursive: true });
    await buildInitramfs({ agentPath: agent, kernelDir, outPath: initramfs });
  }
  const boot = { kernel, initramfs };
  built.set(kernel, boot);
  return boot;
}

function defaultKernel(env: NodeJS.ProcessEnv): string {
  const dir = path.join(cacheDir(env), "kernel");
  try {
    const version = readFileSync(path.join(dir, "current"), "utf8").trim();
    return path.join(dir, version, "vmlinux");
  } catch {
    return path.join(dir, "<none>", "vmlinux");
  }
}

/** What msb-floor-init prints once the kernel has handed over to it. */
export const FLOOR_MARKER = "MSB-FLOOR-MARKER";

/** An initramfs whose /init is msb-floor-init (built with the agent), made once per process. */
let floorPath: string | undefined;
export function floorInitramfs(): string {
  if (floorPath) return floorPath;
  const init = fileURLToPath(new URL(`../../build-guest/${guestArch()}/msb-floor-init`, import.meta.url));
  if (!existsSync(init)) throw new GuestKernelError(`${init} is missing: rebuild the native parts (npm rebuild microsandbox)`);
  const data = readFileSync(init);
  const out = path.join(cacheDir(), "initramfs", `floor-${createHash("sha256").update(data).digest("hex").slice(0, 16)}.cpio`);
  if (!existsSync(out)) {
    mkdirSync(path.dirname(out), { recursive: true });
    const tmp = `${out}.${process.pid}.tmp`;
    writeFileSync(tmp, cpioNewc([{ path: "init", mode: 0o100755, data }]));
    renameSync(tmp, out);
  }
  floorPath = out;
  return out;
}
