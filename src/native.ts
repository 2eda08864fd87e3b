// The native addon, loaded through node-gyp-build (prebuilds first, then build/Release), and the
// host capability probe it provides: /dev/kvm, libkrun (and which entry points it has), libkrunfw.
// Inputs are settled here; the addon only does the syscalls.
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

/** The libkrun entry points the VM helper may use; which exist tells the library's generation. */
export const KRUN_SYMBOLS = [
  "krun_create_ctx", "krun_set_log_level", "krun_init_log", "krun_set_vm_config", "krun_set_root",
  "krun_add_disk", "krun_add_disk2", "krun_add_virtiofs", "krun_add_virtiofs3", "krun_add_vsock_port",
  "krun_add_vsock_port2", "krun_disable_implicit_vsock", "krun_add_vsock", "krun_set_rlimits",
  "krun_set_exec", "krun_set_workdir", "krun_set_console_output", "krun_has_feature", "krun_start_enter",
] as const;

export interface LibkrunReport extends ProbeItem {
  name: string;
  /** The entry points found. */
  symbols: string[];
  /** The oldest libkrun release with every entry point found ("1.17", "1.10", "1.8", or "unknown"). */
  generation: string;
  /** Keeps a shared image read-only (virtiofs3 or a read-only disk). */
  readOnlyImage: boolean;
  /** Can run without network (disable_implicit_vsock + add_vsock, libkrun >= 1.17). */
  networkNone: boolean;
}

export interface ProbeReport {
  kvm: ProbeItem & { path: string };
  libkrun: LibkrunReport;
  libkrunfw: ProbeItem & { name: string };
}

interface RawProbe extends ProbeItem {
  symbols: string[];
}

interface Addon {
  probeKvm(path: string): RawProbe;
  probeLibrary(name: string, required: string, symbols: string[]): RawProbe;
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

/** libkrunfw, the kernel libkrun boots: MSB_LIBKRUNFW_PATH, else the soname libkrun >= 1.17 pairs with. */
export function libkrunfwName(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MSB_LIBKRUNFW_PATH) return env.MSB_LIBKRUNFW_PATH;
  return process.platform === "darwin" ? "libkrunfw.5.dylib" : "libkrunfw.so.5";
}

function generation(has: (s: string) => boolean): string {
  if (has("krun_disable_implicit_vsock") && has("krun_add_vsock")) return "1.17";
  if (has("krun_add_disk2") && has("krun_add_vsock_port2")) return "1.10";
  if (has("krun_add_vsock_port")) return "1.8";
  return "unknown";
}

// Every create() asks which backend to use: the answer is kept per process (per paths asked).
const probes = new Map<string, ProbeReport>();

/** Reports whether /dev/kvm opens read-write, whether libkrun and libkrunfw load, and what libkrun offers. */
export function probe(opts: { kvmPath?: string; libkrun?: string; libkrunfw?: string } = {}): ProbeReport {
  // MSB_VMM_KVM_DEVICE points the check (here and in msb-vmm) at another device node, for tests.
  const kvmPath = opts.kvmPath ?? process.env.MSB_VMM_KVM_DEVICE ?? "/dev/kvm";
  const name = opts.libkrun ?? libkrunName();
  const fw = opts.libkrunfw ?? libkrunfwName();
  const key = `${kvmPath}\0${name}\0${fw}`;
  const known = probes.get(key);
  if (known) return known;
  const report = probeNow(kvmPath, name, fw);
  probes.set(key, report);
  return report;
}

function probeNow(kvmPath: string, name: string, fw: string): ProbeReport {
  const native = nativeAddon();
  const kvm = native.probeKvm(kvmPath);
  const lib = native.probeLibrary(name, "krun_create_ctx", [...KRUN_SYMBOLS]);
  const has = (s: string) => lib.symbols.includes(s);
  const firmware = native.probeLibrary(fw, "", []);
  return {
    kvm: { ok: kvm.ok, detail: kvm.detail, errno: kvm.errno, path: kvmPath },
    libkrun: {
      ok: lib.ok,
      detail: lib.ok ? lib.detail : lib.detail.replace("krun_create_ctx symbol", "krun_create_ctx symbol: not a libkrun library"),
      errno: lib.errno,
      name,
      symbols: lib.symbols,
      generation: lib.ok ? generation(has) : "unknown",
      readOnlyImage: has("krun_add_virtiofs3") || has("krun_add_disk2") || has("krun_add_disk"),
      networkNone: has("krun_disable_implicit_vsock") && has("krun_add_vsock"),
    },
    libkrunfw: { ok: firmware.ok, detail: firmware.detail, errno: firmware.errno, name: fw },
  };
}
