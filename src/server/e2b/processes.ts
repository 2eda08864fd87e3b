// The processes an E2B client started in one sandbox: each one's output is pumped once from its
// ExecProcess and fanned out to every stream watching it (Start's, and any Connect's), so a client
// can reconnect to a running command. Found by pid or tag for input, signals and resizes.
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
  proc: ExecProcess;
  /** Resolves once the process ended and every watcher got its end. */
  ended: Promise<void>;
  /** A stream of this process's events from now on. */
  watch(): AsyncGenerator<ProcEvent>;
}

// A waiter's queue: events pushed, taken in order.
class Queue<T> {
  private items: T[] = [];
  private wake: (() => void) | undefined;
  push(item: T): void {
    this.items.push(item);
    this.wake?.();
  }
  async take(): Promise<T> {
    while (!this.items.length) await new Promise<void>((r) => (this.wake = r));
    this.wake = undefined;
    return this.items.shift()!;
  }
}

export class ProcessTable {
  private readonly byPid = new Map<number, Tracked>();

  /** Tracks `proc` (just spawned); the first event every watcher sees is its start. */
  async add(proc: ExecProcess, info: Omit<Tracked, "pid" | "proc" | "ended" | "watch">): Promise<Tracked> {
    const pid = await proc.pid;
    const watchers = new Set<Queue<ProcEvent>>();
    const emit = (e: ProcEvent) => watchers.forEach((q) => q.push(e));
    let last: ProcEvent | undefined;
    let pumping: Promise<void> | undefined;
    // Output is read once the first watcher is there: none is lost to a start nobody watched yet.
    const pump = () =>
      (pumping ??= (async () => {
        try {
          for await (const chunk of proc) emit({ kind: "data", stream: info.pty ? "pty" : chunk.stream, data: chunk.data });
          last = { kind: "end", exit: await proc.exit };
        } catch (err) {
          last = { kind: "end", exit: undefined, error: (err as Error).message };
        }
        emit(last);
        this.byPid.delete(pid);
      })());
    const t: Tracked = {
      ...info,
      pid,
      proc,
      get ended() {
        return pump();
      },
      async *watch() {
        const q = new Queue<ProcEvent>();
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
