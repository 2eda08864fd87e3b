// msb doctor agrees with the helper's probe and with the decision create() makes, whatever this
// host has; and it explains what is missing.
import { execFile, execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { probeConfinement } from "../../src/vm/confinement-probe.js";
import { machineNeeds } from "../../src/vm/machine.js";
import { vmNetwork } from "../../src/vm/netpolicy.js";
import { probe } from "../../src/vm/probe.js";
import { decide, forcedAccel, hostFacts } from "../../src/vm/select.js";

const MSB = fileURLToPath(new URL("../../dist/cli/msb.js", import.meta.url));
const run = promisify(execFile);
const NOUNSHARE_C = fileURLToPath(new URL("../vm/fixtures/nounshare.c", import.meta.url));
const cc = spawnSync("cc", ["--version"]).status === 0;
const work = mkdtempSync(path.join(os.tmpdir(), "msb-doctor-"));
const confinementRow = (report: { checks: { name: string }[] }) => report.checks.find((c) => c.name === "confinement (QEMU)") as Check;

interface Check {
  name: string;
  ok: boolean;
  detail: string;
  solutions: string[];
}

afterAll(() => rmSync(work, { recursive: true, force: true }));

describe("msb doctor", () => {
  it("reports KVM, libkrun and libkrunfw as the probe finds them, and the backend create() would pick", async () => {
    const { stdout } = await run(process.execPath, [MSB, "doctor", "--json"]);
    const report = JSON.parse(stdout);
    const p = probe();
    const byName = (name: string) => report.checks.find((c: { name: string }) => c.name === name);
    if (process.platform === "linux") {
      expect(byName("KVM").ok).toBe(p.kvm.ok && !p.kvm.pvm && p.kvm.capabilities?.ok !== false);
      expect(byName("KVM").detail).toContain(p.kvm.detail);
      if (p.kvm.pvm) expect(byName("KVM").detail).toMatch(/KVM present but PVM .* needs a PVM guest kernel; using TCG/);
    }
    expect(byName("libkrun").ok).toBe(p.libkrun.ok);
    expect(byName("libkrun").detail).toContain(p.libkrun.ok ? p.libkrun.name : p.libkrun.detail);
    expect(byName("libkrunfw").ok).toBe(p.libkrunfw.ok);
    const accel = forcedAccel();
    const facts = await hostFacts({ backend: "auto", network: "none", ...(accel ? { accel } : {}) });
    for (const network of ["none", "public", "all"] as const) {
      const d = decide(facts, {
        backend: "auto",
        network: vmNetwork(network).network,
        needs: machineNeeds({ network, ports: [], volumes: [], confinement: "required" }),
        ...(accel ? { accel } : {}),
      });
      expect(report.chosen[network]).toEqual({ backend: d.backend === "qemu" ? `qemu (${d.accel})` : "krun", reason: d.reason });
    }
    expect(report.backends.krun.usable).toBe(report.chosen.all.backend === "krun");
  });

  it("prints the same as text, with possible solutions for what is missing", async () => {
    const { stdout } = await run(process.execPath, [MSB, "doctor"]);
    const report = JSON.parse((await run(process.execPath, [MSB, "doctor", "--json"])).stdout);
    for (const c of report.checks) {
      expect(stdout).toContain(`${c.ok ? "ok     " : "MISSING"} ${c.name}: ${c.detail}`);
      if (!c.ok) for (const s of c.solutions) expect(stdout).toContain(`- ${s}`);
    }
    expect(stdout).toContain(`network "none": ${report.chosen.none.backend}: ${report.chosen.none.reason}`);
    expect(stdout).toMatch(/krun: (usable|not usable)/);
  });

  it("says what is missing when the KVM device is", async () => {
    const env = { ...process.env, MSB_VMM_KVM_DEVICE: "/nonexistent/kvm", MSB_VMM_PVM_MODULE: "/nonexistent/kvm_pvm" };
    const { stdout } = await run(process.execPath, [MSB, "doctor"], { env });
    expect(stdout).toMatch(/MISSING KVM: open\(\/nonexistent\/kvm, O_RDWR\) failed: No such file or directory/);
    expect(stdout).toContain("sudo usermod -aG kvm");
    expect(stdout).toMatch(/network "none": qemu \(tcg\): .*no KVM \(open\(\/nonexistent\/kvm/);
  });

  it("names libkrun's generation and what it cannot do, from a library it can load", async () => {
    const env = { ...process.env, MSB_LIBKRUN_PATH: "libc.so.6" };
    const { stdout } = await run(process.execPath, [MSB, "doctor"], { env });
    expect(stdout).toMatch(/MISSING libkrun: libc.so.6 has no krun_\w+: not libkrun, or too old/);
    expect(stdout).toContain("Fedora: sudo dnf install libkrun");
  });

  it.skipIf(process.platform !== "linux")("has a confinement row that agrees with a real msb-vmm exec", async () => {
    const report = JSON.parse((await run(process.execPath, [MSB, "doctor", "--json"])).stdout);
    const row = confinementRow(report);
    const c = await probeConfinement();
    expect(row.ok).toBe(c.missing.length === 0);
    if (row.ok) {
      expect(row.detail).toMatch(/no_new_privs, network held by a seccomp supervisor$/);
      expect(row.detail).toContain(c.uid ? "mount namespace, own uid (as root)" : "user namespace");
    } else {
      for (const m of c.missing) expect(row.detail).toContain(m);
    }
    if (process.getuid?.() === 0) {
      expect(c).toEqual({ mode: "best-effort", namespaces: true, uid: true, noNewPrivs: true, seccomp: true, network: "supervisor", missing: [] });
      expect(row.detail).toBe("mount namespace, own uid (as root), no_new_privs, network held by a seccomp supervisor");
    }
  });

  // fixtures/nounshare.c makes unshare(2) fail as a container without CAP_SYS_ADMIN does.
  it.skipIf(process.platform !== "linux" || !cc)("says MISSING, with what to do, where the VMM may have no namespaces", async () => {
    const nounshare = path.join(work, "nounshare");
    execFileSync("cc", ["-static", "-O2", "-o", nounshare, NOUNSHARE_C]);
    const report = JSON.parse((await run(nounshare, [process.execPath, MSB, "doctor", "--json"])).stdout);
    const row = confinementRow(report);
    expect(row.ok).toBe(false);
    expect(row.detail).toMatch(/^a sandbox with confinement "required" \(the default\) fails here: namespaces: .*Operation not permitted/);
    const solutions = row.solutions.join("\n");
    expect(solutions).toContain("kernel.unprivileged_userns_clone=1");
    expect(solutions).toContain("user.max_user_namespaces");
    expect(solutions).toContain("CAP_SYS_ADMIN and a seccomp profile that allows unshare");
    expect(solutions).toContain('confinement: "best-effort"');
    const { stdout } = await run(nounshare, [process.execPath, MSB, "doctor"]);
    expect(stdout).toContain(`MISSING confinement (QEMU): ${row.detail}`);
  });
});
