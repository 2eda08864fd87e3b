// Boots behind the decision (test/vm/select.test.ts has the decision itself): the KVM trial boot
// and its kept verdict, and a boot that dies before its agent is ready being booted again as the
// decision's fallback. Real QEMU (stand-ins where KVM must fail), and the libkrun double.
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";

import { VmBootError } from "../../src/errors.js";
import { ImageStore } from "../../src/images/store.js";
import { guestBoot } from "../../src/vm/guest.js";
import { kvmTrial } from "../../src/vm/kvm-trial.js";
import { bootDecided, type MachineSpec } from "../../src/vm/machine.js";
import { doubleEnv, doublesForFile } from "../native/double.js";

const doubles = doublesForFile();

describe("the KVM trial", () => {
  it("the trial boot's verdict is kept per host kernel, QEMU and guest kernel", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "msb-trial-"));
    try {
      const { kernel } = await guestBoot();
      // Stand-ins for QEMU under a KVM that works and one that aborts (jailed like QEMU: their
      // directory must be open to the VM's uid).
      chmodSync(dir, 0o755);
      const fake = (name: string, body: string, version = name) => {
        const f = path.join(dir, name);
        writeFileSync(f, `#!/bin/sh\ncase "$1" in --version) echo "QEMU emulator version 7.2.99 (${version})"; exit 0;; esac\n${body}\n`, { mode: 0o755 });
        return f;
      };
      Object.assign(process.env, { MSB_CACHE_DIR: path.join(dir, "cache"), MSB_KERNEL: kernel, MSB_QEMU: fake("good-kvm", "echo MSB-FLOOR-MARKER") });
      const good = await kvmTrial();
      expect(good).toMatchObject({ ok: true, detail: expect.stringMatching(/^booted to init in \d+ ms$/) });
      // The same QEMU version, now unable to boot: the kept verdict answers, no second boot.
      fake("good-kvm", "exit 1", "good-kvm");
      expect(await kvmTrial()).toEqual(good);
      const files = readdirSync(path.join(dir, "cache", "kvm-trial"));
      expect(files).toHaveLength(1);
      expect(JSON.parse(readFileSync(path.join(dir, "cache", "kvm-trial", files[0]!), "utf8"))).toEqual(good);
      // Another QEMU is another verdict.
      process.env.MSB_QEMU = fake("bad-kvm", 'echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2; exit 1');
      const bad = await kvmTrial();
      expect(bad.ok).toBe(false);
      expect(bad.detail).toContain("failed to set MSR 0x10a");
      expect(readdirSync(path.join(dir, "cache", "kvm-trial"))).toHaveLength(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

const spec: MachineSpec = {
  name: "select-test",
  memory: 128,
  cpus: 1,
  network: "none",
  // libkrun's VMM has no jail: the fallback from it is tested best-effort.
  confinement: "best-effort",
  secrets: [],
  ports: [],
  maxProcesses: 64,
  bootTimeout: 60,
  volumes: [],
  backend: "auto",
};
const busybox = async () => {
  const store = new ImageStore();
  const image = (await store.lookup("local:busybox"))!;
  return { id: image.id, rootfs: image.rootfs, disk: () => store.disk(image) };
};

describe("fallback", () => {
  it("boots the fallback in the same call when the first choice dies before its agent is ready", async () => {
    // libkrun (the double: its VM ends at once), then QEMU under TCG.
    Object.assign(process.env, doubleEnv(doubles().lib["1.18"]));
    const { machine } = await bootDecided(
      { backend: "krun", imageShare: "virtiofs", reason: "test", fallback: { backend: "qemu", accel: "tcg", reason: "libkrun failed to boot; TCG" } },
      spec,
      await busybox(),
    );
    try {
      expect(machine.info).toMatchObject({
        name: "qemu",
        accel: "tcg",
        reason: expect.stringMatching(/^libkrun failed to boot; TCG \(sandbox select-test did not boot on krun/),
      });
      expect((await machine.agent.exec(["echo", "fell back"])).stdout.toString()).toBe("fell back\n");
    } finally {
      await machine.stop();
    }
  });

  it("a KVM boot that fails is retried under TCG and remembered for this host", async () => {
    const image = await busybox();
    const { kernel } = await guestBoot();
    const dir = mkdtempSync(path.join(tmpdir(), "msb-kvmfail-"));
    chmodSync(dir, 0o755); // QEMU runs jailed, as the VM's uid
    // A QEMU that aborts under KVM as nested hosts' do, and is the real one otherwise.
    const qemu = path.join(dir, "qemu");
    writeFileSync(
      qemu,
      `#!/bin/sh\ncase "$*" in *"-accel kvm"*) echo "qemu-system-x86_64: error: failed to set MSR 0x10a" >&2; exit 1;; esac\nexec qemu-system-x86_64 "$@"\n`,
      { mode: 0o755 },
    );
    Object.assign(process.env, { MSB_QEMU: qemu, MSB_CACHE_DIR: path.join(dir, "cache"), MSB_KERNEL: kernel });
    try {
      const d = {
        backend: "qemu" as const,
        accel: "kvm" as const,
        reason: "trial passed",
        fallback: { backend: "qemu" as const, accel: "tcg" as const, reason: "the KVM boot failed; retried under TCG" },
      };
      const { machine } = await bootDecided(d, spec, image);
      try {
        expect(machine.info).toMatchObject({
          name: "qemu",
          accel: "tcg",
          reason: expect.stringMatching(/the KVM boot failed; retried under TCG \(.*did not boot on qemu \(kvm\)/),
        });
      } finally {
        await machine.stop();
      }
      expect(await kvmTrial()).toMatchObject({ ok: false, detail: expect.stringMatching(/^a sandbox boot failed: /) });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("an explicit choice has no fallback: its failure is the caller's", async () => {
    Object.assign(process.env, doubleEnv(doubles().lib["1.18"]));
    const err = await bootDecided({ backend: "krun", imageShare: "virtiofs", reason: "backend krun requested" }, spec, {
      id: "x",
      rootfs: "/x",
      disk: async () => undefined,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmBootError);
    expect((err as Error).message).toMatch(/did not boot on krun/);
  });
});
