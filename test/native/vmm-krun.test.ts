// msb-vmm's libkrun mode against a recording test double of libkrun (test/native/libkrun-double.c,
// built here in several generations): the exact calls it makes, what it refuses, and the
// KrunStatus it reports. No VM runs: krun_start_enter in the double records and exits.
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { constants } from "node:os";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { lengthPrefixed } from "../../src/agent-client/protocol.js";
import { KrunConfig_Network, KrunConfigSchema, KrunStatusSchema } from "../../src/gen/vmm_pb.js";
import { vmmHelperPath } from "../../src/native.js";
import { buildDoubles, type Doubles, doubleEnv, type Generation } from "./double.js";

const HELPER = vmmHelperPath();
const { EINVAL, ENOENT, ENOTSUP, EMSGSIZE, ENOMEM, ESRCH } = constants.errno;

let doubles: Doubles;
let libs: Record<Generation, string>;
let runs = 0;

beforeAll(() => {
  if (!existsSync(HELPER)) throw new Error(`${HELPER} is missing: run npm run compile`);
  doubles = buildDoubles();
  libs = doubles.lib;
});

afterAll(() => doubles?.remove());

type KrunConfigInit = MessageInitShape<typeof KrunConfigSchema>;

const DEFAULT_CONFIG: KrunConfigInit = {
  logLevel: 0,
  cpus: 1,
  memoryMib: 512,
  rootDir: "/srv/sb/root",
  imageDir: "/srv/images/python",
  imageTag: "msb-image",
  vsockPort: 2695,
  vsockSocket: "/run/sb/agent.sock",
  network: KrunConfig_Network.ALL,
  execPath: "/msb-agent",
  argv: ["--krun"],
  consoleLog: "/run/sb/console.log",
};

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Bytes read from the status descriptor before end-of-file. */
  statusBytes: number;
  status: { step: string; errnum: number; message: string } | null;
  /** The double's record, one call (or probe) a line. */
  calls: string[];
  stderr: string;
}

const frame = lengthPrefixed;

function encodeConfig(fields: KrunConfigInit): Buffer {
  return frame(toBinary(KrunConfigSchema, create(KrunConfigSchema, fields)));
}

async function runHelper(opts: {
  config?: KrunConfigInit;
  raw?: Buffer;
  lib?: Generation | string;
  env?: Record<string, string>;
  parent?: number;
}): Promise<Run> {
  const log = path.join(doubles.dir, `calls-${++runs}.log`);
  const lib = opts.lib === undefined ? libs["1.18"] : (libs[opts.lib as Generation] ?? opts.lib);
  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    ...doubleEnv(lib, log),
    KRUN_DOUBLE_PROBE_FDS: "3,4",
    ...opts.env,
  };
  const args = ["krun", String(opts.parent ?? process.pid), "3", "4"];
  const child = spawn(HELPER, args, { env, stdio: ["ignore", "inherit", "pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (s: string) => (stderr += s));
  const status: Buffer[] = [];
  (child.stdio[4] as Readable).on("data", (b: Buffer) => status.push(b));
  const statusEnd = new Promise<void>((resolve) => (child.stdio[4] as Readable).on("close", () => resolve()));
  const config = child.stdio[3] as Writable;
  config.on("error", () => {}); // the helper may exit before reading it all
  config.end(opts.raw ?? encodeConfig({ ...DEFAULT_CONFIG, ...opts.config }));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on("exit", (c, s) => resolve([c, s])));
  await statusEnd;
  const bytes = Buffer.concat(status);
  let decoded: Run["status"] = null;
  if (bytes.length > 0) {
    expect(bytes.length).toBe(4 + bytes.readUInt32BE(0));
    const { step, errnum, message } = fromBinary(KrunStatusSchema, bytes.subarray(4));
    decoded = { step, errnum, message };
  }
  const calls = existsSync(log) ? readFileSync(log, "utf8").split("\n").filter(Boolean) : [];
  return { code, signal, statusBytes: bytes.length, status: decoded, calls, stderr };
}

// What every successful run ends with: the VM entered after both descriptors were closed.
const ENTER = ["krun_start_enter(7)", "fd 3 closed", "fd 4 closed"];

describe("msb-vmm krun: call sequence", () => {
  it("configures a default sandbox (network all, image directory) and enters the VM", async () => {
    const r = await runHelper({});
    expect(r.calls).toEqual([
      "krun_init_log(-1, 0, 0, 1)",
      "krun_create_ctx()",
      "krun_set_vm_config(7, 1, 512)",
      'krun_set_root(7, "/srv/sb/root")',
      'krun_add_virtiofs3(7, "msb-image", "/srv/images/python", 0, true)',
      'krun_add_vsock_port2(7, 2695, "/run/sb/agent.sock", false)',
      'krun_set_exec(7, "/msb-agent", ["--krun"], [])',
      'krun_set_console_output(7, "/run/sb/console.log")',
      ...ENTER,
    ]);
    // End-of-file without a message: the VM was starting.
    expect(r.statusBytes).toBe(0);
    expect(r.code).toBe(0);
  });

  it("passes cpus, memory and the log level", async () => {
    const r = await runHelper({ config: { cpus: 4, memoryMib: 2048, logLevel: 3 } });
    expect(r.calls.slice(0, 3)).toEqual(["krun_init_log(-1, 3, 0, 1)", "krun_create_ctx()", "krun_set_vm_config(7, 4, 2048)"]);
  });

  it("turns networking off with an explicit vsock without TSI", async () => {
    const r = await runHelper({ config: { network: KrunConfig_Network.NONE } });
    expect(r.calls).toEqual([
      "krun_init_log(-1, 0, 0, 1)",
      "krun_create_ctx()",
      "krun_set_vm_config(7, 1, 512)",
      'krun_set_root(7, "/srv/sb/root")',
      'krun_add_virtiofs3(7, "msb-image", "/srv/images/python", 0, true)',
      "krun_disable_implicit_vsock(7)",
      "krun_add_vsock(7, 0)",
      'krun_add_vsock_port2(7, 2695, "/run/sb/agent.sock", false)',
      'krun_set_exec(7, "/msb-agent", ["--krun"], [])',
      'krun_set_console_output(7, "/run/sb/console.log")',
      ...ENTER,
    ]);
  });

  it("passes rlimits, argv, env and workdir through", async () => {
    const r = await runHelper({
      config: {
        rlimits: ["RLIMIT_NOFILE=1024:4096", "RLIMIT_NPROC=512:512"],
        argv: ["--krun", "--session", "a b"],
        env: ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        workdir: "/work",
      },
    });
    expect(r.calls.slice(6, -3)).toEqual([
      'krun_set_rlimits(7, ["RLIMIT_NOFILE=1024:4096", "RLIMIT_NPROC=512:512"])',
      'krun_set_exec(7, "/msb-agent", ["--krun", "--session", "a b"], ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"])',
      'krun_set_workdir(7, "/work")',
      'krun_set_console_output(7, "/run/sb/console.log")',
    ]);
  });

  it("never passes a NULL environment (libkrun would copy the helper's own)", async () => {
    const r = await runHelper({ config: { argv: [], env: [] }, env: { SECRET_TOKEN: "s3cr3t" } });
    expect(r.calls).toContain('krun_set_exec(7, "/msb-agent", [], [])');
    expect(r.calls.join("\n")).not.toContain("s3cr3t");
  });

  it("shares an image disk read-only as raw when virtiofs3 is missing (libkrun 1.17)", async () => {
    const r = await runHelper({ lib: "1.17", config: { imageDisk: "/srv/images/python.ext4" } });
    expect(r.calls).toContain('krun_add_disk2(7, "msb-image", "/srv/images/python.ext4", 0, true)');
    expect(r.calls.some((c) => c.startsWith("krun_add_virtiofs"))).toBe(false);
    expect(r.code).toBe(0);
  });
});

describe("msb-vmm krun: libkrun generations", () => {
  const disk = { imageDisk: "/srv/images/python.ext4" };
  const tail = ['krun_set_exec(7, "/msb-agent", ["--krun"], [])', 'krun_set_console_output(7, "/run/sb/console.log")', ...ENTER];
  const head = ["krun_create_ctx()", "krun_set_vm_config(7, 1, 512)", 'krun_set_root(7, "/srv/sb/root")'];
  const cases: [Generation, string[]][] = [
    [
      "1.18",
      [
        "krun_init_log(-1, 0, 0, 1)",
        ...head,
        'krun_add_virtiofs3(7, "msb-image", "/srv/images/python", 0, true)',
        'krun_add_vsock_port2(7, 2695, "/run/sb/agent.sock", false)',
        ...tail,
      ],
    ],
    [
      "1.17",
      [
        "krun_init_log(-1, 0, 0, 1)",
        ...head,
        'krun_add_disk2(7, "msb-image", "/srv/images/python.ext4", 0, true)',
        'krun_add_vsock_port2(7, 2695, "/run/sb/agent.sock", false)',
        ...tail,
      ],
    ],
    [
      "1.10",
      [
        "krun_set_log_level(0)",
        ...head,
        'krun_add_disk2(7, "msb-image", "/srv/images/python.ext4", 0, true)',
        'krun_add_vsock_port2(7, 2695, "/run/sb/agent.sock", false)',
        ...tail,
      ],
    ],
    [
      "1.9.5",
      [
        "krun_set_log_level(0)",
        ...head,
        'krun_add_disk(7, "msb-image", "/srv/images/python.ext4", true)',
        'krun_add_vsock_port(7, 2695, "/run/sb/agent.sock")',
        ...tail,
      ],
    ],
  ];
  it.each(cases)("libkrun %s: image directory and disk given, network all", async (gen, expected) => {
    const r = await runHelper({ lib: gen, config: disk });
    expect(r.calls).toEqual(expected);
    expect(r.statusBytes).toBe(0);
  });
});

describe("msb-vmm krun: refusals", () => {
  it.each(["1.10", "1.9.5"] as Generation[])("refuses network none on libkrun %s, before any call", async (gen) => {
    const r = await runHelper({ lib: gen, config: { network: KrunConfig_Network.NONE, imageDisk: "/srv/images/python.ext4" } });
    expect(r.code).toBe(1);
    expect(r.status).toMatchObject({ step: "network", errnum: ENOTSUP });
    expect(r.status!.message).toContain("libkrun >= 1.17");
    expect(r.calls).toEqual([]);
  });

  it("refuses an image directory without virtiofs3 and without a disk", async () => {
    const r = await runHelper({ lib: "1.17" });
    expect(r.status).toMatchObject({ step: "image", errnum: ENOTSUP });
    expect(r.status!.message).toContain("read-only");
    expect(r.calls).toEqual([]);
  });

  it("refuses an image on a libkrun with neither virtiofs3 nor disks (1.8)", async () => {
    const r = await runHelper({ lib: "1.8", config: { imageDisk: "/srv/images/python.ext4" } });
    expect(r.code).toBe(1);
    expect(r.status).toMatchObject({ step: "image", errnum: ENOTSUP });
    expect(r.calls).toEqual([]);
  });
});

describe("msb-vmm krun: failures reported on the status descriptor", () => {
  it("reports a failing libkrun call with its errno and stops there", async () => {
    const r = await runHelper({ env: { KRUN_DOUBLE_FAIL: "krun_set_vm_config:-22" } });
    expect(r.code).toBe(1);
    expect(r.status).toEqual({ step: "krun_set_vm_config", errnum: EINVAL, message: "krun_set_vm_config failed: Invalid argument" });
    expect(r.calls).toEqual(["krun_init_log(-1, 0, 0, 1)", "krun_create_ctx()", "krun_set_vm_config(7, 1, 512)"]);
  });

  it("reports a failing krun_create_ctx", async () => {
    const r = await runHelper({ env: { KRUN_DOUBLE_FAIL: "krun_create_ctx:-12" } });
    expect(r.status).toMatchObject({ step: "krun_create_ctx", errnum: ENOMEM });
  });

  it("reports krun_start_enter returning on stderr (the status descriptor is closed by then)", async () => {
    const r = await runHelper({ env: { KRUN_DOUBLE_FAIL: "krun_start_enter:-22" } });
    expect(r.code).toBe(1);
    expect(r.statusBytes).toBe(0);
    expect(r.calls.slice(-3)).toEqual(ENTER);
    expect(r.stderr).toContain("krun_start_enter failed: Invalid argument");
  });

  it("reports a missing KVM device before loading libkrun", async () => {
    const r = await runHelper({ env: { MSB_VMM_KVM_DEVICE: "/nonexistent/kvm" } });
    expect(r.code).toBe(1);
    expect(r.status).toMatchObject({ step: "kvm", errnum: ENOENT });
    expect(r.status!.message).toContain("open(/nonexistent/kvm, O_RDWR) failed");
    expect(r.calls).toEqual([]);
  });

  it("reports a missing library", async () => {
    const r = await runHelper({ lib: "/nonexistent/libkrun.so.1" });
    expect(r.status).toMatchObject({ step: "dlopen" });
    expect(r.status!.message).toContain("dlopen(/nonexistent/libkrun.so.1) failed");
    expect(r.status!.errnum).toBeGreaterThan(0);
  });

  it("tells a library that is not libkrun", async () => {
    const r = await runHelper({ lib: "libc.so.6" });
    expect(r.status).toMatchObject({ step: "dlsym" });
    expect(r.status!.message).toContain("has no krun_");
  });

  it("reports a garbage config", async () => {
    const r = await runHelper({ raw: frame(Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff])) });
    expect(r.code).toBe(1);
    expect(r.status).toMatchObject({ step: "config", errnum: EINVAL });
    expect(r.status!.message).toContain("cannot decode KrunConfig");
    expect(r.calls).toEqual([]);
  });

  it("bounds the config frame at 1 MiB", async () => {
    const head = Buffer.alloc(4);
    head.writeUInt32BE((1 << 20) + 1);
    const r = await runHelper({ raw: head });
    expect(r.status).toMatchObject({ step: "config", errnum: EMSGSIZE });
  });

  it("reports a truncated config", async () => {
    const r = await runHelper({ raw: encodeConfig(DEFAULT_CONFIG).subarray(0, 20) });
    expect(r.status).toMatchObject({ step: "config" });
    expect(r.status!.message).toMatch(/ended after 16 of \d+ bytes/);
  });

  it.each([
    [{ cpus: 0 }, "cpus must be 1..255"],
    [{ cpus: 256 }, "cpus must be 1..255"],
    [{ rootDir: "" }, "root_dir is empty"],
    [{ imageTag: "" }, "image_tag is empty"],
    [{ env: ['A="x"'] }, "cannot contain"],
    // Everything libkrun puts on the guest's kernel command line must not be able to add to it.
    [{ workdir: "/w KRUN_INIT=/bin/sh" }, "cannot contain spaces"],
    [{ execPath: "/msb-agent init=/bin/sh" }, "cannot contain spaces"],
    [{ env: ["KRUN_INIT=/bin/sh"] }, "must be NAME=value and not set KRUN_*"],
    [{ env: ["init=/bin/sh"] }, "must be NAME=value"],
    [{ env: ["--"] }, "must be NAME=value"],
    [{ rlimits: ["RLIMIT_NOFILE=1:2,RLIMIT_NPROC=0:0"] }, "without commas"],
    [{ imageTag: "/dev/root" }, "libkrun's own root tag"],
  ])("refuses an invalid config %j", async (config, message) => {
    const r = await runHelper({ config });
    expect(r.status).toMatchObject({ step: "config", errnum: EINVAL });
    expect(r.status!.message).toContain(message);
    expect(r.calls).toEqual([]);
  });

  it("stops when PARENT_PID is not its parent", async () => {
    const r = await runHelper({ parent: 1 });
    expect(r.code).toBe(1);
    expect(r.status).toMatchObject({ step: "parent", errnum: ESRCH });
    expect(r.calls).toEqual([]);
  });
});
