// The native parts, found by src/artifacts.ts (a checkout's build/Release, else this host's
// platform package): the N-API addon (what Node cannot ask the kernel itself: a KVM device's
// capabilities, by ioctl) and the per-VM helper msb-vmm with its preload.
import { createRequire } from "node:module";

import { nativeArtifact } from "./artifacts.js";

const require = createRequire(import.meta.url);

/** What a KVM device can do, asked by ioctl (native/addon/addon.cc). */
export interface KvmCapabilities {
  /** It opens, answers as KVM, and makes a VM with a vCPU. */
  ok: boolean;
  /** errno of the first call that failed, 0 when none. */
  errno: number;
  /** What was found, or which call failed and why. */
  detail: string;
  /** KVM_GET_API_VERSION (12 on every Linux since 2.6.22). */
  apiVersion?: number;
  /** Extensions QEMU and libkrun rely on that it has: "irqchip", "ioeventfd", ... */
  extensions?: string[];
  /** x86: the CPU vendor and the features it offers guests (KVM_GET_SUPPORTED_CPUID). */
  cpuVendor?: string;
  cpuFeatures?: string[];
}

interface Addon {
  kvmCapabilities(device: string): KvmCapabilities;
}

let addon: Addon | undefined;

function nativeAddon(): Addon {
  addon ??= require(nativeArtifact("microsandbox.node").path) as Addon;
  return addon;
}

/** What the KVM device at `device` can do. */
export function kvmCapabilities(device: string): KvmCapabilities {
  return nativeAddon().kvmCapabilities(device);
}

/** msb-vmm, the per-VM helper. */
export function vmmHelperPath(): string {
  return nativeArtifact("msb-vmm").path;
}
