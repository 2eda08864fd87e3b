// The guest's boot artifacts, per guest architecture, in build-guest/<arch>/ (or where the
// environment points): our kernel (scripts/build-kernel.sh), the static agent and the floor's
// trivial init; and the initramfs made from the agent (plus the modules of a kernel that has
// them beside it), built once per content and cached.
import { createHash } from "node:crypto";
import { accessSync, constants, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { AgentBinaryError, GuestKernelError, InvalidArgumentError } from "../errors.js";
import { cacheDir } from "../paths.js";
import { buildInitramfs, cpioNewc } from "./initramfs.js";

export type GuestArch = "x86_64" | "aarch64";

/** The guest architecture that runs natively on a host of Node's `process.arch`. */
export function guestArch(hostArch: string = process.arch): GuestArch {
  const arch = ({ x64: "x86_64", arm64: "aarch64" } as Record<string, GuestArch>)[hostArch];
  if (!arch) throw new InvalidArgumentError(`no guest architecture for a ${hostArch} host: microsandbox runs on x64 and arm64`);
  return arch;
}

/** How each architecture's kernel is built and booted: x86_64 as an ELF vmlinux (PVH), aarch64 as an Image. */
export const KERNEL_FILE: Record<GuestArch, string> = { x86_64: "vmlinux", aarch64: "Image" };

// build-guest/<arch>/<name> in this package.
const guestFile = (arch: GuestArch, name: string) => fileURLToPath(new URL(`../../build-guest/${arch}/${name}`, import.meta.url));

/** The static guest agent for `arch`: build-guest/<arch>/msb-agent, or MSB_AGENT_PATH for the native one. */
export function agentBinaryPath(env: NodeJS.ProcessEnv = process.env, arch: GuestArch = guestArch()): string {
  const file = (arch === guestArch() && env.MSB_AGENT_PATH) || guestFile(arch, "msb-agent");
  try {
    accessSync(file, constants.X_OK);
  } catch (err) {
    throw new AgentBinaryError(
      `the guest agent ${file} is missing or not executable.\n` +
        "Possible solutions:\n" +
        "- install its build tools: sudo apt-get install musl-tools libnanopb-dev nanopb protobuf-compiler\n" +
        `- then rebuild it: npm rebuild microsandbox (or make -C native/agent${arch === guestArch() ? "" : ` ARCH=${arch}`} in a checkout)\n` +
        "- or point MSB_AGENT_PATH at a built msb-agent",
      { cause: err },
    );
  }
  return file;
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
  const kernel = opts.kernel ?? ((arch === guestArch() && env.MSB_KERNEL) || guestFile(arch, KERNEL_FILE[arch]));
  if (!existsSync(kernel)) {
    const named = opts.kernel ? "the kernel option" : arch === guestArch() && env.MSB_KERNEL ? "MSB_KERNEL" : undefined;
    throw new GuestKernelError(
      `guest kernel ${kernel} not found${named ? ` (named by ${named})` : ""}.\nPossible solutions:\n` +
        (named
          ? `- fix ${named}: an uncompressed ${KERNEL_FILE[arch]} with its virtio drivers built in, or a modules/ dir beside it\n`
          : `- in a checkout: bash scripts/build-kernel.sh ${arch} (builds our kernel once, a few minutes)\n` +
            `- or name a ${KERNEL_FILE[arch]} with the \`kernel\` option or MSB_KERNEL`),
    );
  }
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
  const init = guestFile(arch, "msb-floor-init");
  if (!existsSync(init)) throw new GuestKernelError(`${init} is missing: rebuild the native parts (npm rebuild microsandbox)`);
  const data = readFileSync(init);
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
