// A watch of a guest directory (the agent's inotify): an async iterable of changes. The agent
// sends events under credit, like output: what this side has not consumed holds the agent back,
// and a guest kernel queue that overflowed meanwhile arrives as one "overflow" event. Leaving
// the loop (or close()) cancels the watch in the guest.
import { AgentProtocolError } from "../errors.js";
import type { Channel } from "./channel.js";
import { type GuestFrame } from "./protocol.js";

export interface FsEvent {
  type: "create" | "modify" | "delete" | "rename" | "overflow";
  /** Absolute guest path ("" for overflow). */
  path: string;
  /** For a rename: where it came from. */
  from?: string;
  directory: boolean;
}

const KINDS: Record<number, FsEvent["type"]> = { 1: "create", 2: "modify", 3: "delete", 4: "rename", 5: "overflow" };
// The agent's own accounting of an event's bytes (native/agent/watch.c), for credit.
const EVENT_OVERHEAD = 16;
export const WATCH_WINDOW = 256 * 1024;

type WireEvent = { kind: number; path: string; from: string; directory: boolean };

export class FsWatch implements AsyncIterableIterator<FsEvent> {
  private readonly queue: { event: FsEvent; bytes: number }[] = [];
  private outstanding = 0;
  private uncredited = 0;
  private wake: (() => void) | undefined;
  private ended = false;
  private error: Error | undefined;
  private readonly id: number;

  constructor(
    private readonly channel: Channel,
    path: string,
    recursive: boolean,
    private readonly failure: (e: NonNullable<GuestFrame["error"]>) => Error,
    private readonly onEnd: () => void,
  ) {
    this.id = channel.open({ frame: (f) => this.onFrame(f), fail: (err) => this.finish(err) });
    channel.send({ session: this.id, watch: { path, recursive, window: WATCH_WINDOW } });
  }

  private onFrame(f: GuestFrame): void {
    if (f.body === "fsEvents") {
      for (const e of (f.fsEvents!.events ?? []) as WireEvent[]) {
        const bytes = EVENT_OVERHEAD + Buffer.byteLength(e.path ?? "") + Buffer.byteLength(e.from ?? "");
        this.outstanding += bytes;
        const event: FsEvent = { type: KINDS[e.kind] ?? "overflow", path: e.path ?? "", directory: !!e.directory, ...(e.from ? { from: e.from } : {}) };
        this.queue.push({ event, bytes });
      }
      // The agent stops at the window, past it by at most one read of its inotify queue and a scan.
      if (this.outstanding > 4 * WATCH_WINDOW + (1 << 20)) this.finish(new AgentProtocolError(`the guest sent ${this.outstanding} bytes of watch events past its credit`));
      this.wake?.();
    } else if (f.body === "done") {
      this.finish(); // the watched directory went
    } else if (f.body === "error") {
      const err = this.failure(f.error!);
      this.finish(this.closed ? undefined : err); // CANCELLED after close() is the expected end
    } else {
      this.finish(new AgentProtocolError(`unexpected ${f.body} frame for a watch`));
    }
  }

  private closed = false;

  /** Stops the watch in the guest; the iteration ends after what already arrived. */
  close(): void {
    if (this.closed || this.ended) return;
    this.closed = true;
    if (!this.channel.closed) this.channel.send({ session: this.id, cancel: {} });
  }

  private finish(err?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.error = err;
    this.channel.release(this.id);
    this.onEnd();
    this.wake?.();
  }

  async next(): Promise<IteratorResult<FsEvent>> {
    for (;;) {
      const item = this.queue.shift();
      if (item) {
        this.outstanding -= item.bytes;
        this.uncredited += item.bytes;
        // Credit in batches, as output does: a frame per event would cost more than the events.
        if (!this.ended && this.uncredited >= WATCH_WINDOW / 4) {
          this.channel.send({ session: this.id, credit: { bytes: this.uncredited } });
          this.uncredited = 0;
        }
        if (this.queue.length === 0 && !this.ended && this.uncredited > 0) {
          this.channel.send({ session: this.id, credit: { bytes: this.uncredited } });
          this.uncredited = 0;
        }
        return { value: item.event, done: false };
      }
      if (this.ended) {
        if (this.error) throw this.error;
        return { value: undefined, done: true };
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }

  async return(): Promise<IteratorResult<FsEvent>> {
    this.close();
    this.queue.length = 0;
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
