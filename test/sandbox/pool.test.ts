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
    const sb = await CustomSandbox.create({ pool });
    // Handed out from the ready ones, with no boot, and its replacement not started yet: the
    // refill waits a moment so that the first commands have the cores to themselves.
    expect(pool.stats).toMatchObject({ ready: 1, booting: 0, inUse: 1, boots: 2 });
    expect(await (await sb.command.run("echo", ["warm"])).output()).toBe("warm");
    await pool.warm(); // waits for the delayed refill and its boot
    expect(pool.stats).toMatchObject({ ready: 2, booting: 0, inUse: 1, boots: 3 });
    const pid = sb.pid!;
    await pool.release(sb);
    expect(alive(pid)).toBe(false); // destroyed, not reused
    await pool.warm();
    expect(pool.stats).toMatchObject({ ready: 2, booting: 0, inUse: 0, boots: 3 }); // already full: no boot
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
    await pool.warm(); // the refill scheduled by acquire() was cancelled, not left to boot
    expect(pool.stats).toMatchObject({ ready: 0, booting: 0, boots: 2 });
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
