// Which VMM boots a sandbox, and why: a decision from facts (the helper's host probe, a cached
// KVM trial verdict, what the sandbox needs), never from how long something took. decide() is
// pure, so every host can be tested; chooseBackend() gathers the facts; machine.ts boots the
// choice and, if it dies before its agent is ready, the fallback the decision names.
import { BackendUnavailableError, InvalidArgumentError } from "../errors.js";
import type { Backend, Capability, NetworkMode } from "./backend.js";
import { KRUN_CAPABILITIES, KrunBackend } from "./krun.js";
import { type KvmVerdict, kvmTrial } from "./kvm-trial.js";
import { type ProbeReport, probe } from "./probe.js";
import { type Accel, QemuBackend } from "./qemu.js";

export type BackendName = "auto" | "krun" | "qemu";

/** A capability a sandbox needs of its backend, and why, in words for the reason ("volumes"). */
export interface Need {
  capability: Capability;
  why: string;
}

export interface BackendRequest {
  backend: BackendName;
  network: NetworkMode;
  /** What the sandbox needs beyond booting: a backend that lacks any is passed over. */
  needs?: readonly Need[];
  /** QEMU's acceleration when forced (MSB_QEMU_ACCEL), else decided from the facts. */
  accel?: Accel;
  /** Guest kernel for QEMU (else MSB_KERNEL or the cached one). */
  kernel?: string;
}

export interface HostFacts {
  platform: NodeJS.Platform;
  probe: ProbeReport;
  /** Whether QEMU under this host's KVM booted our kernel, where that was worth trying. */
  kvmTrial?: KvmVerdict;
}

export interface Decision {
  backend: "krun" | "qemu";
  /** With QEMU: its acceleration. With libkrun: how the image reaches the guest. */
  accel?: Accel;
  imageShare?: "virtiofs" | "disk";
  reason: string;
  /** What to boot instead if this one dies before its agent is ready. */
  fallback?: Decision;
}

/** Why libkrun cannot run a sandbox with `network` and `needs` on this host, or undefined when it can. */
export function krunRefusal(f: HostFacts, network: NetworkMode, needs: readonly Need[] = []): string | undefined {
  const { kvm, libkrun, libkrunfw } = f.probe;
  if (f.platform === "linux" && kvm.pvm) return "KVM is the PVM hypervisor (kvm_pvm), which runs only PVM guest kernels, and libkrunfw's is not one";
  if (f.platform === "linux" && !kvm.ok) return `KVM: ${kvm.detail}`;
  if (f.platform === "linux" && kvm.capabilities?.ok === false) return `KVM: ${kvm.capabilities.detail}`;
  if (!libkrun.ok) return `libkrun: ${libkrun.detail}`;
  if (!libkrunfw.ok) return `libkrunfw: ${libkrunfw.detail}`;
  if (!libkrun.imageShare) return `libkrun ${libkrun.generation} can share an image read-only neither by virtio-fs (>= 1.18) nor as a disk (>= 1.9.5)`;
  const lacking = needs.filter((n) => !KRUN_CAPABILITIES.has(n.capability));
  if (lacking.length) return `libkrun cannot do ${lacking.map((n) => n.why).join(" or ")}: QEMU can`;
  if (network === "none" && !libkrun.networkNone)
    return `network "none" needs libkrun >= 1.17 (this one is ${libkrun.generation}); without it the guest would get the host's network`;
  return undefined;
}

/** QEMU's acceleration for `req` on this host, and why. */
export function qemuDecision(f: HostFacts, req: BackendRequest): Decision {
  const tcg = (reason: string): Decision => ({ backend: "qemu", accel: "tcg", reason });
  const { kvm } = f.probe;
  if (req.accel) return { backend: "qemu", accel: req.accel, reason: `MSB_QEMU_ACCEL=${req.accel}` };
  if (f.platform !== "linux") return tcg(`QEMU uses TCG on ${f.platform}`);
  if (kvm.pvm) return tcg("KVM present but PVM (kvm_pvm): it needs a PVM guest kernel; using TCG");
  if (!kvm.ok) return tcg(`no KVM (${kvm.detail}); QEMU emulates with TCG`);
  if (kvm.capabilities && !kvm.capabilities.ok) return tcg(`KVM cannot run VMs here (${kvm.capabilities.detail}); QEMU emulates with TCG`);
  if (!f.kvmTrial) return tcg("KVM not tried; using TCG");
  if (!f.kvmTrial.ok) return tcg(`KVM failed its trial boot (${f.kvmTrial.detail}); using TCG`);
  return {
    backend: "qemu",
    accel: "kvm",
    reason: `KVM passed its trial boot (${f.kvmTrial.detail})`,
    fallback: tcg("the KVM boot failed; retried under TCG"),
  };
}

/** The backend for `req` on a host with these facts. Throws when "krun" is asked for and cannot run. */
export function decide(f: HostFacts, req: BackendRequest): Decision {
  const qemu = qemuDecision(f, req);
  if (req.backend === "qemu") return { ...qemu, reason: `backend qemu requested; ${qemu.reason}` };
  const refusal = krunRefusal(f, req.network, req.needs);
  if (req.backend === "krun") {
    if (refusal) {
      throw new BackendUnavailableError(`backend "krun" is not usable here: ${refusal}. Run \`msb doctor\` for what to install, or use backend "auto"`);
    }
    return { backend: "krun", imageShare: f.probe.libkrun.imageShare!, reason: "backend krun requested" };
  }
  if (refusal) return { ...qemu, reason: `libkrun not used (${refusal}); ${qemu.reason}` };
  const share = f.probe.libkrun.imageShare!;
  return {
    backend: "krun",
    imageShare: share,
    reason: `libkrun ${f.probe.libkrun.generation} and KVM are usable (image by ${share}, network "${req.network}")`,
    fallback: { ...qemu, reason: `libkrun failed to boot; ${qemu.reason}` },
  };
}

/** MSB_QEMU_ACCEL, checked. */
export function forcedAccel(env: NodeJS.ProcessEnv = process.env): Accel | undefined {
  const v = env.MSB_QEMU_ACCEL;
  if (v === undefined || v === "") return undefined;
  if (v !== "kvm" && v !== "tcg") throw new InvalidArgumentError(`MSB_QEMU_ACCEL=${JSON.stringify(v)} is invalid: use "kvm" or "tcg"`);
  return v;
}

/** The facts for `req`: the probe, and the KVM trial verdict where KVM might run QEMU's guests. */
export async function hostFacts(req: BackendRequest): Promise<HostFacts> {
  const p = probe();
  const facts: HostFacts = { platform: process.platform, probe: p };
  if (!req.accel && req.backend !== "krun" && process.platform === "linux" && p.kvm.ok && !p.kvm.pvm && p.kvm.capabilities?.ok !== false) {
    facts.kvmTrial = await kvmTrial(req.kernel);
  }
  return facts;
}

export async function chooseBackend(req: BackendRequest): Promise<Decision> {
  return decide(await hostFacts(req), req);
}

export function backendFor(d: Decision, kernel?: string): Backend {
  if (d.backend === "krun") return new KrunBackend({ imageShare: d.imageShare! });
  return new QemuBackend({ accel: d.accel!, ...(kernel ? { kernel } : {}) });
}
