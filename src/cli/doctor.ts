// msb doctor: what this host has and lacks for each backend, with what to do about it.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";

import { agentBinaryPath } from "../vm/agent-binary.js";
import { probe } from "../native.js";
import { cacheDir } from "../paths.js";
import { krunUnavailable } from "../vm/krun.js";
import { vmmHelperPath } from "../vm/helper.js";

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
  checks: Check[];
}

function check(name: string, fn: () => string, solutions: string[]): Check {
  try {
    return { name, ok: true, detail: fn(), solutions: [] };
  } catch (err) {
    return { name, ok: false, detail: (err as Error).message.split("\n")[0]!, solutions };
  }
}

export function doctor(): DoctorReport {
  const p = probe();
  const linux = process.platform === "linux";
  const qemuBinary = process.env.MSB_QEMU ?? "qemu-system-x86_64";
  const checks: Check[] = [];
  if (linux) {
    checks.push({
      name: "KVM",
      ok: p.kvm.ok,
      detail: p.kvm.detail,
      solutions: [
        `join the kvm group: sudo usermod -aG kvm $USER, then log in again`,
        `or let the group have it with a udev rule: echo 'KERNEL=="kvm", GROUP="kvm", MODE="0660"' | sudo tee /etc/udev/rules.d/99-kvm.rules && sudo udevadm trigger`,
        "enable virtualization (VT-x / AMD-V) in the firmware; inside a VM, enable nested virtualization",
      ],
    });
  }
  checks.push({
    name: "libkrun",
    ok: p.libkrun.ok,
    detail: p.libkrun.ok
      ? `${p.libkrun.name}: entry points of libkrun >= ${p.libkrun.generation}` + (p.libkrun.networkNone ? "" : '; network "none" needs libkrun >= 1.17')
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
  checks.push(
    check("QEMU", () => execFileSync(qemuBinary, ["--version"], { encoding: "utf8" }).split("\n")[0]!, [
      "Debian / Ubuntu: sudo apt-get install qemu-system-x86",
      "Fedora: sudo dnf install qemu-system-x86-core",
      "macOS: brew install qemu",
      "or point MSB_QEMU at a qemu-system-x86_64",
    ]),
  );
  checks.push(
    check("guest kernel (QEMU)", () => {
      const kernelDir = `${cacheDir()}/kernel`;
      const version = existsSync(`${kernelDir}/current`) ? readFileSync(`${kernelDir}/current`, "utf8").trim() : "";
      const path = process.env.MSB_KERNEL ?? `${kernelDir}/${version}/vmlinux`;
      if (!version && !process.env.MSB_KERNEL) throw new Error(`no guest kernel in ${kernelDir}`);
      if (!existsSync(path)) throw new Error(`${path} is missing`);
      return path;
    }, [`on Debian: bash scripts/guest-kernel.sh ${cacheDir()}`, "or name an uncompressed vmlinux with MSB_KERNEL"]),
  );
  checks.push(check("guest agent", () => agentBinaryPath(), ["sudo apt-get install musl-tools libnanopb-dev nanopb protobuf-compiler, then npm rebuild microsandbox"]));
  checks.push(check("VM helper (msb-vmm)", () => vmmHelperPath(), ["npm rebuild microsandbox"]));

  const krun = krunUnavailable();
  const ok = (name: string) => checks.find((c) => c.name === name)?.ok ?? false;
  const qemuMissing = ["QEMU", "guest kernel (QEMU)", "guest agent", "VM helper (msb-vmm)"].filter((n) => !ok(n));
  return {
    platform: `${process.platform}/${process.arch}`,
    backends: {
      krun: { usable: !krun && ok("guest agent") && ok("VM helper (msb-vmm)"), reason: krun ?? "libkrun, libkrunfw and KVM are usable" },
      qemu: {
        usable: qemuMissing.length === 0,
        reason: qemuMissing.length ? `missing: ${qemuMissing.join(", ")}` : p.kvm.ok ? "with KVM (falls back to TCG if KVM cannot run guests)" : "with TCG emulation (slower: no KVM)",
      },
    },
    checks,
  };
}

/** The report as text, sharp-style: what was found, and "Possible solutions" for what was not. */
export function formatDoctor(r: DoctorReport): string {
  const lines = [`microsandbox doctor (${r.platform})`, ""];
  for (const c of r.checks) {
    lines.push(`${c.ok ? "ok     " : "MISSING"} ${c.name}: ${c.detail}`);
    if (!c.ok) {
      lines.push("        Possible solutions:");
      for (const s of c.solutions) lines.push(`        - ${s}`);
    }
  }
  lines.push("", "Backends:");
  lines.push(`  krun: ${r.backends.krun.usable ? "usable" : "not usable"} (${r.backends.krun.reason})`);
  lines.push(`  qemu: ${r.backends.qemu.usable ? "usable" : "not usable"} (${r.backends.qemu.reason})`);
  return lines.join("\n");
}
