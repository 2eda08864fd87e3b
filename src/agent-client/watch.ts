// A watch of a guest directory (the agent's inotify): an async iterable of changes. The agent
// sends events under credit, like output (Inbound, sized as the agent counts them): what this
// side has not consumed holds the agent back, and a guest kernel queue that overflowed meanwhile
// arrives as one "overflow" event. Leaving the loop (or close()) cancels the watch in the guest.
import { AgentProtocolError } from "../errors.js";
import type { Channel } from "./channel.js";
import { Inbound } from "./flow.js";
import { type GuestBody, type GuestFrame, MAX_FRAME_BYTES } from "./protocol.js";

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

type Item = { event: FsEvent; bytes: number };

export class FsWatch implements AsyncIterableIterator<FsEvent> {
  private readonly inbound: Inbound<Item>;
  private readonly id: number;
  private closed = false;
  private ended = false;

  constructor(
    private readonly channel: Channel,
    path: string,
    recursive: boolean,
    private readonly failure: (e: GuestBody<"error">) => Error,
    private readonly onEnd: () => void,
  ) {
    const sink = { frame: (f: GuestFrame) => this.onFrame(f), fail: (err: Error) => this.finish(err) };
    this.id = channel.open(sink);
    this.inbound = new Inbound<Item>(
      WATCH_WINDOW,
      (bytes) => !channel.closed && channel.send(this.id, { case: "credit", value: { bytes } }),
      () => this.close(),
      // The agent stops reading inotify at the window, past it by at most one read and the scan
      // of a new directory.
      { size: (item) => item.bytes, maxItem: MAX_FRAME_BYTES, slack: 3 * WATCH_WINDOW + MAX_FRAME_BYTES },
    );
    channel.send(this.id, { case: "watch", value: { path, recursive, window: WATCH_WINDOW } });
  }

  private onFrame(f: GuestFrame): void {
    const b = f.body;
    if (b.case === "fsEvents") {
      try {
        for (const e of b.value.events) {
          const event: FsEvent = { type: KINDS[e.kind] ?? "overflow", path: e.path, directory: e.directory, ...(e.from ? { from: e.from } : {}) };
          this.inbound.push({ event, bytes: EVENT_OVERHEAD + Buffer.byteLength(event.path) + Buffer.byteLength(e.from) });
        }
      } catch (err) {
        this.finish(err as Error); // a guest past its credit
      }
    } else if (b.case === "done") {
      this.finish(); // the watched directory went
    } else if (b.case === "error") {
      this.finish(this.closed ? undefined : this.failure(b.value)); // CANCELLED after close() is the expected end
    } else {
      this.finish(new AgentProtocolError(`unexpected ${b.case} frame for a watch`));
    }
  }

  /** Stops the watch in the guest; the iteration ends after what already arrived. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.channel.closed) this.channel.send(this.id, { case: "cancel", value: {} });
  }

  private finish(err?: Error): void {
    if (this.ended) return;
    this.ended = this.closed = true;
    this.channel.release(this.id);
    this.inbound.end(err);
    this.onEnd();
  }

  async next(): Promise<IteratorResult<FsEvent>> {
    const r = await this.inbound.next();
    return r.done ? r : { value: r.value.event, done: false };
  }

  async return(): Promise<IteratorResult<FsEvent>> {
    await this.inbound.return();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
