// The host's side of proto/agent.proto: the message types generated from it (src/gen, by
// scripts/gen-proto.mjs), the shared limits, and the length-prefixed framing (encoder and a
// bounded incremental decoder).
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";

import { AgentProtocolError } from "../errors.js";
import {
  Error_Kind,
  FileType,
  type GuestMessage,
  GuestMessageSchema,
  HostMessageSchema,
  Limit,
  Output_Stream,
  Rlimit_Resource,
  SignalName,
} from "../gen/agent_pb.js";

export const PROTOCOL_VERSION: number = Limit.PROTOCOL_VERSION;
export const MAX_FRAME_BYTES: number = Limit.MAX_FRAME_BYTES;
export const MAX_CHUNK_BYTES: number = Limit.MAX_CHUNK_BYTES;
export const DEFAULT_WINDOW_BYTES: number = Limit.DEFAULT_WINDOW_BYTES;
export const MAX_WINDOW_BYTES: number = Limit.MAX_WINDOW_BYTES;
export const MAX_SESSIONS: number = Limit.MAX_SESSIONS;

// A TypeScript enum's names, without the reverse (number -> name) entries.
const names = (e: object) => Object.keys(e).filter((k) => Number.isNaN(Number(k)));

/** Rlimit resources by name ("NOFILE"). */
export const RlimitResources: Readonly<Record<string, number>> = Object.fromEntries(
  names(Rlimit_Resource).map((k) => [k, Rlimit_Resource[k as keyof typeof Rlimit_Resource]]),
);
/** Signal names the protocol knows, by number. */
export const SignalNumbers: Readonly<Record<string, number>> = Object.fromEntries(
  names(SignalName)
    .filter((k) => k !== "SIGNAL_NONE")
    .map((k) => [k, SignalName[k as keyof typeof SignalName]]),
);
export const signalName = (n: number): string | null => (n ? (SignalName[n] ?? `SIG${n}`) : null);

/** A decoded guest message. */
export type GuestFrame = GuestMessage;
/** The body of a guest frame of kind `C`. */
export type GuestBody<C extends NonNullable<GuestFrame["body"]["case"]>> = Extract<GuestFrame["body"], { case: C }>["value"];
/** The body of a host message: `{ case: "exec", value: { argv } }`. */
export type HostBody = NonNullable<MessageInitShape<typeof HostMessageSchema>["body"]>;

export const errorKindName = (kind: number): string => Error_Kind[kind] ?? `KIND_${kind}`;
export const fileTypeName = (type: number): string => (FileType[type] ?? "UNKNOWN").toLowerCase();
export const streamName = (stream: number): string => (Output_Stream[stream] ?? "UNKNOWN").toLowerCase();

/** Encodes one host message as a frame: 4-byte big-endian length, then the message. */
export function encodeFrame(session: number, body: HostBody): Buffer {
  return lengthPrefixed(toBinary(HostMessageSchema, create(HostMessageSchema, { session, body })));
}

/** The framing every channel of this project uses: a 4-byte big-endian length, then the bytes. */
export function lengthPrefixed(body: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(4 + body.length);
  frame.writeUInt32BE(body.length, 0);
  frame.set(body, 4);
  return frame;
}

/**
 * Splits a byte stream from the guest into decoded frames. The guest is untrusted: a length
 * above MAX_FRAME_BYTES or an undecodable body throws AgentProtocolError, and at most one
 * frame's worth of bytes is ever buffered.
 */
export class FrameDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  *push(chunk: Buffer): Generator<GuestFrame> {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    while (this.pendingBytes >= 4) {
      const head = this.peek(4);
      const length = head.readUInt32BE(0);
      if (length > MAX_FRAME_BYTES) {
        throw new AgentProtocolError(`the guest sent a frame of ${length} bytes; the limit is ${MAX_FRAME_BYTES}`);
      }
      if (this.pendingBytes < 4 + length) return;
      const frame = this.take(4 + length).subarray(4);
      let decoded: GuestFrame;
      try {
        decoded = fromBinary(GuestMessageSchema, frame);
      } catch (err) {
        throw new AgentProtocolError(`the guest sent an undecodable frame of ${length} bytes`, { cause: err });
      }
      yield decoded;
    }
  }

  // The first n pending bytes, copied only when they straddle chunks (and then exactly n bytes).
  private peek(n: number): Buffer {
    const first = this.pending[0]!;
    if (first.length >= n) return first;
    const joined = Buffer.allocUnsafe(n);
    let filled = 0;
    for (let i = 0; filled < n; i++) {
      const part = this.pending[i]!;
      const used = Math.min(part.length, n - filled);
      part.copy(joined, filled, 0, used);
      filled += used;
    }
    return joined;
  }

  private take(n: number): Buffer {
    const out = this.peek(n);
    let left = n;
    while (left > 0) {
      const first = this.pending[0]!;
      if (first.length > left) {
        this.pending[0] = first.subarray(left);
        break;
      }
      left -= first.length;
      this.pending.shift();
    }
    this.pendingBytes -= n;
    return out.length === n ? out : out.subarray(0, n);
  }
}
