// Host side of the REPL driver protocol (guest/repl/*_driver.*): cells out, output/status frames in.
//
// The host starts a driver as an ordinary guest process (`python3 python_driver.py`,
// `node node_driver.js`) with stdin, stdout and stderr as pipes:
//
//   host -> driver, on the driver's stdin: cells, each
//     [4-byte big-endian length N][N bytes UTF-8 source]
//   driver -> host, on the driver's ORIGINAL stdout (the drivers save it to a private fd before
//   anything else runs): frames
//     [1-byte type][4-byte big-endian length N][N bytes]
//     type 1 = bytes the cell wrote to stdout, 2 = bytes it wrote to stderr,
//     type 3 = end of cell, JSON {"status":"ok"} (with "result": the repr of a final expression's
//              value, from the Python driver) or
//              {"status":"error","ename":"ZeroDivisionError","evalue":"division by zero"},
//     type 4 = ready, sent once at start, JSON {"language":"python","version":"3.11.2"}
//              (the Node driver says "javascript" and the Node version).
//
// Cells run one at a time in the order sent. A cell's type-3 frame comes only after every byte it
// wrote was sent as type 1/2 frames; there are no sentinel strings in user output. Type 1/2 frames
// may also arrive between cells (output from threads, timers or children that outlive a cell).
// The driver's own stderr (not framed) is for crashes of the driver itself.
//
// The driver runs untrusted code that can write anything to the real stdout fd if it finds it, so
// the decoder trusts nothing: lengths, types and JSON are checked and a violation throws
// AgentProtocolError, after which the stream is unusable (framing is lost).

import { AgentProtocolError, InvalidArgumentError } from "../errors.js";

export const REPL_FRAME_STDOUT = 1;
export const REPL_FRAME_STDERR = 2;
export const REPL_FRAME_END = 3;
export const REPL_FRAME_READY = 4;

/** Largest frame body accepted, and largest cell sent. */
export const REPL_MAX_FRAME_BYTES = 16 * 1024 * 1024;
/** Status frames are small JSON; a bigger one means garbage, and we refuse to parse megabytes. */
export const REPL_MAX_CONTROL_BYTES = 1024 * 1024;

const HEADER_BYTES = 5;

export type ReplFrame =
  | { type: "stdout" | "stderr"; data: Buffer }
  | { type: "end"; status: "ok" | "error"; ename?: string; evalue?: string; result?: string }
  | { type: "ready"; language: string; version: string };

/** Frames a cell for the driver's stdin. */
export function encodeCell(code: string): Buffer {
  const body = Buffer.from(code, "utf8");
  if (body.length > REPL_MAX_FRAME_BYTES) {
    throw new InvalidArgumentError(
      `REPL cell is ${body.length} bytes; the limit is ${REPL_MAX_FRAME_BYTES}`,
    );
  }
  const header = Buffer.allocUnsafe(4);
  header.writeUInt32BE(body.length, 0);
  return Buffer.concat([header, body]);
}

function protocolError(message: string): AgentProtocolError {
  return new AgentProtocolError(`REPL driver protocol: ${message}`);
}

/** Incremental decoder for the driver's stdout; feed it chunks as they arrive. */
export class ReplFrameDecoder {
  // Chunks are kept as a list and joined once per frame, so a 16 MiB frame arriving in 64 KiB
  // pieces costs one copy, not a quadratic series of concats.
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
      this.failed = protocolError(
        `stream ended inside a frame (${this.buffered} bytes of a ${this.header ? "body" : "header"} pending)`,
      );
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
  if (type < REPL_FRAME_STDOUT || type > REPL_FRAME_READY) {
    throw protocolError(`unknown frame type ${type}`);
  }
  const limit =
    type === REPL_FRAME_END || type === REPL_FRAME_READY ? REPL_MAX_CONTROL_BYTES : REPL_MAX_FRAME_BYTES;
  if (length > limit) {
    throw protocolError(`frame type ${type} is ${length} bytes; the limit is ${limit}`);
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
  switch (type) {
    case REPL_FRAME_STDOUT:
      return { type: "stdout", data: body };
    case REPL_FRAME_STDERR:
      return { type: "stderr", data: body };
    case REPL_FRAME_END: {
      const obj = parseJson(type, body);
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
    default: {
      const obj = parseJson(type, body);
      if (typeof obj.language !== "string" || typeof obj.version !== "string") {
        throw protocolError("ready frame lacks string language/version");
      }
      return { type: "ready", language: obj.language, version: obj.version };
    }
  }
}
