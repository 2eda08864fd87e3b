// The E2B data plane's process table: every watcher of a process gets all of its output, however
// fast the process ends, and one that comes after the end gets the end.
import { describe, expect, it } from "vitest";

import type { ExecProcess } from "../../src/agent-client/process.js";
import { type ProcEvent, ProcessTable } from "../../src/server/e2b/processes.js";

// A process that has printed and ended before anyone looks.
function finished(): ExecProcess {
  const exit = Promise.resolve({
    exitCode: 0,
    signal: null,
    timedOut: false,
    durationMs: 1,
    guestCounters: { oomKills: 0, pidsLimitHits: 0 },
    usage: { cpuTimeMs: 0, peakMemoryBytes: 0 },
  });
  return {
    pid: Promise.resolve(42),
    exit,
    async *[Symbol.asyncIterator]() {
      yield { stream: "stdout", data: Buffer.from("hi\n") };
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
