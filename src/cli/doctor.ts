// msb doctor: what this host has and lacks for each backend, with what to do about it, and the
// backend a sandbox would get here and why (the same decision create() makes).
import { execFileSync } from "node:child_process";

import { type Artifact, guestArtifact, KERNEL_FILE, nativeArtifact } from "../artifacts.js";
import type { KvmCapabilities } from "../native.js";
import type { Confinement } from "../vm/backend.js";
import { probeConfinement } from "../vm/confinement-probe.js";
import { guestArch, guestBoot } from "../vm/guest.js";
import { machineNeeds } from "../vm/machine.js";
import { vmNetwork } from "../vm/netpolicy.js";
import { qemuBinary } from "../vm/qemu.js";
import { decide, forcedAccel, hostFacts, krunRefusal, qemuDecision } from "../vm/select.js";
import { confinementAdvice } from "../vm/vmm-control.js";

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  /** What to do when it is not ok. */
  solutions: string[];
}

export interface DoctorReport {
  platform: string;
  backends: { krun: { usable: boolean; reason: string }; qemu: { usable: boolean; reason: string } };
  /** What backend "auto" picks for each network policy, and why. */
  chosen: Record<"none" | "public" | "all", { backend: string; reason: string }>;
  checks: Check[];
}

// A check's solutions are the failure's own "Possible solutions" lines, else `solutions`.
async function check(name: string, fn: () => string | Promise<string>, solutions: string[] = []): Promise<Check> {
  try {
    return { name, ok: true, detail: await fn(), solutions: [] };
  } catch (err) {
    const lines = (err as Error).message.split("\n");
    const own = lines
      .slice(lines.indexOf("Possible solutions:") + 1)
      .filter((l) => l.startsWith("- "))
      .map((l) => l.slice(2));
    return { name, ok: false, detail: lines[0]!, solutions: lines.includes("Possible solutions:") ? own : solutions };
  }
}

// What the addon's ioctls found: the verdict, and on x86 what the CPU offers guests.
function capabilities(c: KvmCapabilities | undefined): string {
  if (!c) return "";
  if (!c.ok) return `; ${c.detail}`;
  const cpu = c.cpuVendor ? `; guests get ${c.cpuVendor} with ${c.cpuFeatures?.length ? c.cpuFeatures.join(", ") : "only baseline x86-64 features"}` : "";
  return `; ${c.detail}${c.extensions?.length ? ` (${c.extensions.join(", ")})` : ""}${cpu}`;
}

const CONFINEMENT = "confinement (QEMU)";

// What msb-vmm could apply to a VMM here (a real `msb-vmm exec`, src/vm/confinement-probe.ts),
// and for each part missing what would give it; a sandbox's default, "required", fails without it.
async function confinementCheck(): Promise<Check> {
  let c: Confinement;
  try {
    c = await probeConfinement();
  } catch (err) {
    return { name: CONFINEMENT, ok: false, detail: (err as Error).message, solutions: ["reinstall microsandbox: its VM helper (msb-vmm) could not be run"] };
  }
  if (!c.missing.length) {
    const ns = c.uid ? "mount namespace, own uid (as root)" : "mount namespace in a user namespace (not root: the VMM keeps this user's uid)";
    const network = c.network === "supervisor" ? "network held by a seccomp supervisor" : `network ${c.network}`;
    return { name: CONFINEMENT, ok: true, detail: `${ns}, ${c.noNewPrivs ? "no_new_privs" : "no no_new_privs"}, ${network}`, solutions: [] };
  }
  return {
    name: CONFINEMENT,
    ok: false,
    detail: `a sandbox with confinement "required" (the default) fails here: ${c.missing.join("; ")}`,
    solutions: confinementAdvice(c.missing),
  };
}

// An artifact's path and where it came from: the platform package, a source build, or a variable.
const described = (a: Artifact) => `${a.path} (${a.source}: ${a.from})`;

export async function doctor(): Promise<DoctorReport> {
  const arch = guestArch();
  const helper = await check("VM helper (msb-vmm)", () => described(nativeArtifact("msb-vmm")));
  const addon = await check("native addon", () => described(nativeArtifact("microsandbox.node")));
  const agent = await check("guest agent", () => described(guestArtifact(arch, "msb-agent")));
  const qemu = await check("QEMU", () => execFileSync(qemuBinary(), ["--version"], { encoding: "utf8" }).split("\n")[0]!, [
    "Debian / Ubuntu: sudo apt-get install qemu-system-x86",
    "Fedora: sudo dnf install qemu-system-x86-core",
    "macOS: brew install qemu",
    "or point MSB_QEMU at a qemu-system-x86_64",
  ]);
  const kernel = await check("guest kernel (QEMU)", async () => {
    const { kernel: file } = await guestBoot();
    const artifact = guestArtifact(arch, KERNEL_FILE[arch]);
    return artifact.path === file ? described(artifact) : file;
  });
  const platform = `${process.platform}/${process.arch}`;
  if (!helper.ok || !addon.ok) {
    // Without the helper (or the addon beside it) nothing can be probed, and no backend runs.
    const why = (helper.ok ? addon : helper).detail;
    const none = { backend: "none", reason: why };
    return {
      platform,
      backends: { krun: { usable: false, reason: why }, qemu: { usable: false, reason: why } },
      chosen: { none, public: none, all: none },
      checks: [addon, helper, agent, qemu, kernel],
    };
  }

  const accel = forcedAccel();
  const canTrial = qemu.ok && kernel.ok;
  const facts = await hostFacts({ backend: canTrial ? "auto" : "krun", network: "none", ...(accel ? { accel } : {}) });
  const p = facts.probe;
  const checks: Check[] = [];
  if (process.platform === "linux") {
    checks.push({
      name: "KVM",
      ok: p.kvm.ok && !p.kvm.pvm && p.kvm.capabilities?.ok !== false,
      detail: p.kvm.pvm
        ? `KVM present but PVM (kvm_pvm module): it runs only guest kernels built for PVM, so it needs a PVM guest kernel; using TCG (${p.kvm.detail}${capabilities(p.kvm.capabilities)})`
        : p.kvm.detail +
          capabilities(p.kvm.capabilities) +
          (facts.kvmTrial ? `; trial boot: ${facts.kvmTrial.ok ? "" : "failed: "}${facts.kvmTrial.detail}` : ""),
      solutions: p.kvm.pvm
        ? ["none on this host: its hypervisor runs only PVM guests; sandboxes run under TCG emulation, slower but complete"]
        : [
            "join the kvm group: sudo usermod -aG kvm $USER, then log in again",
            `or let the group have it with a udev rule: echo 'KERNEL=="kvm", GROUP="kvm", MODE="0660"' | sudo tee /etc/udev/rules.d/99-kvm.rules && sudo udevadm trigger`,
            "enable virtualization (VT-x / AMD-V) in the firmware; inside a VM, enable nested virtualization",
          ],
    });
  }
  checks.push({
    name: "libkrun",
    ok: p.libkrun.ok,
    detail: p.libkrun.ok
      ? `${p.libkrun.name}: entry points of libkrun >= ${p.libkrun.generation}; image ${p.libkrun.imageShare ? `by ${p.libkrun.imageShare}` : "cannot be shared read-only"}` +
        (p.libkrun.networkNone ? "" : '; network "none" needs libkrun >= 1.17')
      : p.libkrun.detail,
    solutions: [
      "Fedora: sudo dnf install libkrun",
      "Arch Linux: sudo pacman -S libkrun",
      "macOS: brew tap slp/krun && brew install libkrun",
      "Nix: nix-shell -p libkrun",
      "or point MSB_LIBKRUN_PATH at a libkrun.so.1 / libkrun.1.dylib",
    ],
  });
  checks.push({
    name: "libkrunfw",
    ok: p.libkrunfw.ok,
    detail: p.libkrunfw.detail,
    solutions: [
      "Fedora: sudo dnf install libkrunfw",
      "Arch Linux: sudo pacman -S libkrunfw",
      "macOS: brew tap slp/krun && brew install libkrunfw",
      "or point MSB_LIBKRUNFW_PATH at a libkrunfw.so.5 / libkrunfw.5.dylib",
    ],
  });
  checks.push(qemu, kernel, agent, helper, addon);
  if (process.platform === "linux") checks.push(await confinementCheck());

  // One verdict per backend, and the choice for each network made only among usable ones: what
  // create() decides, unless the backend it would pick lacks a part of ours.
  const krunWhyNot = krunRefusal(facts, "all") ?? (agent.ok ? undefined : "missing: guest agent");
  const qemuMissing = [qemu, kernel, agent].filter((c) => !c.ok).map((c) => c.name);
  const qemuWhyNot = qemuMissing.length ? `missing: ${qemuMissing.join(", ")}` : undefined;
  const q = qemuDecision(facts, { backend: "qemu", network: "none", ...(accel ? { accel } : {}) });
  const chosen = {} as DoctorReport["chosen"];
  for (const network of ["none", "public", "all"] as const) {
    try {
      const d = decide(facts, {
        backend: "auto",
        network: vmNetwork(network).network,
        needs: machineNeeds({ network, ports: [], volumes: [], confinement: "required" }),
        ...(accel ? { accel } : {}),
      });
      const whyNot = d.backend === "krun" ? krunWhyNot : qemuWhyNot;
      chosen[network] = whyNot
        ? { backend: "none", reason: `${d.backend === "krun" ? "libkrun" : "QEMU"} would run it but is not usable here (${whyNot})` }
        : { backend: d.backend === "qemu" ? `qemu (${d.accel})` : "krun", reason: d.reason };
    } catch (err) {
      chosen[network] = { backend: "none", reason: (err as Error).message };
    }
  }
  return {
    platform,
    backends: {
      krun: {
        usable: !krunWhyNot,
        reason:
          krunWhyNot ??
          (krunRefusal(facts, "none") ? `usable with network "all" only: ${krunRefusal(facts, "none")}` : "libkrun, libkrunfw and KVM are usable"),
      },
      qemu: { usable: !qemuWhyNot, reason: qemuWhyNot ?? `with ${q.accel!.toUpperCase()}: ${q.reason}` },
    },
    chosen,
    checks,
  };
}

/** The report as text, sharp-style: what was found, and "Possible solutions" for what was not. */
export function formatDoctor(r: DoctorReport): string {
  const lines = [`microsandbox doctor (${r.platform})`, ""];
  for (const c of r.checks) {
    lines.push(`${c.ok ? "ok     " : "MISSING"} ${c.name}: ${c.detail}`);
    if (!c.ok && c.solutions.length) {
      lines.push("        Possible solutions:");
      for (const s of c.solutions) lines.push(`        - ${s}`);
    }
  }
  lines.push("", "Backends:");
  lines.push(`  krun: ${r.backends.krun.usable ? "usable" : "not usable"} (${r.backends.krun.reason})`);
  lines.push(`  qemu: ${r.backends.qemu.usable ? "usable" : "not usable"} (${r.backends.qemu.reason})`);
  lines.push("", 'A sandbox (backend "auto") gets:');
  for (const [network, c] of Object.entries(r.chosen)) lines.push(`  network "${network}": ${c.backend}: ${c.reason}`);
  return lines.join("\n");
}
