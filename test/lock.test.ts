// The cross-process lock: a lock file holding its owner's stamp, taken over only when that owner
// is gone, by one taker at a time. No VMs.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { LockTimeoutError } from "../src/errors.js";
import { ownStamp } from "../src/liveness.js";
import { withLock } from "../src/lock.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(tmpdir(), "msb-lock-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe("withLock", () => {
  it("lets one holder in at a time, and many in turn", async () => {
    const entry = path.join(dir, "entry");
    let inside = 0;
    let most = 0;
    const order: number[] = [];
    await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        withLock(entry, async () => {
          most = Math.max(most, ++inside);
          await new Promise((r) => setTimeout(r, 20));
          order.push(i);
          inside--;
        }),
      ),
    );
    expect(most).toBe(1);
    expect(order.sort()).toEqual([0, 1, 2, 3, 4]);
  });

  it("waits for a live owner, and takes over from one that is gone, even when its pid was reused", async () => {
    const entry = path.join(dir, "entry");
    // A live owner: this process, as another process would see its lock.
    writeFileSync(`${entry}.lock`, JSON.stringify(ownStamp()));
    await expect(withLock(entry, async () => "never", 300)).rejects.toBeInstanceOf(LockTimeoutError);
    // A dead owner: a child that has exited.
    writeFileSync(`${entry}.lock`, JSON.stringify({ pid: spawnSync("true").pid }));
    expect(await withLock(entry, async () => "dead owner's, taken over", 5000)).toBe("dead owner's, taken over");
    // This very pid, but another start time: the pid was reused, the owner is gone.
    writeFileSync(`${entry}.lock`, JSON.stringify({ ...ownStamp(), start: "1" }));
    expect(await withLock(entry, async () => "reused pid's, taken over", 5000)).toBe("reused pid's, taken over");
  });

  it("lets only one of several takers through a stale lock at a time", async () => {
    const dead = JSON.stringify({ pid: spawnSync("true").pid });
    let inside = 0;
    let most = 0;
    // Rounds of takers racing for a stale lock: a taker that removed a lock another had just
    // made would let two in at once.
    for (let round = 0; round < 10; round++) {
      const entry = path.join(dir, `entry${round}`);
      writeFileSync(`${entry}.lock`, dead);
      await Promise.all(
        Array.from({ length: 8 }, () =>
          withLock(entry, async () => {
            most = Math.max(most, ++inside);
            await new Promise((r) => setImmediate(r));
            inside--;
          }),
        ),
      );
    }
    expect(most).toBe(1);
  });
});
