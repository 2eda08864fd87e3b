// The REPL driver protocol (guest/repl/*_driver.*), spoken on the channel the agent gives a driver
// beside its stdio (Exec.channel: the driver's fd 3, named by MSB_CHANNEL_FD):
//
//   host -> driver: cells, each [4-byte big-endian length N][N bytes UTF-8 source]
//   driver -> host: control frames, each [1-byte type][4-byte big-endian length N][N bytes JSON]
//     FRAME_READY, once at start: {"language":"python","version":"3.11.2"}
//                  (the Node driver says "javascript" and the Node version, the bash one "bash")
//     FRAME_END, when a cell is done: {"status":"ok"} (with "result": the repr of a final
//                expression's value, from the Python and Node drivers) or
//                {"status":"error","ename":"ZeroDivisionError","evalue":"division by zero"}
//
// What a cell prints is not framed: the driver's stdout and stderr are the user's, and come to the
// host as the process's own output. The agent forwards channel bytes only behind output written
// before them, so a cell's end frame follows everything it printed (a driver flushes its own
// buffers first) and no sentinel is looked for in user output. Output that comes between cells
// (threads, timers, children that outlive their cell) goes with the next cell.
//
// REPL_PROTOCOL is the one definition of the numbers both sides use: a driver is shipped with them
// as a prelude in its own language (driverPrelude, put in front by driverSource in repl.ts).
//
// The driver runs untrusted code, which can write anything to fd 3, so the decoder trusts nothing:
// lengths, types and JSON are checked and a violation throws AgentProtocolError, after which the
// stream is unusable (framing is lost) and the host replaces the driver.

import { AgentProtocolError, InvalidArgumentError } from "../errors.js";

/** The numbers the host and the drivers share. */
export const REPL_PROTOCOL = {
  FRAME_READY: 1,
  FRAME_END: 2,
  /** Characters of a name, message or result a driver puts in an end frame at most. */
  MAX_TEXT_CHARS: 16 * 1024,
} as const;

/** Largest cell sent. */
export const REPL_MAX_CELL_BYTES = 16 * 1024 * 1024;
/**
 * Largest control frame accepted: above three texts of MAX_TEXT_CHARS escaped at worst (12 bytes
 * a character, a surrogate pair as two \u escapes); a bigger one is garbage we refuse to parse.
 */
export const REPL_MAX_CONTROL_BYTES = 1024 * 1024;

const HEADER_BYTES = 5;

export type ReplFrame =
  | { type: "end"; status: "ok" | "error"; ename?: string; evalue?: string; result?: string }
  | { type: "ready"; language: string; version: string };

/** REPL_PROTOCOL as source of `language`, for the top of a driver. */
export function driverPrelude(language: "python" | "javascript" | "bash"): string {
  const entries = Object.entries(REPL_PROTOCOL);
  const origin = "The host's REPL protocol constants (src/sandbox/repl-frames.ts).";
  if (language === "python") return [`# ${origin}`, ...entries.map(([k, v]) => `${k} = ${v}`), ""].join("\n");
  if (language === "bash") return [`# ${origin}`, ...entries.map(([k, v]) => `${k}=${v}`), ""].join("\n");
  // The driver ships as one script: strict mode is declared once, at its top.
  return ['"use strict";', `// ${origin}`, ...entries.map(([k, v]) => `const ${k} = ${v};`), ""].join("\n");
}

/** Frames a cell for the driver's channel. */
export function encodeCell(code: string): Buffer {
  const body = Buffer.from(code, "utf8");
  if (body.length > REPL_MAX_CELL_BYTES) {
    throw new InvalidArgumentError(`REPL cell is ${body.length} bytes; the limit is ${REPL_MAX_CELL_BYTES}`);
  }
  const header = Buffer.allocUnsafe(4);
  header.writeUInt32BE(body.length, 0);
  return Buffer.concat([header, body]);
}

function protocolError(message: string): AgentProtocolError {
  return new AgentProtocolError(`REPL driver protocol: ${message}`);
}

/** Incremental decoder for what a driver writes to its channel; feed it chunks as they arrive. */
export class ReplFrameDecoder {
  // Chunks are kept as a list and joined once per frame, so a frame arriving in 64 KiB pieces
  // costs one copy, not a quadratic series of concats.
  private chunks: Buffer[] = [];
  private buffered = 0;
  private header: { type: number; length: number } | null = null;
  private failed: AgentProtocolError | null = null;

  /** Decodes every complete frame in the data so far. Throws AgentProtocolError on a violation. */
  push(chunk: Buffer): ReplFrame[] {
    if (this.failed) throw this.failed;
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const frames: ReplFrame[] = [];
    try {
      for (;;) {
        if (!this.header) {
          if (this.buffered < HEADER_BYTES) break;
          const head = this.take(HEADER_BYTES);
          // Check the header before waiting for the body, so garbage fails at once instead of
          // making us buffer up to 4 GiB of it.
          this.header = checkHeader(head.readUInt8(0), head.readUInt32BE(1));
        }
        if (this.buffered < this.header.length) break;
        const body = this.take(this.header.length);
        const type = this.header.type;
        this.header = null;
        frames.push(decodeBody(type, body));
      }
    } catch (err) {
      this.failed = err instanceof AgentProtocolError ? err : protocolError(String(err));
      throw this.failed;
    }
    return frames;
  }

  /** Call at end of stream: throws if it stopped inside a frame. */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.header || this.buffered > 0) {
      this.failed = protocolError(`stream ended inside a frame (${this.buffered} bytes of a ${this.header ? "body" : "header"} pending)`);
      throw this.failed;
    }
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const c = this.chunks[0]!;
        const want = n - filled;
        if (c.length <= want) {
          c.copy(out, filled);
          filled += c.length;
          this.chunks.shift();
        } else {
          c.copy(out, filled, 0, want);
          this.chunks[0] = c.subarray(want);
          filled += want;
        }
      }
    }
    this.buffered -= n;
    return out;
  }
}

function checkHeader(type: number, length: number): { type: number; length: number } {
  if (type !== REPL_PROTOCOL.FRAME_READY && type !== REPL_PROTOCOL.FRAME_END) {
    throw protocolError(`unknown frame type ${type}`);
  }
  if (length > REPL_MAX_CONTROL_BYTES) {
    throw protocolError(`frame type ${type} is ${length} bytes; the limit is ${REPL_MAX_CONTROL_BYTES}`);
  }
  return { type, length };
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function parseJson(type: number, body: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(body));
  } catch (err) {
    throw protocolError(`frame type ${type} is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw protocolError(`frame type ${type} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

function optionalString(obj: Record<string, unknown>, key: string): string | undefined {
  const v = obj[key];
  if (v === undefined) return undefined;
  if (typeof v !== "string") throw protocolError(`end frame field "${key}" is not a string`);
  return v;
}

function decodeBody(type: number, body: Buffer): ReplFrame {
  const obj = parseJson(type, body);
  if (type === REPL_PROTOCOL.FRAME_READY) {
    if (typeof obj.language !== "string" || typeof obj.version !== "string") {
      throw protocolError("ready frame lacks string language/version");
    }
    return { type: "ready", language: obj.language, version: obj.version };
  }
  if (obj.status === "ok") {
    const result = optionalString(obj, "result");
    return result === undefined ? { type: "end", status: "ok" } : { type: "end", status: "ok", result };
  }
  if (obj.status !== "error") throw protocolError(`end frame has bad status ${JSON.stringify(obj.status)}`);
  const frame: ReplFrame = { type: "end", status: "error" };
  const ename = optionalString(obj, "ename");
  const evalue = optionalString(obj, "evalue");
  if (ename !== undefined) frame.ename = ename;
  if (evalue !== undefined) frame.evalue = evalue;
  return frame;
}
