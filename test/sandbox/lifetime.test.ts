// Lifetimes (maxDuration, idleTimeout, touch), ids, labels and Sandbox.list(), on real VMs.
import { describe, expect, it } from "vitest";

import { CustomSandbox, InvalidArgumentError, Sandbox, SandboxExpiredError, SandboxPool } from "../../src/index.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const busybox = { image: "local:busybox", memory: 128 } as const;

describe("lifetimes", () => {
  it("an idleTimeout of 2 s stops an idle sandbox and not a busy one", async () => {
    const idle = await CustomSandbox.create({ ...busybox, idleTimeout: 2 });
    const busy = await CustomSandbox.create({ ...busybox, idleTimeout: 2 });
    try {
      const work = busy.command.run("sleep", ["4"]);
      await sleep(3000);
      expect(idle.isRunning).toBe(false);
      expect(busy.isRunning).toBe(true);
      const err = await idle.command.run("true").catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SandboxExpiredError);
      expect(err).toMatchObject({ limit: "idleTimeout", code: "MSB_SANDBOX_EXPIRED" });
      expect((err as Error).message).toMatch(/idle for its idleTimeout of 2 s/);
      expect((await work).exitCode).toBe(0);
      // Idle from now on: it goes too.
      await sleep(3000);
      expect(busy.isRunning).toBe(false);
    } finally {
      await idle.stop();
      await busy.stop();
    }
  });

  it("touch() keeps an idle sandbox alive; maxDuration ends it anyway, failing the call under way", async () => {
    const sb = await CustomSandbox.create({ ...busybox, idleTimeout: 2, maxDuration: 5 });
    try {
      for (let i = 0; i < 6; i++) {
        await sleep(500);
        sb.touch();
      }
      expect(sb.isRunning).toBe(true);
      const err = await sb.command.run("sleep", ["30"]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SandboxExpiredError);
      expect(err).toMatchObject({ limit: "maxDuration" });
      expect(sb.isRunning).toBe(false);
    } finally {
      await sb.stop();
    }
  });

  it("a pool starts the limits at hand-out, not while the sandbox waits in it", async () => {
    const pool = new SandboxPool(CustomSandbox, { ...busybox, size: 1, idleTimeout: 1 });
    try {
      await pool.warm();
      await sleep(2500);
      const sb = await pool.acquire();
      expect((await sb.command.run("echo", ["fresh"])).stdout).toBe("fresh\n");
      await sleep(2500);
      expect(sb.isRunning).toBe(false);
    } finally {
      await pool.close();
    }
  });

  it("refuses limits that are not positive seconds", () => {
    expect(() => new CustomSandbox({ ...busybox, idleTimeout: 0 })).toThrow(InvalidArgumentError);
    expect(() => new CustomSandbox({ ...busybox, maxDuration: -1 })).toThrow(/maxDuration -1 is invalid/);
  });
});

describe("ids, labels and Sandbox.list()", () => {
  it("lists this process's sandboxes with their status until they stop", async () => {
    const a = new CustomSandbox({ ...busybox, labels: { team: "ml", "app.kubernetes.io/name": "runner" } });
    const b = new CustomSandbox({ ...busybox });
    expect(a.id).toMatch(/^sb-[0-9a-f]{12}$/);
    expect(a.id).not.toBe(b.id);
    expect(Sandbox.list().map((s) => s.id)).not.toContain(a.id); // not started: not listed
    const starting = a.start();
    expect(Sandbox.list().find((s) => s.id === a.id)?.status).toBe("starting");
    await Promise.all([starting, b.start()]);
    try {
      const listed = Sandbox.list().filter((s) => s.id === a.id || s.id === b.id);
      expect(listed).toHaveLength(2);
      expect(listed.find((s) => s.id === a.id)).toMatchObject({
        name: a.name,
        kind: "CustomSandbox",
        image: "local:busybox",
        status: "running",
        pid: a.pid,
        labels: { team: "ml", "app.kubernetes.io/name": "runner" },
      });
      const copy = await a.fork();
      expect(copy.id).not.toBe(a.id);
      expect(Sandbox.list().find((s) => s.id === copy.id)?.labels).toEqual(a.labels);
      await copy.stop();
      expect(Sandbox.list().map((s) => s.id)).not.toContain(copy.id);
    } finally {
      await a.stop();
      await b.stop();
    }
    expect(Sandbox.list().filter((s) => s.id === a.id || s.id === b.id)).toEqual([]);
    expect(() => new CustomSandbox({ ...busybox, labels: { "bad key": "x" } })).toThrow(/label "bad key"/);
  });
});
