// What this host offers each backend, as the VM helper finds it (`msb-vmm probe`, a HostProbe of
// proto/vmm.proto): the helper's own KVM check, libkrun loader and entry-point table, so what
// Node believes works and what the helper will do cannot disagree. libkrun is never loaded here.
import { spawnSync } from "node:child_process";

import { fromBinary } from "@bufbuild/protobuf";

import { VmmHelperError } from "../errors.js";
import { type HostProbe_Check, HostProbeSchema } from "../gen/vmm_pb.js";
import { type KvmCapabilities, kvmCapabilities, vmmHelperPath } from "../native.js";

export interface ProbeItem {
  ok: boolean;
  /** What was found, or why it could not be used. */
  detail: string;
  /** errno of the failing call (host numbering), 0 when none. */
  errno: number;
}

export interface LibkrunReport extends ProbeItem {
  /** The library loaded or tried. */
  name: string;
  /** Its entry points that msb-vmm knows. */
  symbols: string[];
  /** The oldest libkrun release with every entry point found, or "unknown". */
  generation: string;
  /**
   * How it can give the guest the image read-only: "virtiofs" (krun_add_virtiofs3, >= 1.18), "disk"
   * (krun_add_disk2 / krun_add_disk, >= 1.9.5), or undefined when it cannot.
   */
  imageShare: "virtiofs" | "disk" | undefined;
  /** Can run without network: implicit vsock disabled, re-added without TSI (>= 1.17). */
  networkNone: boolean;
}

export interface ProbeReport {
  /**
   * The KVM device opens read-write (what the helper checks before it loads libkrun); `pvm`: it is
   * the PVM hypervisor, which runs only PVM guest kernels; `capabilities`: what it can do, asked by
   * ioctl (Linux, where it opens).
   */
  kvm: ProbeItem & { path: string; pvm: boolean; capabilities?: KvmCapabilities };
  libkrun: LibkrunReport;
  libkrunfw: ProbeItem & { name: string };
}

// The environment the helper's probe reads: MSB_LIBKRUN_PATH, MSB_LIBKRUNFW_PATH, and for tests
// MSB_VMM_KVM_DEVICE and MSB_VMM_PVM_MODULE. Answers are kept per process for each setting.
const INPUTS = ["MSB_LIBKRUN_PATH", "MSB_LIBKRUNFW_PATH", "MSB_VMM_KVM_DEVICE", "MSB_VMM_PVM_MODULE"];
const probes = new Map<string, ProbeReport>();

function generation(has: (s: string) => boolean): string {
  if (has("krun_add_virtiofs3")) return "1.18";
  if (has("krun_disable_implicit_vsock") && has("krun_add_vsock")) return "1.17";
  if (has("krun_init_log")) return "1.13";
  if (has("krun_add_disk2") && has("krun_add_vsock_port2")) return "1.10";
  if (has("krun_add_disk")) return "1.9.5";
  if (has("krun_add_vsock_port")) return "1.8";
  return "unknown";
}

const item = (c: HostProbe_Check | undefined): ProbeItem => ({ ok: !!c?.ok, detail: c?.detail ?? "", errno: c?.errnum ?? 0 });

/** Decodes the helper's framed HostProbe. */
function decodeProbe(frame: Buffer): ProbeReport {
  if (frame.length < 4 || frame.readUInt32BE(0) !== frame.length - 4) {
    throw new VmmHelperError(`the VM helper's probe answer is not one frame (${frame.length} bytes)`);
  }
  const p = fromBinary(HostProbeSchema, frame.subarray(4));
  const symbols = p.libkrunSymbols;
  const has = (s: string) => symbols.includes(s);
  const libkrun = item(p.libkrun);
  return {
    kvm: { ...item(p.kvm), path: p.kvmPath, pvm: p.kvmPvm },
    libkrun: {
      ...libkrun,
      name: p.libkrunName,
      symbols,
      generation: libkrun.ok ? generation(has) : "unknown",
      imageShare: has("krun_add_virtiofs3") ? "virtiofs" : has("krun_add_disk2") || has("krun_add_disk") ? "disk" : undefined,
      networkNone: has("krun_disable_implicit_vsock") && has("krun_add_vsock"),
    },
    libkrunfw: { ...item(p.libkrunfw), name: p.libkrunfwName },
  };
}

/** What this host offers: KVM (whether it is PVM, and what it can do), libkrun and its generation, libkrunfw. */
export function probe(env: NodeJS.ProcessEnv = process.env): ProbeReport {
  const key = INPUTS.map((k) => env[k] ?? "").join("\0");
  const known = probes.get(key);
  if (known) return known;
  const helper = vmmHelperPath();
  const r = spawnSync(helper, ["probe"], { env, timeout: 10_000, maxBuffer: 1 << 20 });
  if (r.error || r.status !== 0) {
    const why = r.error?.message ?? `exit status ${r.status ?? r.signal}: ${r.stderr.toString().trim()}`;
    throw new VmmHelperError(
      `the VM helper ${helper} could not probe this host (${why}): ` +
        "reinstall microsandbox with its optional dependencies (the platform package carries the helper), or in a checkout run npm install",
    );
  }
  const report = decodeProbe(r.stdout);
  // A stand-in device (MSB_VMM_KVM_DEVICE, the tests' "usable KVM") is opened, never asked.
  if (process.platform === "linux" && report.kvm.ok && !env.MSB_VMM_KVM_DEVICE) report.kvm.capabilities = kvmCapabilities(report.kvm.path);
  probes.set(key, report);
  return report;
}
