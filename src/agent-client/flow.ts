// Credit-based flow control for one session, both directions (see "Flow control" in
// proto/agent.proto): Inbound buffers what the guest sends and credits it as it is consumed;
// Outbound sends host bytes no faster than the guest credits them.
import { AgentProtocolError } from "../errors.js";
import type { Channel } from "./channel.js";
import { DEFAULT_WINDOW_BYTES, MAX_CHUNK_BYTES } from "./protocol.js";

/** How Inbound counts what it holds: bytes of credit an item takes, and what one may take at most. */
export interface Sizing<T> {
  size(item: T): number;
  /** Largest item (default MAX_CHUNK_BYTES). */
  maxItem?: number;
  /** Bytes past the window a sender may run (default 0: it stops at the window exactly). */
  slack?: number;
}

const chunks: Sizing<{ data: Buffer }> = { size: (item) => item.data.length };

export class Inbound<T> implements AsyncIterableIterator<T> {
  private readonly queue: T[] = [];
  private outstanding = 0; // sent by the guest, not yet credited
  private uncredited = 0; // consumed here, credit not yet sent
  private wake: (() => void) | undefined;
  private ended = false;
  private discarding = false;
  private error: Error | undefined;

  /**
   * @param window   the credit window the session was opened with
   * @param credit   sends Credit{bytes} to the guest
   * @param onReturn called when the consumer stops iterating before the end; from then on what
   *                 still arrives is credited and dropped, so the sender is never left blocked
   */
  constructor(
    private readonly window: number,
    private readonly credit: (bytes: number) => void,
    private readonly onReturn: () => void,
    private readonly sizing: Sizing<T> = chunks as unknown as Sizing<T>,
  ) {}

  /** Chunks received and not yet taken by the reader. */
  get backlog(): number {
    return this.queue.length;
  }

  /** Takes one item from the guest; a guest that ignores its credit is a protocol error. */
  push(item: T): void {
    const n = this.sizing.size(item);
    if (n > (this.sizing.maxItem ?? MAX_CHUNK_BYTES) || this.outstanding + n > this.window + (this.sizing.slack ?? 0)) {
      throw new AgentProtocolError(`the guest sent ${n} bytes with ${this.window - this.outstanding} bytes of credit left`);
    }
    if (this.discarding) {
      this.credit(n);
      return;
    }
    if (this.ended) return;
    this.outstanding += n;
    this.queue.push(item);
    this.wakeUp();
  }

  /** No more chunks: the iterator finishes after the queue, or throws `err`. */
  end(err?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.error = err;
    this.wakeUp();
  }

  private wakeUp(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async next(): Promise<IteratorResult<T>> {
    for (;;) {
      const item = this.queue.shift();
      if (item) {
        this.consumed(this.sizing.size(item));
        return { value: item, done: false };
      }
      if (this.error) throw this.error;
      if (this.ended) return { value: undefined, done: true };
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  // Credit goes back in quarters of the window: the guest stops only with the whole window
  // outstanding, so a quarter is always reached, and batching spares a frame per chunk.
  private consumed(n: number): void {
    this.outstanding -= n;
    this.uncredited += n;
    if (this.ended) return;
    if (this.uncredited >= this.window / 4) {
      const bytes = this.uncredited;
      this.uncredited = 0;
      this.credit(bytes);
    }
  }

  async return(): Promise<IteratorResult<T>> {
    if (!this.ended) {
      this.ended = true;
      this.discarding = true;
      this.queue.length = 0;
      const owed = this.outstanding + this.uncredited;
      this.outstanding = this.uncredited = 0;
      if (owed) this.credit(owed);
      this.onReturn();
    }
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

/**
 * Host bytes for one session: a file's, or a process's stdin and channel, which share the
 * session's window (the guest credits them together).
 */
export class Outbound {
  private inflight = 0;
  private waiters: (() => void)[] = [];
  private tail: Promise<void> = Promise.resolve();
  private error: Error | undefined;
  private readonly finished = { stdin: false, channel: false };

  constructor(
    private readonly channel: Channel,
    private readonly session: number,
  ) {}

  /** end() was called for stdin (or, with `channel`, the channel). */
  ended(which: "stdin" | "channel" = "stdin"): boolean {
    return this.finished[which];
  }

  /** The guest wrote `bytes` more; room opens in the window. */
  credit(bytes: number): void {
    this.inflight = Math.max(0, this.inflight - bytes);
    this.wakeAll();
  }

  /** The session ended: pending and later writes reject with `err`. */
  fail(err: Error): void {
    this.error ??= err;
    this.wakeAll();
  }

  private wakeAll(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Queues bytes (for the process's channel with `toChannel`) behind earlier writes; resolves once they are handed to the socket. */
  write(data: Uint8Array, toChannel = false): Promise<void> {
    return this.enqueue(async () => {
      for (let off = 0; off < data.length; off += MAX_CHUNK_BYTES) {
        const chunk = data.subarray(off, off + MAX_CHUNK_BYTES);
        while (!this.error && this.inflight + chunk.length > DEFAULT_WINDOW_BYTES) {
          await new Promise<void>((resolve) => this.waiters.push(resolve));
        }
        if (this.error) throw this.error;
        this.inflight += chunk.length;
        if (!this.channel.send(this.session, { case: "data", value: { data: chunk, channel: toChannel } })) await this.channel.drain();
      }
    });
  }

  /** Sends end-of-data (of the process's channel with `toChannel`) after every queued write. */
  end(toChannel = false): Promise<void> {
    return this.enqueue(async () => {
      const which = toChannel ? "channel" : "stdin";
      if (this.finished[which]) return;
      this.finished[which] = true;
      if (this.error) throw this.error;
      this.channel.send(this.session, { case: "data", value: { eof: true, channel: toChannel } });
    });
  }

  private enqueue(step: () => Promise<void>): Promise<void> {
    const run = this.tail.then(step);
    this.tail = run.catch(() => {});
    return run;
  }
}
