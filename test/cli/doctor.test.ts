// msb doctor on this machine: what it finds, and advice for what it does not.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

import { probe } from "../../src/native.js";

const MSB = fileURLToPath(new URL("../../dist/cli/msb.js", import.meta.url));
const run = promisify(execFile);

describe("msb doctor", () => {
  it("reports KVM and libkrun as they are here, with possible solutions for what is missing", async () => {
    const { stdout } = await run(process.execPath, [MSB, "doctor"]);
    const p = probe();
    expect(stdout).toContain("/dev/kvm");
    expect(stdout).toMatch(p.kvm.ok ? /ok +KVM: \/dev\/kvm is readable and writable/ : /MISSING KVM: open\(\/dev\/kvm/);
    // No machine of this project has libkrun installed.
    expect(p.libkrun.ok).toBe(false);
    expect(stdout).toMatch(/MISSING libkrun: dlopen\(libkrun\.so\.1\) failed/);
    expect(stdout).toContain("Possible solutions:");
    expect(stdout).toContain("Fedora: sudo dnf install libkrun");
    expect(stdout).toContain("brew tap slp/krun");
    expect(stdout).toMatch(/krun: not usable \(libkrun: dlopen/);
    expect(stdout).toMatch(/qemu: usable/);
  });

  it("answers in JSON for programs", async () => {
    const { stdout } = await run(process.execPath, [MSB, "doctor", "--json"]);
    const report = JSON.parse(stdout);
    expect(report.backends.krun.usable).toBe(false);
    expect(report.backends.qemu.usable).toBe(true);
    const libkrun = report.checks.find((c: { name: string }) => c.name === "libkrun");
    expect(libkrun).toMatchObject({ ok: false, solutions: expect.arrayContaining(["Arch Linux: sudo pacman -S libkrun"]) });
  });

  it("says what is missing when the KVM device is", async () => {
    const { stdout } = await run(process.execPath, [MSB, "doctor"], { env: { ...process.env, MSB_VMM_KVM_DEVICE: "/nonexistent/kvm" } });
    expect(stdout).toMatch(/MISSING KVM: open\(\/nonexistent\/kvm, O_RDWR\) failed: No such file or directory/);
    expect(stdout).toContain("sudo usermod -aG kvm");
  });
});
