// What a server keeps of an E2B sandbox for the next server on its cache (ServerRecord.extra of
// an outliving or paused sandbox), and how the next one gives it back: its access token,
// lifecycle, network and volume mounts, how it is paused, and the processes its clients started,
// by pid, so that commands.list() and commands.connect(pid) find them after the restart (a
// paused one's once it is resumed).
import type { Managed, SandboxTable } from "../sandboxes.js";
import { type ContextRecords, contextRecords, linkContexts } from "./interpreter.js";
import type { E2bNetwork } from "./network.js";
import { armLifecycle } from "./pausing.js";
import type { ProcessRecord } from "./processes.js";
import type { E2bSandboxes, E2bState, Lifecycle } from "./shared.js";

interface E2bRecord {
  token: string;
  lifecycle: Lifecycle;
  network: E2bNetwork;
  volumeMounts?: { name: string; path: string }[];
  paused?: E2bState["paused"];
  processes: ProcessRecord[];
  contexts?: ContextRecords;
}

/** Has `m`, just given its E2B state `s`, record it from now on (table.persist). */
export function recordE2b(table: SandboxTable, m: Managed, s: E2bState): void {
  m.extra = (): E2bRecord => ({
    token: s.token,
    lifecycle: s.lifecycle,
    network: s.network,
    ...(s.volumeMounts ? { volumeMounts: s.volumeMounts } : {}),
    ...(s.paused ? { paused: s.paused } : {}),
    processes: s.processes.records(),
    contexts: contextRecords(s),
  });
  table.persist(m);
}

/** Gives the adopted `m` back the E2B state a previous server recorded (`extra`). */
export async function adoptE2b(sandboxes: E2bSandboxes, m: Managed, extra: unknown): Promise<void> {
  const r = extra as E2bRecord | undefined;
  const paused = !!r?.paused && r.paused.name === m.sandbox.name && typeof r.paused.memory === "boolean";
  if (typeof r?.token !== "string" || !r.lifecycle || !r.network || paused !== !!m.paused) throw new Error(`sandbox ${m.id}'s E2B record is damaged`);
  const s = sandboxes.add(m, r.token, r.network, r.lifecycle);
  if (r.volumeMounts) s.volumeMounts = r.volumeMounts;
  armLifecycle(sandboxes.table, { m, s });
  s.processes.expect(Array.isArray(r.processes) ? r.processes : []);
  // A paused one's processes come back with its resume (resumeSandbox).
  if (r.paused) {
    s.paused = { name: r.paused.name, memory: r.paused.memory };
    if (r.paused.memory && r.contexts) s.carried = r.contexts; // linked at its resume
  } else {
    await s.processes.takeBack(m.sandbox.command.resumed());
    linkContexts(s, m.sandbox, r.contexts);
  }
  recordE2b(sandboxes.table, m, s);
}
