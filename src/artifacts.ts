// Where each native part is found, as esbuild finds its binary: an environment override, else
// this package's own source build (a checkout: build/Release, build-guest/ARCH), else the
// platform package for this host (@microsandbox/OS-CPU, an optional dependency). One table of
// platforms serves the lookup, the packing script (scripts/pack.mjs) and msb doctor.
import { accessSync, constants, existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { AgentBinaryError, GuestKernelError, type MicrosandboxError, VmmHelperError } from "./errors.js";

export type GuestArch = "x86_64" | "aarch64";

/** The guest architecture that runs natively on a host of Node's `process.arch`, if any. */
export function nativeGuestArch(hostArch: string = process.arch): GuestArch | undefined {
  return ({ x64: "x86_64", arm64: "aarch64" } as Record<string, GuestArch>)[hostArch];
}

/** How each architecture's kernel is built and booted: x86_64 as an ELF vmlinux (PVH), aarch64 as an Image. */
export const KERNEL_FILE: Record<GuestArch, string> = { x86_64: "vmlinux", aarch64: "Image" };

export interface Platform {
  /** The npm package that carries this platform's parts. */
  package: string;
  os: NodeJS.Platform;
  cpu: string;
  /** The C library the native half links against, where npm can tell (Linux). */
  libc?: "glibc";
  /** The guest architecture whose agent and kernel it carries. */
  guest: GuestArch;
  /** The files of its native half (host programs). */
  native: readonly string[];
}

const LINUX_NATIVE = ["microsandbox.node", "msb-vmm", "msb-openfd.so"] as const;

/** Every platform a package is made for, by `${process.platform}-${process.arch}`. */
export const PLATFORMS: Readonly<Record<string, Platform>> = {
  "linux-x64": { package: "@microsandbox/linux-x64", os: "linux", cpu: "x64", libc: "glibc", guest: "x86_64", native: LINUX_NATIVE },
  "linux-arm64": { package: "@microsandbox/linux-arm64", os: "linux", cpu: "arm64", libc: "glibc", guest: "aarch64", native: LINUX_NATIVE },
  "darwin-arm64": { package: "@microsandbox/darwin-arm64", os: "darwin", cpu: "arm64", guest: "aarch64", native: ["microsandbox.node", "msb-vmm"] },
};

/** The files of a guest architecture's half: the agent, the floor's init and the kernel. */
export const guestFiles = (arch: GuestArch): readonly string[] => ["msb-agent", "msb-floor-init", KERNEL_FILE[arch]];

/** Where a platform package keeps each half. */
export const PACKAGE_DIRS = { native: "native", guest: "guest" } as const;

export type ArtifactSource = "environment" | "source build" | "platform package";

export interface Artifact {
  path: string;
  source: ArtifactSource;
  /** What supplied it: the variable, the build directory, or the package and its version. */
  from: string;
}

/** The package root: a checkout, or the installed package. */
export const PACKAGE_ROOT = fileURLToPath(new URL("..", import.meta.url));

/** The host as npm names platforms: `${process.platform}-${process.arch}`. */
export const hostPlatformKey = (): string => `${process.platform}-${process.arch}`;

const isExecutable = (file: string) => {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
};

/** The installed platform package `name`: its directory and version, or undefined. */
function installed(name: string, root: string): { dir: string; version: string } | undefined {
  try {
    const manifest = createRequire(path.join(root, "package.json")).resolve(`${name}/package.json`);
    const { version } = createRequire(manifest)(manifest) as { version: string };
    return { dir: path.dirname(manifest), version };
  } catch {
    return undefined;
  }
}

// On musl (Alpine) npm skips our glibc packages, and their programs would not load anyway.
const hostLibc = (): string =>
  (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime ? "glibc" : "musl";

/** What a failed lookup says about platform packages, and what to do. */
function packageHint(packages: string[]): string {
  const key = hostPlatformKey();
  const covered = Object.keys(PLATFORMS).join(", ");
  if (!packages.length) {
    return `- no platform package covers this host (${key}): microsandbox ships for ${covered}. Build from a checkout of microsandbox on this host instead`;
  }
  const own = PLATFORMS[key];
  if (own?.libc === "glibc" && process.platform === "linux" && hostLibc() !== "glibc") {
    return `- ${own.package} is built for glibc, and this host's C library is musl (Alpine?): use a glibc distribution, or build from a checkout`;
  }
  return (
    `- install the platform package: npm install ${packages[0]} (it is an optional dependency of microsandbox, ` +
    "left out by --omit=optional, --no-optional or a lockfile made on another platform; reinstall with --include=optional)"
  );
}

interface Lookup {
  /** What the file is, for messages: "the guest kernel for x86_64 guests". */
  what: string;
  file: string;
  /** A program (checked for the execute permission), not data. */
  executable: boolean;
  env?: { name: string; value: string | undefined };
  sourceBuild: string;
  /** Platform packages that carry it, the host's own first. */
  packages: { name: string; dir: string }[];
  /** How a checkout builds it, said only in a checkout. */
  build: string;
  error: new (message: string, opts?: { cause?: unknown }) => MicrosandboxError;
}

function find(l: Lookup, root: string): Artifact {
  const usable = (file: string) => (l.executable ? isExecutable(file) : existsSync(file));
  if (l.env?.value) {
    if (usable(l.env.value)) return { path: l.env.value, source: "environment", from: l.env.name };
    throw new l.error(
      `${l.what} ${l.env.value} (named by ${l.env.name}) does not exist or cannot be used: fix ${l.env.name}, or unset it to use the one microsandbox ships`,
    );
  }
  const candidates: Artifact[] = [{ path: path.join(root, l.sourceBuild, l.file), source: "source build", from: l.sourceBuild }];
  const looked: string[] = [`${path.join(root, l.sourceBuild)} (a source build)`];
  for (const p of l.packages) {
    const pkg = installed(p.name, root);
    if (!pkg) {
      looked.push(`${p.name} (not installed)`);
      continue;
    }
    candidates.push({ path: path.join(pkg.dir, p.dir, l.file), source: "platform package", from: `${p.name} ${pkg.version}` });
    looked.push(`${p.name} ${pkg.version} (${path.join(pkg.dir, p.dir)})`);
  }
  const found = candidates.find((c) => usable(c.path));
  if (found) return found;
  const checkout = existsSync(path.join(root, "scripts", "build-kernel.sh"));
  throw new l.error(
    `${l.what} (${l.file}) was not found. Looked in: ${looked.join(", ")}.\nPossible solutions:\n` +
      `${packageHint(l.packages.map((p) => p.name))}\n` +
      (checkout ? `- in this checkout: ${l.build}\n` : "") +
      (l.env ? `- or name one with ${l.env.name}` : ""),
  );
}

/** The host's native file `name` (the addon, msb-vmm, msb-openfd.so). */
export function nativeArtifact(name: string, root: string = PACKAGE_ROOT): Artifact {
  const own = PLATFORMS[hostPlatformKey()];
  return find(
    {
      what: name.endsWith(".node") ? "the native addon" : name === "msb-vmm" ? "the VM helper" : `the VM helper's preload`,
      file: name,
      executable: name === "msb-vmm",
      sourceBuild: path.join("build", "Release"),
      packages: own ? [{ name: own.package, dir: PACKAGE_DIRS.native }] : [],
      build: "npm install (or node scripts/build-native.mjs --force)",
      error: VmmHelperError,
    },
    root,
  );
}

/** The guest file `name` for `arch` guests: the agent, the floor's init, or the kernel. */
export function guestArtifact(arch: GuestArch, name: string, env: NodeJS.ProcessEnv = process.env, root: string = PACKAGE_ROOT): Artifact {
  const native = arch === nativeGuestArch();
  const kernel = name === KERNEL_FILE[arch];
  const variable = kernel ? "MSB_KERNEL" : name === "msb-agent" ? "MSB_AGENT_PATH" : undefined;
  const own = PLATFORMS[hostPlatformKey()];
  // The host's own package first, then any other installed one that carries this guest.
  const carriers = Object.values(PLATFORMS)
    .filter((p) => p.guest === arch)
    .sort((a, b) => Number(b === own) - Number(a === own))
    .map((p) => ({ name: p.package, dir: PACKAGE_DIRS.guest }));
  return find(
    {
      what: kernel
        ? `the guest kernel for ${arch} guests`
        : name === "msb-agent"
          ? `the guest agent for ${arch} guests`
          : `the floor's init for ${arch} guests`,
      file: name,
      executable: !kernel,
      ...(variable && native ? { env: { name: variable, value: env[variable] } } : {}),
      sourceBuild: path.join("build-guest", arch),
      packages: carriers,
      build: kernel ? `bash scripts/build-kernel.sh ${arch} (a few minutes, once)` : `make -C native/agent${native ? "" : ` ARCH=${arch}`}`,
      error: kernel ? GuestKernelError : AgentBinaryError,
    },
    root,
  );
}
