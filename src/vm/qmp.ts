// A QMP (QEMU Machine Protocol) client on a stream QEMU holds the other end of: the greeting and
// capabilities negotiation, commands answered in order, and events. QEMU is ours, but its lines
// are still bounded.
import type { Duplex } from "node:stream";

import { QmpError } from "../errors.js";

const MAX_LINE = 1 << 20;

type Json = Record<string, unknown>;

export class Qmp {
  private buffer = "";
  private readonly pending: { resolve(v: unknown): void; reject(e: Error): void; what: string }[] = [];
  private readonly eventWaiters = new Set<{ match(e: Json): boolean; resolve(e: Json): void; reject(e: Error): void }>();
  private error: Error | undefined;
  private greeted!: Promise<void>;

  private constructor(private readonly stream: Duplex) {}

  /** Connects over `stream`: waits for QEMU's greeting, then leaves negotiation mode. */
  static async connect(stream: Duplex): Promise<Qmp> {
    const qmp = new Qmp(stream);
    qmp.greeted = new Promise((resolve, reject) => qmp.pending.push({ resolve: () => resolve(), reject, what: "greeting" }));
    stream.setEncoding("utf8");
    stream.on("data", (d: string) => qmp.onData(d));
    stream.on("error", (e) => qmp.fail(e));
    stream.on("close", () => qmp.fail(new QmpError("QEMU closed its monitor")));
    await qmp.greeted;
    await qmp.execute("qmp_capabilities");
    return qmp;
  }

  /** Runs a command; resolves with its "return" value, rejects with its "error". */
  execute(command: string, args?: Json): Promise<unknown> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject, what: command });
      this.stream.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  /** Resolves with the first event for which `match` holds, from now on. */
  event(match: (e: Json) => boolean): Promise<Json> {
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      const w = { match, resolve: (e: Json) => (this.eventWaiters.delete(w), resolve(e)), reject };
      this.eventWaiters.add(w);
    });
  }

  close(): void {
    this.stream.destroy();
  }

  private onData(d: string): void {
    this.buffer += d;
    if (this.buffer.length > MAX_LINE && !this.buffer.includes("\n")) {
      this.fail(new QmpError("QEMU sent an over-long monitor line"));
      return;
    }
    for (let nl = this.buffer.indexOf("\n"); nl >= 0; nl = this.buffer.indexOf("\n")) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      let msg: Json;
      try {
        msg = JSON.parse(line) as Json;
      } catch {
        this.fail(new QmpError(`QEMU sent a monitor line that is not JSON: ${line.slice(0, 200)}`));
        return;
      }
      if ("event" in msg) {
        for (const w of [...this.eventWaiters]) if (w.match(msg)) w.resolve(msg);
      } else if ("QMP" in msg || "return" in msg || "error" in msg) {
        const p = this.pending.shift();
        if (!p) continue;
        const err = msg.error as { class?: string; desc?: string } | undefined;
        if (err) p.reject(new QmpError(`QEMU refused ${p.what}: ${err.desc ?? err.class ?? "error"}`));
        else p.resolve(msg.return);
      }
    }
  }

  private fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    for (const p of this.pending.splice(0)) p.reject(err);
    for (const w of this.eventWaiters) w.reject(err);
    this.eventWaiters.clear();
  }
}
