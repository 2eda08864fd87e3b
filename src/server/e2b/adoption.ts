// What a server keeps of an E2B sandbox for the next server on its cache (ServerRecord.extra of
// an outliving sandbox), and how the next one gives it back: its access token, lifecycle,
// network and volume mounts, and the processes its clients started, by pid, so that
// commands.list() and commands.connect(pid) find them after the restart.
import type { Managed, SandboxTable } from "../sandboxes.js";
import type { E2bNetwork } from "./network.js";
import { armLifecycle } from "./pausing.js";
import type { Tracked } from "./processes.js";
import type { E2bSandboxes, E2bState, Lifecycle } from "./shared.js";

/** A process a client started, as recorded: what ProcessTable tracks but its handle. */
type ProcessRecord = Omit<Tracked, "proc" | "watch">;

interface E2bRecord {
  token: string;
  lifecycle: Lifecycle;
  network: E2bNetwork;
  volumeMounts?: { name: string; path: string }[];
  processes: ProcessRecord[];
}

/** Has `m`, just given its E2B state `s`, record it from now on (table.persist). */
export function recordE2b(table: SandboxTable, m: Managed, s: E2bState): void {
  m.extra = (): E2bRecord => ({
    token: s.token,
    lifecycle: s.lifecycle,
    network: s.network,
    ...(s.volumeMounts ? { volumeMounts: s.volumeMounts } : {}),
    processes: s.processes
      .list()
      .map(({ pid, tag, cmd, args, envs, cwd, pty }) => ({ pid, ...(tag ? { tag } : {}), cmd, args, envs, ...(cwd ? { cwd } : {}), pty })),
  });
  table.persist(m);
}

/** Gives the adopted `m` back the E2B state a previous server recorded (`extra`). */
export async function adoptE2b(sandboxes: E2bSandboxes, m: Managed, extra: unknown): Promise<void> {
  const r = extra as E2bRecord | undefined;
  if (typeof r?.token !== "string" || !r.lifecycle || !r.network) throw new Error(`sandbox ${m.id}'s E2B record is damaged`);
  const s = sandboxes.add(m, r.token, r.network, r.lifecycle);
  if (r.volumeMounts) s.volumeMounts = r.volumeMounts;
  armLifecycle(sandboxes.table, { m, s });
  const infos = new Map((Array.isArray(r.processes) ? r.processes : []).map((p) => [p.pid, p]));
  for (const [pid, proc] of m.sandbox.command.resumed()) {
    const info = infos.get(pid);
    await s.processes.add(proc, info ? { ...info } : { cmd: "", args: [], envs: {}, pty: false });
  }
  recordE2b(sandboxes.table, m, s);
}
