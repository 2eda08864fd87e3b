// The E2B data plane's process table: every watcher of a process gets all of its output, however
// fast the process ends, and one that comes after the end gets the end; across a memory pause a
// process goes on in the handle the resume adopted.
import { describe, expect, it } from "vitest";

import type { ExecProcess } from "../../src/agent-client/process.js";
import { type ProcEvent, ProcessTable } from "../../src/server/e2b/processes.js";

// A process that has printed and ended before anyone looks (or, with `failure`, whose handle
// failed: its VM stopped).
function finished(output = "hi\n", failure?: Error): ExecProcess {
  const exit = failure
    ? Promise.reject(failure)
    : Promise.resolve({
        exitCode: 0,
        signal: null,
        timedOut: false,
        durationMs: 1,
        guestCounters: { oomKills: 0, pidsLimitHits: 0 },
        usage: { cpuTimeMs: 0, peakMemoryBytes: 0 },
      });
  exit.catch(() => {});
  return {
    pid: Promise.resolve(42),
    exit,
    async *[Symbol.asyncIterator]() {
      yield { stream: "stdout", data: Buffer.from(output) };
      if (failure) throw failure;
    },
  } as unknown as ExecProcess;
}

// A slow reader: the process runs to its end while the reader holds its start event.
const collect = async (it: AsyncGenerator<ProcEvent>) => {
  const out: string[] = [];
  for await (const e of it) {
    out.push(e.kind === "data" ? `data ${e.data}` : e.kind === "end" ? `end ${e.exit?.exitCode}` : `start ${e.pid}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return out;
};

describe("ProcessTable", () => {
  it("gives the first watcher a fast process's output before its end", async () => {
    const table = new ProcessTable();
    const t = await table.add(finished(), { cmd: "echo", args: [], envs: {}, pty: false });
    expect(await collect(t.watch())).toEqual(["start 42", "data hi\n", "end 0"]);
    // Later watchers, after the end: the end alone; the table has forgotten the process.
    expect(await collect(t.watch())).toEqual(["start 42", "end 0"]);
    expect(table.list()).toEqual([]);
  });

  it("across a memory pause, goes on in the adopted handle; without one, ends with the old handle's failure", async () => {
    const table = new ProcessTable();
    const kept = await table.add(finished("before\n", new Error("the VM stopped")), { cmd: "sh", args: [], envs: {}, pty: false });
    table.hold();
    const watched = collect(kept.watch());
    await new Promise((r) => setTimeout(r, 100)); // its handle failed: it waits for the resume
    expect(table.list()).toEqual([kept]);
    const adopted = finished("after\n");
    table.release(new Map([[42, adopted]]));
    expect(kept.proc).toBe(adopted);
    expect(await watched).toEqual(["start 42", "data before\n", "data after\n", "end 0"]);

    const lost = new ProcessTable();
    const gone = await lost.add(finished("before\n", new Error("the VM stopped")), { cmd: "sh", args: [], envs: {}, pty: false });
    lost.hold();
    const ended = collect(gone.watch());
    lost.release(new Map()); // the resume did not bring it back
    expect(lost.list()).toEqual([]);
    expect(await ended).toEqual(["start 42", "data before\n", "end undefined"]);
  });

  it("stops reading a process while a watcher is 4 MiB behind, and goes on when it catches up", async () => {
    let pulled = 0;
    const endless = {
      pid: Promise.resolve(7),
      exit: new Promise(() => {}),
      async *[Symbol.asyncIterator]() {
        for (; pulled < 1000; pulled++) {
          await new Promise((r) => setImmediate(r)); // as a real process's output arrives: over time
          yield { stream: "stdout", data: Buffer.alloc(64 * 1024) };
        }
      },
    } as unknown as ExecProcess;
    const t = await new ProcessTable().add(endless, { cmd: "yes", args: [], envs: {}, pty: false });
    const slow = t.watch();
    await slow.next(); // the start; then nothing is read for a while
    await new Promise((r) => setTimeout(r, 100));
    const stalled = pulled;
    expect(stalled).toBeLessThanOrEqual(4 * 16 + 2);
    for (let i = 0; i < 40; i++) await slow.next();
    await new Promise((r) => setTimeout(r, 50));
    expect(pulled).toBeGreaterThan(stalled);
    await slow.return(undefined);
  });
});
