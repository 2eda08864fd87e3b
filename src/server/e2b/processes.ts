// The processes an E2B client started in one sandbox: each one's output is pumped once from its
// ExecProcess and fanned out to every stream watching it (Start's, and any Connect's), so a client
// can reconnect to a running command. Found by pid or tag for input, signals and resizes. A memory
// pause keeps them (spawned with `keep`): held meanwhile, each goes on from its handle before the
// pause to the one the resume adopted, and its watchers see one stream.
import type { ExecProcess, ExitStatus } from "../../agent-client/process.js";

export type ProcEvent =
  | { kind: "start"; pid: number }
  | { kind: "data"; stream: "stdout" | "stderr" | "pty"; data: Buffer }
  | { kind: "end"; exit: ExitStatus | undefined; error?: string };

export interface Tracked {
  pid: number;
  tag?: string;
  cmd: string;
  args: string[];
  envs: Record<string, string>;
  cwd?: string;
  pty: boolean;
  /** Its handle now (after a resume, the adopted one). */
  readonly proc: ExecProcess;
  /** A stream of this process's events from now on. */
  watch(): AsyncGenerator<ProcEvent>;
}

/** A process as recorded for the next server on this cache: what is tracked but its handle. */
export type ProcessRecord = Omit<Tracked, "proc" | "watch">;

// Bytes of output a watcher may have waiting before the pump stops reading the process: a slow
// client holds the guest back (through the process's own credit), not host memory.
const WATCHER_BACKLOG_BYTES = 4 * 2 ** 20;

// A watcher's queue: events pushed, taken in order; `bytes` of data waiting in it.
class Queue {
  private items: ProcEvent[] = [];
  private wake: (() => void) | undefined;
  bytes = 0;
  constructor(private readonly drained: () => void) {}
  push(item: ProcEvent): void {
    this.items.push(item);
    if (item.kind === "data") this.bytes += item.data.length;
    this.wake?.();
  }
  async take(): Promise<ProcEvent> {
    while (!this.items.length) await new Promise<void>((r) => (this.wake = r));
    this.wake = undefined;
    const item = this.items.shift()!;
    if (item.kind === "data") this.bytes -= item.data.length;
    if (this.bytes < WATCHER_BACKLOG_BYTES) this.drained();
    return item;
  }
}

export class ProcessTable {
  private readonly byPid = new Map<number, Tracked>();
  // Handles a process gets after its first (a resume's adopted one), by pid.
  private readonly later = new Map<number, ExecProcess[]>();
  // Set from a memory pause until its resume: a handle that fails meanwhile waits for the next.
  private held: { released: Promise<void>; release(): void } | undefined;
  // What a previous server recorded of processes it kept, until this one has their handles.
  private recorded = new Map<number, ProcessRecord>();

  /** A memory pause begins: processes whose handles fail wait for release(). */
  hold(): void {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    this.held ??= { released, release };
  }

  /**
   * The pause is over: with `resumed` (the resumed sandbox's command.resumed()) each process it
   * kept goes on in its adopted handle; the others, and every one without `resumed` (a pause that
   * failed, a sandbox killed while paused), end when their handle does.
   */
  release(resumed?: ReadonlyMap<number, ExecProcess>): void {
    for (const pid of this.byPid.keys()) {
      const next = resumed?.get(pid);
      if (next) this.later.set(pid, [...(this.later.get(pid) ?? []), next]);
      else if (resumed) this.byPid.delete(pid); // gone with the old VM: its watchers, if any, see its end
    }
    this.held?.release();
    this.held = undefined;
  }

  /** The processes a previous server recorded, for takeBack() to find them by. */
  expect(records: readonly ProcessRecord[]): void {
    for (const r of records) if (Number.isSafeInteger(r?.pid)) this.recorded.set(r.pid, r);
  }

  /**
   * Tracks the processes an adopted or resumed sandbox hands back (command.resumed()) that are
   * not tracked yet, by what was recorded of them (else as a command of unknown name).
   */
  async takeBack(resumed: ReadonlyMap<number, ExecProcess>): Promise<void> {
    for (const [pid, proc] of resumed) {
      if (this.byPid.has(pid)) continue;
      const { cmd = "", args = [], envs = {}, cwd, tag, pty = false } = this.recorded.get(pid) ?? {};
      await this.add(proc, { cmd, args, envs, pty, ...(cwd ? { cwd } : {}), ...(tag ? { tag } : {}) });
    }
    this.recorded.clear();
  }

  /** What the next server on this cache finds its processes by (the recorded ones a resume has not handed back included). */
  records(): ProcessRecord[] {
    const now = this.list().map(
      ({ pid, tag, cmd, args, envs, cwd, pty }): ProcessRecord => ({ pid, ...(tag ? { tag } : {}), cmd, args, envs, ...(cwd ? { cwd } : {}), pty }),
    );
    return [...now, ...[...this.recorded.values()].filter((r) => !this.byPid.has(r.pid))];
  }

  /** Tracks `proc` (just spawned); the first event every watcher sees is its start. */
  async add(proc: ExecProcess, info: Omit<Tracked, "pid" | "proc" | "watch">): Promise<Tracked> {
    const pid = await proc.pid;
    const table = this;
    const watchers = new Set<Queue>();
    const emit = (e: ProcEvent) => {
      for (const q of watchers) q.push(e);
    };
    let resume: (() => void) | undefined;
    const drained = () => {
      const r = resume;
      resume = undefined;
      r?.();
    };
    // Waits while some watcher is too far behind (one that leaves frees the pump too).
    const room = async () => {
      while ([...watchers].some((q) => q.bytes >= WATCHER_BACKLOG_BYTES)) await new Promise<void>((r) => (resume = r));
    };
    let current = proc;
    // The handle after `current`, once a resume adopted one (a pause under way waits for it).
    const next = async (): Promise<ExecProcess | undefined> => {
      for (;;) {
        const queued = this.later.get(pid);
        if (queued?.length) return queued.shift();
        if (!this.held) return undefined;
        await this.held.released;
      }
    };
    let last: ProcEvent | undefined;
    let pumping: Promise<void> | undefined;
    // Output is read once the first watcher is there: none is lost to a start nobody watched yet.
    // A handle's output ends with what it had received before its VM stopped; the next one's
    // starts where that stopped.
    const pump = () =>
      (pumping ??= (async () => {
        for (;;) {
          try {
            for await (const chunk of current) {
              emit({ kind: "data", stream: info.pty ? "pty" : chunk.stream, data: chunk.data });
              await room();
            }
            last = { kind: "end", exit: await current.exit };
          } catch (err) {
            const after = await next();
            if (after) {
              current = after;
              continue;
            }
            last = { kind: "end", exit: undefined, error: (err as Error).message };
          }
          break;
        }
        emit(last);
        this.byPid.delete(pid);
        this.later.delete(pid);
      })());
    const t: Tracked = {
      ...info,
      pid,
      get proc() {
        return table.later.get(pid)?.at(-1) ?? current;
      },
      async *watch() {
        const q = new Queue(drained);
        // A watcher that comes after the end gets only the end; any other, every event from now.
        const over = last;
        watchers.add(q);
        void pump();
        try {
          yield { kind: "start", pid };
          if (over) return void (yield over);
          for (;;) {
            const e = await q.take();
            yield e;
            if (e.kind === "end") return;
          }
        } finally {
          watchers.delete(q);
          drained();
        }
      },
    };
    this.byPid.set(pid, t);
    return t;
  }

  find(selector: { case: "pid"; value: number } | { case: "tag"; value: string } | { case: undefined }): Tracked | undefined {
    if (selector.case === "pid") return this.byPid.get(selector.value);
    if (selector.case === "tag") return [...this.byPid.values()].find((t) => t.tag === selector.value);
    return undefined;
  }

  list(): Tracked[] {
    return [...this.byPid.values()];
  }
}
