// Backend selection is a decision from facts: the VM helper's probe of each libkrun generation
// (the recording double), a simulated PVM host, the KVM device's capabilities, KVM trial
// verdicts. No VMs (the boots behind the decision are test/vm/fallback.test.ts's).
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { constants, tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

import { BackendUnavailableError, KrunStartError, VmBootError } from "../../src/errors.js";
import { kvmCapabilities } from "../../src/native.js";
import type { NetworkMode, VmConfig } from "../../src/vm/backend.js";
import { type ProbeReport, probe } from "../../src/vm/probe.js";
import { backendFor, decide, type HostFacts } from "../../src/vm/select.js";
import { doubleEnv, doublesForFile, GENERATIONS, type Generation } from "../native/double.js";

const doubles = doublesForFile();

const linux = (p: ProbeReport, kvmTrial?: HostFacts["kvmTrial"]): HostFacts => ({ platform: "linux", probe: p, ...(kvmTrial ? { kvmTrial } : {}) });
const doubleProbe = (gen: Generation) => probe({ ...process.env, ...doubleEnv(doubles().lib[gen]) });

describe("the libkrun double, generation by generation", () => {
  // What "auto" picks with a usable KVM, for each network mode; the QEMU side is settled by a
  // KVM trial verdict, here a failed one.
  const expected: Record<Generation, Record<NetworkMode, string>> = {
    "1.18": { none: "krun virtiofs", all: "krun virtiofs" },
    "1.17": { none: "krun disk", all: "krun disk" },
    "1.10": { none: "qemu tcg", all: "krun disk" },
    "1.9.5": { none: "qemu tcg", all: "krun disk" },
    "1.8": { none: "qemu tcg", all: "qemu tcg" },
  };
  const matrix: string[] = [];
  afterAll(() => console.log(`backend "auto" by libkrun generation:\n${matrix.join("\n")}`));

  it.each(Object.keys(GENERATIONS) as Generation[])("libkrun %s: auto picks a backend that then boots without refusal", async (gen) => {
    const p = doubleProbe(gen);
    expect(p.libkrun).toMatchObject({ ok: true, name: doubles().lib[gen], generation: gen });
    for (const network of ["none", "all"] as const) {
      const d = decide(linux(p, { ok: false, detail: "simulated" }), { backend: "auto", network });
      const got = d.backend === "krun" ? `krun ${d.imageShare}` : `qemu ${d.accel}`;
      matrix.push(`  ${gen.padEnd(6)} network ${network.padEnd(4)} -> ${got.padEnd(13)} ${d.reason}`);
      expect(got).toBe(expected[gen][network]);
      if (d.backend !== "krun") continue;
      // The helper really takes the chosen path: its VM starts (the double then ends it at once).
      const log = path.join(doubles().dir, `calls-${gen}-${network}.log`);
      Object.assign(process.env, doubleEnv(doubles().lib[gen], log));
      const config: VmConfig = {
        name: "select-test",
        memory: 128,
        cpus: 1,
        network,
        confinement: "best-effort",
        maxProcesses: 64,
        bootTimeout: 60,
        rootfs: "/images/x/rootfs",
        rootDisk: async () => "/images/x.ext4",
      };
      const err = await backendFor(d)
        .boot(config)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(VmBootError);
      expect(err).not.toBeInstanceOf(KrunStartError);
      const calls = readFileSync(log, "utf8");
      expect(calls).toContain(d.imageShare === "virtiofs" ? "krun_add_virtiofs3(" : "krun_add_disk");
      expect(calls).toContain("krun_start_enter(7)");
    }
  });

  it("refuses an explicit krun that cannot run, naming why and msb doctor", () => {
    const f = linux(doubleProbe("1.10"));
    expect(() => decide(f, { backend: "krun", network: "none" })).toThrow(BackendUnavailableError);
    expect(() => decide(f, { backend: "krun", network: "none" })).toThrow(/network "none" needs libkrun >= 1.17.*msb doctor/);
    expect(decide(f, { backend: "krun", network: "all" })).toMatchObject({ backend: "krun", imageShare: "disk" });
  });

  it("leaves a network held to a policy to QEMU, which enforces it", () => {
    const f = linux(doubleProbe("1.18"));
    expect(decide(f, { backend: "auto", network: "all" }).backend).toBe("krun");
    expect(decide(f, { backend: "auto", network: "all", needs: [{ capability: "egress-policy", why: "a network policy" }] })).toMatchObject({
      backend: "qemu",
    });
    expect(() => decide(f, { backend: "krun", network: "all", needs: [{ capability: "ports", why: "published ports" }] })).toThrow(/cannot do published ports/);
  });
});

describe("KVM", () => {
  const krun = () => doubleProbe("1.18");

  it("on a simulated PVM host: neither libkrun nor QEMU uses it, and the reason says so", () => {
    const p = krun();
    const pvm: ProbeReport = { ...p, kvm: { ...p.kvm, ok: true, pvm: true } };
    for (const network of ["none", "all"] as const) {
      const d = decide(linux(pvm), { backend: "auto", network });
      expect(d).toMatchObject({ backend: "qemu", accel: "tcg" });
      expect(d.fallback).toBeUndefined();
      expect(d.reason).toMatch(/libkrun not used \(KVM is the PVM hypervisor.*KVM present but PVM \(kvm_pvm\): it needs a PVM guest kernel; using TCG/);
    }
  });

  it("the helper's probe sees the PVM module", () => {
    const modules = mkdtempSync(path.join(tmpdir(), "msb-sys-"));
    try {
      expect(probe({ ...process.env, MSB_VMM_PVM_MODULE: modules }).kvm.pvm).toBe(true);
      expect(probe({ ...process.env, MSB_VMM_PVM_MODULE: path.join(modules, "none") }).kvm.pvm).toBe(false);
    } finally {
      rmSync(modules, { recursive: true });
    }
  });

  it("asks the KVM device what it can do, by ioctl: one that opens but makes no VM is used by neither backend", () => {
    // The addon on a device that opens read-write, as the helper checks, but is no KVM.
    expect(kvmCapabilities("/dev/null")).toMatchObject({
      ok: false,
      errno: constants.errno.ENOTTY,
      detail: expect.stringMatching(/^\/dev\/null is not a KVM device/),
    });
    expect(kvmCapabilities("/nonexistent/kvm")).toMatchObject({ ok: false, errno: constants.errno.ENOENT });
    const p = krun();
    const cannot = {
      ...p,
      kvm: {
        ...p.kvm,
        capabilities: { ok: false, errno: constants.errno.ENXIO, detail: "/dev/kvm cannot create a VM (KVM_CREATE_VM): No such device or address" },
      },
    };
    const d = decide(linux(cannot, { ok: true, detail: "booted" }), { backend: "auto", network: "none" });
    expect(d).toMatchObject({
      backend: "qemu",
      accel: "tcg",
      reason: expect.stringMatching(/libkrun not used \(KVM: \/dev\/kvm cannot create a VM.*KVM cannot run VMs here/),
    });
    expect(d.fallback).toBeUndefined();
    expect(() => decide(linux(cannot), { backend: "krun", network: "all" })).toThrow(/KVM: \/dev\/kvm cannot create a VM/);
    // The tests' stand-in device is opened, never asked; a device that does not open is not asked either.
    expect(p.kvm).toMatchObject({ ok: true, path: "/dev/null" });
    expect(p.kvm.capabilities).toBeUndefined();
    const real = probe({ ...process.env, MSB_VMM_KVM_DEVICE: "", MSB_VMM_PVM_MODULE: "/nonexistent" });
    expect(real.kvm.capabilities === undefined).toBe(!real.kvm.ok);
  });

  it("QEMU uses KVM only after a passed trial boot, with TCG as the fallback", () => {
    const p = { ...krun(), libkrun: { ...krun().libkrun, ok: false, detail: "absent" } };
    expect(decide(linux(p, { ok: true, detail: "booted to init in 90 ms" }), { backend: "auto", network: "none" })).toMatchObject({
      backend: "qemu",
      accel: "kvm",
      fallback: { backend: "qemu", accel: "tcg" },
    });
    expect(decide(linux(p, { ok: false, detail: "no marker" }), { backend: "auto", network: "none" })).toMatchObject({
      accel: "tcg",
      reason: expect.stringMatching(/KVM failed its trial boot \(no marker\)/),
    });
    const noKvm = { ...p, kvm: { ...p.kvm, ok: false, detail: "open(/dev/kvm, O_RDWR) failed: No such file or directory" } };
    expect(decide(linux(noKvm), { backend: "qemu", network: "all" }).reason).toMatch(/^backend qemu requested; no KVM \(open\(\/dev\/kvm/);
    expect(decide(linux(p), { backend: "auto", network: "none", accel: "kvm" })).toMatchObject({
      accel: "kvm",
      reason: expect.stringMatching(/MSB_QEMU_ACCEL=kvm/),
    });
  });
});
