// CustomSandbox on the tiny busybox image: network modes, isolation, resource limits and clean
// stops (a VM dying with its creator is in test/sandbox/orphans.test.ts). Real VMs (QEMU; TCG here).
import { once } from "node:events";
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { CustomSandbox, ImageError, ImageStore, InvalidArgumentError, NetworkError, PythonSandbox, ResourceError } from "../../src/index.js";
import { ownRuntimeDirs } from "../../src/paths.js";
import { alive, childPids } from "./helpers.js";

// Every check here is of this process's own VMs, runtime dirs and children: other test files may
// be booting VMs at the same time.

let server: ReturnType<typeof createServer>;
let port: number;

beforeAll(async () => {
  server = createServer((s) => s.end("hello from the host\n"));
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  port = (server.address() as { port: number }).port;
});

afterAll(() => server?.close());

describe("network", () => {
  it('"none" has no route to the host; "all" reaches a server on it', async () => {
    const offline = await CustomSandbox.create({ image: "local:busybox", memory: 128 });
    const online = await CustomSandbox.create({ image: "local:busybox", memory: 128, network: "all" });
    try {
      // 10.0.2.2 is the host as QEMU's user-mode network shows it. (busybox-static's wget crashes
      // in this image, so nc makes the connection.)
      const fetch = ["-c", `nc -w 5 10.0.2.2 ${port} </dev/null`];
      const blocked = await offline.command.run("sh", fetch);
      expect(blocked.success).toBe(false);
      expect(await (await offline.command.run("ls", ["/sys/class/net"])).output()).toBe("lo");
      const reached = await online.command.run("sh", fetch);
      expect(await reached.output()).toBe("hello from the host");
    } finally {
      await Promise.all([offline.stop(), online.stop()]);
    }
  });
});

describe("network errors", () => {
  it('reports a QEMU without user-mode networking as a NetworkError for network "all"', async () => {
    // A stand-in for a QEMU built without libslirp: it refuses "-netdev user" as such builds do.
    const dir = mkdtempSync(path.join(tmpdir(), "msb-noslirp-"));
    chmodSync(dir, 0o755); // QEMU runs jailed, as the VM's uid
    const fake = path.join(dir, "qemu-without-slirp");
    writeFileSync(
      fake,
      `#!/bin/sh\ncase "$*" in *"-netdev user"*) echo "qemu-system-x86_64: -netdev user,id=net0: network backend 'user' is not compiled into this binary" >&2; exit 1;; esac\nexec qemu-system-x86_64 "$@"\n`,
      { mode: 0o755 },
    );
    process.env.MSB_QEMU = fake;
    try {
      const err = await CustomSandbox.create({ image: "local:busybox", memory: 128, network: "all" }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NetworkError);
      expect((err as Error).message).toMatch(/network "all".*libslirp/);
    } finally {
      delete process.env.MSB_QEMU;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("isolation and cleanup", () => {
  it("keeps two sandboxes apart and the image untouched, and leaves nothing behind", async () => {
    const dirsBefore = ownRuntimeDirs();
    const a = await CustomSandbox.create({ image: "local:busybox", memory: 128 });
    const b = await CustomSandbox.create({ image: "local:busybox", memory: 128 });
    const pids = [a.pid!, b.pid!];
    try {
      await a.command.run("sh", ["-c", "echo secret > /root/only-in-a; echo changed > /etc/hostname-a"]);
      expect(await (await a.command.run("cat", ["/root/only-in-a"])).output()).toBe("secret");
      const inB = await b.command.run("ls", ["/root"]);
      expect(await inB.output()).toBe("");
      const rootfs = (await new ImageStore().lookup("local:busybox"))!.rootfs;
      expect(existsSync(path.join(rootfs, "root", "only-in-a"))).toBe(false);
      expect(existsSync(path.join(rootfs, "etc", "hostname-a"))).toBe(false);
      expect(ownRuntimeDirs().length).toBe(dirsBefore.length + 2);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
    expect(pids.filter(alive)).toEqual([]);
    expect(ownRuntimeDirs()).toEqual(dirsBefore);
  });
});

describe("resources", () => {
  it("turns a fork bomb into a ResourceError and survives it", async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 256, maxProcesses: 256 });
    try {
      const err = await sb.command.run("sh", ["-c", "f() { f | f & }; f; sleep 3"], { timeout: 30 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ResourceError);
      expect((err as Error).message).toContain("process limit (256)");
      // Each command has its own cgroup: the bomb's stragglers are not blamed on the next one.
      expect(await (await sb.command.run("echo", ["still here"])).output()).toBe("still here");
    } finally {
      await sb.stop();
    }
  });

  it("starts each command in a cgroup of its own; a reused one does not pass on its count of refused forks", async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 256, maxProcesses: 32 });
    try {
      const cgroup = async () => (await (await sb.command.run("cat", ["/proc/self/cgroup"])).output()).trim();
      // Two at once cannot share one.
      const [a, b] = await Promise.all([
        sb.command.run("sh", ["-c", "cat /proc/self/cgroup; sleep 1"]),
        sb.command.run("sh", ["-c", "cat /proc/self/cgroup; sleep 1"]),
      ]);
      const [ca, cb] = [(await a.output()).trim(), (await b.output()).trim()];
      expect(ca).toMatch(/^0::\/sandbox\/exec-\d+$/);
      expect(ca).not.toBe(cb);
      // An emptied cgroup goes to the next command.
      const before = await cgroup();
      expect([ca, cb]).toContain(before);
      // Forks refused at the limit, then every process gone: the next command gets that cgroup,
      // and is not blamed for the refusals.
      // (cat ends when the last `sleep` holding its pipe has, so the command outlives them all.)
      const err = await sb.command.run("sh", ["-c", "(while :; do sleep 1 & done) 2>/dev/null | cat"], { timeout: 30 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ResourceError);
      expect(await cgroup()).toBe(before);
    } finally {
      await sb.stop();
    }
  });
});

describe("bad options are rejected before any VM starts", () => {
  it("names the value and what to do", async () => {
    const children = childPids();
    const dirs = ownRuntimeDirs();
    await expect(PythonSandbox.create({ memory: -1 })).rejects.toThrow(/memory -1 is invalid: give whole MiB/);
    await expect(PythonSandbox.create({ cpus: 0 })).rejects.toThrow(/cpus 0 is invalid/);
    await expect(CustomSandbox.create({})).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(CustomSandbox.create({ image: "local:no-such-image" })).rejects.toBeInstanceOf(ImageError);
    await expect(CustomSandbox.create({ image: "no-such-image", pull: "never" })).rejects.toThrow(
      /docker.io\/library\/no-such-image:latest is not in .* pulling is off/,
    );
    await expect(CustomSandbox.create({ image: "Bad/Reference" })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(CustomSandbox.create({ image: "local:busybox", name: "bad name!" })).rejects.toThrow(/sandbox name "bad name!" is invalid/);
    await expect(CustomSandbox.create({ image: "local:busybox", network: "some" as never })).rejects.toThrow(/use "none", "public", "all"/);
    const sb = new CustomSandbox({ image: "local:busybox" });
    await expect(sb.start({ memory: 1.5 })).rejects.toBeInstanceOf(InvalidArgumentError);
    // No VMM was started (it would be a child of this process), and no runtime dir made.
    expect(childPids().filter((p) => !children.includes(p))).toEqual([]);
    expect(ownRuntimeDirs()).toEqual(dirs);
  });
});
