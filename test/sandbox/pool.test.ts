// SandboxPool with real VMs: warm acquires do not boot, concurrent acquires get distinct VMs, the
// memory budget holds, released sandboxes are destroyed, and close() leaves no VM behind.
import { afterEach, describe, expect, it } from "vitest";

import { CustomSandbox, InvalidArgumentError, SandboxPool } from "../../src/index.js";
import { alive } from "./helpers.js";


let pool: SandboxPool<CustomSandbox> | undefined;
afterEach(async () => {
  await pool?.close();
  pool = undefined;
});

describe("SandboxPool", () => {
  it("hands out a warm sandbox without booting, and refills in the background", async () => {
    pool = new SandboxPool(CustomSandbox, { image: "local:busybox", memory: 128, size: 2 });
    await pool.warm();
    expect(pool.stats).toMatchObject({ ready: 2, booting: 0, boots: 2 });
    const t0 = performance.now();
    const sb = await CustomSandbox.create({ pool });
    const acquired = performance.now() - t0;
    expect(await (await sb.command.run("echo", ["warm"])).output()).toBe("warm");
    expect(acquired).toBeLessThan(1000); // no boot happened on this path (a TCG boot takes ~1.5 s)
    expect(pool.stats).toMatchObject({ ready: 1, inUse: 1, boots: 2 });
    // The refill starts a moment later, so the first commands have the cores to themselves.
    await new Promise((r) => setTimeout(r, 400));
    expect(pool.stats.boots).toBe(3);
    const pid = sb.pid!;
    await pool.release(sb);
    expect(alive(pid)).toBe(false); // destroyed, not reused
    await pool.warm();
    expect(pool.stats).toMatchObject({ ready: 2, inUse: 0 });
  });

  it("gives concurrent callers distinct VMs, booting on demand past the ready ones", async () => {
    pool = new SandboxPool(CustomSandbox, { image: "local:busybox", memory: 128, size: 1 });
    await pool.warm();
    const got = await Promise.all([pool.acquire(), pool.acquire(), pool.acquire()]);
    const pids = new Set(got.map((s) => s.pid));
    expect(pids.size).toBe(3);
    for (const sb of got) await pool.release(sb);
  });

  it("keeps its own VMs within the memory budget", async () => {
    pool = new SandboxPool(CustomSandbox, { image: "local:busybox", memory: 128, size: 4, memoryBudget: 256 });
    expect(pool.stats.booting).toBe(2);
    await pool.warm();
    expect(pool.stats).toMatchObject({ ready: 2, boots: 2 });
  });

  it("stops everything it holds on close, and refuses after", async () => {
    pool = new SandboxPool(CustomSandbox, { image: "local:busybox", memory: 128, size: 2 });
    await pool.warm();
    const held = await pool.acquire();
    const ready = (pool as unknown as { ready: CustomSandbox[] }).ready.map((s) => s.pid!);
    await pool.close();
    expect(ready.filter(alive)).toEqual([]);
    expect(held.isRunning).toBe(true); // handed out: its user's to stop
    await held.stop();
    await expect(pool.acquire()).rejects.toThrow(/closed/);
  });

  it("rejects bad settings before booting anything", () => {
    expect(() => new SandboxPool(CustomSandbox, { image: "local:busybox", size: 0 })).toThrow(InvalidArgumentError);
    expect(() => new SandboxPool(CustomSandbox, { image: "local:busybox", memory: 512, size: 2, memoryBudget: 100 })).toThrow(/below one sandbox/);
    expect(() => new SandboxPool(CustomSandbox, { size: 1 })).toThrow(/needs an image/);
  });
});
