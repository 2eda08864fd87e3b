// KrunBackend from the TypeScript side down to libkrun's C API: the real
// msb-vmm helper runs against the recording test double of libkrun (test/native/libkrun-double.c).
// No VM runs here (the double's krun_start_enter records and exits, like a VM that ended).
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

import { KrunStartError, VmBootError } from "../../src/errors.js";
import { BootConfigSchema } from "../../src/gen/agent_pb.js";
import { KrunConfig_Network } from "../../src/gen/vmm_pb.js";
import type { VmConfig } from "../../src/vm/backend.js";
import { encodeBootConfig } from "../../src/vm/guest.js";
import { AGENT_VSOCK_PORT, KrunBackend, krunBootConfig, krunConfig } from "../../src/vm/krun.js";
import { buildDoubles, type Doubles, doubleEnv, type Generation } from "../native/double.js";

let doubles: Doubles;
const saved = { ...process.env };

const config = (over: Partial<VmConfig> = {}): VmConfig => ({
  name: "krun-test",
  memory: 384,
  cpus: 2,
  network: "none",
  // libkrun's VMM has no jail: it runs only best-effort.
  confinement: "best-effort",
  maxProcesses: 512,
  rootfs: "/images/python/rootfs",
  rootDisk: async () => "/images/python.ext4",
  bootTimeout: 10,
  ...over,
});

beforeAll(() => {
  doubles = buildDoubles();
});

afterEach(() => {
  for (const k of ["MSB_LIBKRUN_PATH", "MSB_LIBKRUNFW_PATH", "MSB_VMM_KVM_DEVICE", "MSB_VMM_PVM_MODULE", "KRUN_DOUBLE_LOG", "KRUN_DOUBLE_FAIL"]) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
});

afterAll(() => doubles?.remove());

/** Points the helper at the libkrun double of `gen`; returns the call log path. */
function useDouble(gen: Generation = "1.18"): string {
  const log = path.join(doubles.dir, `calls-${Math.random().toString(16).slice(2)}.log`);
  Object.assign(process.env, doubleEnv(doubles.lib[gen], log));
  return log;
}

describe("the launch config", () => {
  it("runs the agent on vsock and assembles the root from the read-only image share", () => {
    const c = krunConfig(config(), { boot: "/run/x/root", socket: "/run/x/agent.sock", consoleLog: "/run/x/console.log" }, { dir: "/images/python/rootfs" });
    expect(c).toMatchObject({
      cpus: 2,
      memoryMib: 384,
      rootDir: "/run/x/root",
      imageDir: "/images/python/rootfs",
      imageTag: "msb-image",
      vsockPort: AGENT_VSOCK_PORT,
      vsockSocket: "/run/x/agent.sock",
      network: KrunConfig_Network.NONE,
      execPath: "/msb-agent",
      // Nothing on libkrun's argv (it ends up on the guest kernel's command line): the agent
      // boots as the BootConfig in its root says.
      argv: [],
    });
    expect(krunConfig(config({ network: "all" }), { boot: "", socket: "", consoleLog: "" }, { dir: "/i" }).network).toBe(KrunConfig_Network.ALL);
    const boot = fromBinary(BootConfigSchema, encodeBootConfig(krunBootConfig(config(), { dir: "/images/python/rootfs" })));
    expect(boot).toMatchObject({
      channel: { case: "vsockPort", value: AGENT_VSOCK_PORT },
      image: { case: "virtiofs", value: "msb-image" },
      maxProcesses: 512,
      volumes: [],
    });
  });

  it("attaches the image disk instead where libkrun has no read-only virtio-fs, and the agent mounts it", () => {
    const c = krunConfig(config(), { boot: "/b", socket: "/s", consoleLog: "/c" }, { disk: "/images/python.ext4" });
    expect(c).toMatchObject({ imageDisk: "/images/python.ext4", imageTag: "msb-image" });
    expect(c.imageDir).toBeUndefined();
    expect(krunBootConfig(config(), { disk: "/images/python.ext4" }).image).toEqual({ case: "disk", value: "/dev/vda" });
  });
});

describe("KrunBackend against the libkrun double", () => {
  it("makes libkrun's calls for the sandbox, then reports a VM that ended before its agent connected", async () => {
    const log = useDouble();
    const err = await new KrunBackend({ imageShare: "virtiofs" }).boot(config()).catch((e: unknown) => e);
    // The double's krun_start_enter exits like a VM that ended before its agent connected.
    expect(err).toBeInstanceOf(VmBootError);
    expect((err as Error).message).toMatch(/did not boot on krun: libkrun exited before the agent was ready/);
    const calls = readFileSync(log, "utf8").trim().split("\n");
    const names = calls.map((l) => l.split("(")[0]);
    expect(names).toEqual([
      "krun_init_log",
      "krun_create_ctx",
      "krun_set_vm_config",
      "krun_set_root",
      "krun_add_virtiofs3",
      "krun_disable_implicit_vsock",
      "krun_add_vsock",
      "krun_add_vsock_port2",
      "krun_set_exec",
      "krun_set_workdir",
      "krun_set_console_output",
      "krun_start_enter",
    ]);
    const call = (name: string) => calls.find((l) => l.startsWith(`${name}(`))!;
    expect(call("krun_set_vm_config")).toMatch(/, 2, 384\)$/);
    expect(call("krun_add_virtiofs3")).toContain('"msb-image", "/images/python/rootfs", 0, true');
    expect(call("krun_add_vsock")).toMatch(/, 0\)$/); // no TSI: network "none"
    expect(call("krun_set_exec")).toContain('"/msb-agent", [], ["PATH=');
    // The boot directory the guest got as its root is gone again.
    const root = /krun_set_root\(\d+, "([^"]+)"\)/.exec(call("krun_set_root"))![1]!;
    expect(existsSync(root)).toBe(false);
  });

  it("turns a failing libkrun call into a typed error naming the step", async () => {
    useDouble();
    process.env.KRUN_DOUBLE_FAIL = "krun_set_vm_config:-22";
    const err = await new KrunBackend({ imageShare: "virtiofs" }).boot(config()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KrunStartError);
    expect(err).toMatchObject({ code: "MSB_KRUN_START", step: "krun_set_vm_config", errnum: 22 });
  });

  it("attaches the image disk read-only on a libkrun without read-only virtio-fs (1.17), and the agent mounts it", async () => {
    const log = useDouble("1.17");
    const err = await new KrunBackend({ imageShare: "disk" }).boot(config()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmBootError); // the double's VM ends at once; nothing refused it
    const calls = readFileSync(log, "utf8");
    expect(calls).toContain('krun_add_disk2(7, "msb-image", "/images/python.ext4", 0, true)');
    expect(calls).toContain("krun_start_enter(7)");
  });
});
