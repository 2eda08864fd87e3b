// sandbox.fs.watch: the agent's inotify, end to end on a real VM.
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { CustomSandbox, FileOperationError, type FsEvent } from "../../src/index.js";

let sb: CustomSandbox;
beforeAll(async () => {
  sb = await CustomSandbox.create({ image: "local:busybox", memory: 256 });
}, 180_000);
afterAll(() => sb?.stop());

// Collects a watch's events in the background.
function collect(w: AsyncIterable<FsEvent>) {
  const events: FsEvent[] = [];
  const done = (async () => {
    for await (const e of w) events.push(e);
  })();
  return { events, done };
}

const until = async (ok: () => boolean, ms = 20_000) => {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 100));
  }
};

describe("sandbox.fs.watch", () => {
  it("yields a command's creates, edits, renames and removals in order, below the directory too", async () => {
    await sb.fs.mkdir("/work", { parents: true });
    const w = sb.fs.watch("/work", { recursive: true });
    const { events, done } = collect(w);
    await sb.command.run("sh", [
      "-c",
      "echo a > /work/a.txt; echo more >> /work/a.txt; mkdir /work/sub; sleep 0.3; echo b > /work/sub/b.txt; mv /work/a.txt /work/c.txt; rm /work/sub/b.txt; rm /work/c.txt",
    ]);
    await until(() => events.some((e) => e.type === "delete" && e.path === "/work/c.txt"));
    w.close();
    await done;
    const seen = events.map((e) => `${e.type} ${e.from ? `${e.from} -> ` : ""}${e.path}${e.directory ? "/" : ""}`);
    const expected = [
      "create /work/a.txt",
      "modify /work/a.txt",
      "create /work/sub/",
      "create /work/sub/b.txt",
      "modify /work/sub/b.txt",
      "rename /work/a.txt -> /work/c.txt",
      "delete /work/sub/b.txt",
      "delete /work/c.txt",
    ];
    // In this order, each once after its predecessor (repeated modifies may appear between).
    let at = -1;
    for (const e of expected) {
      const i = seen.indexOf(e, at + 1);
      expect(i, `${e} after position ${at} in:\n${seen.join("\n")}`).toBeGreaterThan(at);
      at = i;
    }
    expect(seen.every((s) => !s.startsWith("overflow"))).toBe(true);
  });

  it("ends when the directory goes, and names a path that cannot be watched", async () => {
    await sb.fs.mkdir("/gone", { parents: true });
    const { events, done } = collect(sb.fs.watch("/gone"));
    await sb.command.run("rmdir", ["/gone"]);
    await done; // the iteration ended by itself
    expect(events).toEqual([]);
    const err = await (async () => {
      for await (const _ of sb.fs.watch("/no/such/dir"));
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FileOperationError);
    expect(err).toMatchObject({ errnoName: "ENOENT" });
  });

  it("bounds what waits for a reader: a flood nobody reads ends in an overflow event, not memory", async () => {
    await sb.fs.mkdir("/flood", { parents: true });
    const w = sb.fs.watch("/flood");
    const it = w[Symbol.asyncIterator]();
    // 36000 changes while nothing reads: the agent stops at its credit, the kernel's queue
    // (16384 events) fills. (18000 files: the guest's tmpfs has inodes for about 26000.)
    const rss0 = process.memoryUsage().rss;
    const r = await sb.command.run("sh", ["-c", "cd /flood && seq 1 18000 | xargs touch && seq 1 18000 | xargs rm && echo made"], { timeout: 150 });
    expect(r.stdout).toBe("made\n");
    expect(process.memoryUsage().rss - rss0).toBeLessThan(64 * 2 ** 20);
    let changes = 0;
    let overflow = false;
    for (;;) {
      const { value, done } = await it.next();
      if (done) break;
      if (value.type === "overflow") {
        overflow = true;
        break;
      }
      changes++;
    }
    w.close();
    expect(overflow).toBe(true);
    expect(changes).toBeGreaterThan(1000);
    expect(changes).toBeLessThan(36_000);
  }, 180_000);
});
