// KrunBackend and backend selection, from the TypeScript side down to libkrun's C API: the real
// msb-vmm helper runs against the recording test double of libkrun (test/native/libkrun-double.c).
// No VM runs here (the double's krun_start_enter records and exits, like a VM that ended).
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

import { BackendUnavailableError, KrunStartError } from "../../src/errors.js";
import { chooseBackend } from "../../src/sandbox/sandbox.js";
import type { VmConfig } from "../../src/vm/backend.js";
import { AGENT_VSOCK_PORT, KrunBackend, krunConfig } from "../../src/vm/krun.js";
import { QemuBackend } from "../../src/vm/qemu.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
let dir: string;
let double: string;
const saved = { ...process.env };

const config = (over: Partial<VmConfig> = {}): VmConfig => ({
  name: "krun-test",
  memory: 384,
  cpus: 2,
  network: "none",
  maxProcesses: 512,
  rootfs: "/images/python/rootfs",
  rootDisk: async () => "/unused.ext4",
  bootTimeout: 10,
  ...over,
});

beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), "msb-krun-ts-"));
  double = path.join(dir, "libkrun.so");
  const cc = spawnSync("cc", ["-shared", "-fPIC", "-DKRUN_DOUBLE_VERSION=11800", "-o", double, path.join(ROOT, "test/native/libkrun-double.c")], { encoding: "utf8" });
  if (cc.status !== 0) throw new Error(cc.stderr);
});

afterEach(() => {
  for (const k of ["MSB_LIBKRUN_PATH", "MSB_LIBKRUNFW_PATH", "MSB_VMM_KVM_DEVICE", "KRUN_DOUBLE_LOG", "KRUN_DOUBLE_FAIL"]) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Points libkrun, libkrunfw and the KVM device at stand-ins; returns the call log path. */
function useDouble(): string {
  const log = path.join(dir, `calls-${Math.random().toString(16).slice(2)}.log`);
  Object.assign(process.env, { MSB_LIBKRUN_PATH: double, MSB_LIBKRUNFW_PATH: double, MSB_VMM_KVM_DEVICE: "/dev/null", KRUN_DOUBLE_LOG: log });
  return log;
}

describe("the launch config", () => {
  it("runs the agent on vsock and assembles the root from the read-only image share", () => {
    const c = krunConfig(config(), { boot: "/run/x/root", socket: "/run/x/agent.sock", consoleLog: "/run/x/console.log" });
    expect(c).toMatchObject({
      cpus: 2,
      memoryMib: 384,
      rootDir: "/run/x/root",
      imageDir: "/images/python/rootfs",
      imageTag: "msb-image",
      vsockPort: AGENT_VSOCK_PORT,
      vsockSocket: "/run/x/agent.sock",
      network: 0,
      execPath: "/msb-agent",
      // libkrun's argv excludes the program itself.
      argv: ["--vsock", String(AGENT_VSOCK_PORT), "--root", "virtiofs:msb-image", "--pids", "512"],
    });
    expect(krunConfig(config({ network: "all" }), { boot: "", socket: "", consoleLog: "" }).network).toBe(1);
  });
});

describe("KrunBackend against the libkrun double", () => {
  it("makes libkrun's calls for the sandbox, then reports a VM that ended before its agent connected", async () => {
    const log = useDouble();
    const err = await new KrunBackend().boot(config()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KrunStartError);
    expect(err).toMatchObject({ step: "boot" });
    const calls = readFileSync(log, "utf8").trim().split("\n");
    const names = calls.map((l) => l.split("(")[0]);
    expect(names).toEqual([
      "krun_init_log", "krun_create_ctx", "krun_set_vm_config", "krun_set_root", "krun_add_virtiofs3",
      "krun_disable_implicit_vsock", "krun_add_vsock", "krun_add_vsock_port2", "krun_set_exec", "krun_set_workdir",
      "krun_set_console_output", "krun_start_enter",
    ]);
    const call = (name: string) => calls.find((l) => l.startsWith(`${name}(`))!;
    expect(call("krun_set_vm_config")).toMatch(/, 2, 384\)$/);
    expect(call("krun_add_virtiofs3")).toContain('"msb-image", "/images/python/rootfs", 0, true');
    expect(call("krun_add_vsock")).toMatch(/, 0\)$/); // no TSI: network "none"
    expect(call("krun_set_exec")).toContain(`"/msb-agent", ["--vsock", "${AGENT_VSOCK_PORT}", "--root", "virtiofs:msb-image", "--pids", "512"]`);
    // The boot directory the guest got as its root is gone again.
    const root = /krun_set_root\(\d+, "([^"]+)"\)/.exec(call("krun_set_root"))![1]!;
    expect(existsSync(root)).toBe(false);
  });

  it("turns a failing libkrun call into a typed error naming the step", async () => {
    useDouble();
    process.env.KRUN_DOUBLE_FAIL = "krun_set_vm_config:-22";
    const err = await new KrunBackend().boot(config()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KrunStartError);
    expect(err).toMatchObject({ code: "MSB_KRUN_START", step: "krun_set_vm_config", errnum: 22 });
  });
});

describe("backend selection", () => {
  it("uses QEMU and says why when libkrun is missing, and refuses an explicit krun", () => {
    process.env.MSB_LIBKRUN_PATH = "/nonexistent/libkrun.so.1";
    const { backend, reason } = chooseBackend({ backend: "auto", kernel: undefined });
    expect(backend).toBeInstanceOf(QemuBackend);
    expect(reason).toMatch(/libkrun not used \(.*libkrun.*dlopen/);
    expect(() => chooseBackend({ backend: "krun", kernel: undefined })).toThrow(BackendUnavailableError);
    expect(() => chooseBackend({ backend: "krun", kernel: undefined })).toThrow(/msb doctor/);
    expect(chooseBackend({ backend: "qemu", kernel: undefined }).reason).toBe("backend qemu requested");
  });

  it("picks libkrun when KVM, libkrun and libkrunfw are there", () => {
    useDouble();
    const { backend, reason } = chooseBackend({ backend: "auto", kernel: undefined });
    expect(backend).toBeInstanceOf(KrunBackend);
    expect(reason).toBe("libkrun and KVM are available");
  });
});
