// The native addon, loaded through node-gyp-build (prebuilds first, then build/Release), and the
// host capability probe it provides. Inputs are settled here; the addon only does the syscalls.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const PACKAGE_ROOT = fileURLToPath(new URL("..", import.meta.url));

export interface ProbeItem {
  ok: boolean;
  /** What was found, or why it could not be used. */
  detail: string;
  /** errno of the failing call (host numbering), 0 when none. */
  errno: number;
}

export interface ProbeReport {
  kvm: ProbeItem & { path: string };
  libkrun: ProbeItem & { name: string };
}

interface Addon {
  probe(kvmPath: string, libkrunName: string): { kvm: ProbeItem; libkrun: ProbeItem };
}

let addon: Addon | undefined;

/** Loads the addon once; tests may hand in a stand-in. */
export function nativeAddon(replacement?: Addon): Addon {
  if (replacement) addon = replacement;
  addon ??= require("node-gyp-build")(PACKAGE_ROOT) as Addon;
  return addon;
}

/** The library name dlopen() tries: MSB_LIBKRUN_PATH, else the platform's soname. */
export function libkrunName(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MSB_LIBKRUN_PATH) return env.MSB_LIBKRUN_PATH;
  return process.platform === "darwin" ? "libkrun.1.dylib" : "libkrun.so.1";
}

/** Reports whether /dev/kvm can be opened read-write and whether libkrun can be loaded. */
export function probe(opts: { kvmPath?: string; libkrun?: string } = {}): ProbeReport {
  const kvmPath = opts.kvmPath ?? "/dev/kvm";
  const name = opts.libkrun ?? libkrunName();
  const r = nativeAddon().probe(kvmPath, name);
  return { kvm: { ...r.kvm, path: kvmPath }, libkrun: { ...r.libkrun, name } };
}
