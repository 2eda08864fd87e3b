// The E2B data plane's process table: every watcher of a process gets all of its output, however
// fast the process ends, and one that comes after the end gets the end.
import { describe, expect, it } from "vitest";

import type { ExecProcess } from "../../src/agent-client/process.js";
import { type ProcEvent, ProcessTable } from "../../src/server/e2b/processes.js";

// A process that has printed and ended before anyone looks.
function finished(): ExecProcess {
  const exit = Promise.resolve({ exitCode: 0, signal: null, timedOut: false, durationMs: 1, guestCounters: { oomKills: 0, pidsLimitHits: 0 }, usage: { cpuTimeMs: 0, peakMemoryBytes: 0 } });
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
});
