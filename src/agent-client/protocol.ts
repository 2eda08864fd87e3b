// The host's view of proto/agent.proto: message types loaded with protobufjs, the shared limits,
// and the length-prefixed framing (encoder and a bounded incremental decoder).
import { fileURLToPath } from "node:url";
import protobuf from "protobufjs";

import { AgentProtocolError } from "../errors.js";

// src/agent-client and dist/agent-client are both two levels below the package root.
const PROTO_PATH = fileURLToPath(new URL("../../proto/agent.proto", import.meta.url));
const root = protobuf.loadSync(PROTO_PATH);

const HostMessage = root.lookupType("microsandbox.agent.HostMessage");
const GuestMessage = root.lookupType("microsandbox.agent.GuestMessage");
const LimitEnum = root.lookupEnum("microsandbox.agent.Limit").values;
const ErrorKinds = root.lookupEnum("microsandbox.agent.Error.Kind").valuesById;
const FileTypes = root.lookupEnum("microsandbox.agent.FileType").valuesById;
const Streams = root.lookupEnum("microsandbox.agent.Output.Stream").valuesById;
export const RlimitResources = root.lookupEnum("microsandbox.agent.Rlimit.Resource").values;
const SignalEnum = root.lookupEnum("microsandbox.agent.SignalName");
/** Signal names the protocol knows, by number. */
export const SignalNumbers: Readonly<Record<string, number>> = Object.fromEntries(
  Object.entries(SignalEnum.values).filter(([name]) => name !== "SIGNAL_NONE"),
);
export const signalName = (n: number): string | null => (n ? (SignalEnum.valuesById[n] ?? `SIG${n}`) : null);

function limit(name: string): number {
  const v = LimitEnum[name];
  if (v === undefined) throw new Error(`proto/agent.proto has no Limit ${name}`);
  return v;
}

export const PROTOCOL_VERSION = limit("PROTOCOL_VERSION");
export const MAX_FRAME_BYTES = limit("MAX_FRAME_BYTES");
export const MAX_CHUNK_BYTES = limit("MAX_CHUNK_BYTES");
export const DEFAULT_WINDOW_BYTES = limit("DEFAULT_WINDOW_BYTES");
export const MAX_WINDOW_BYTES = limit("MAX_WINDOW_BYTES");
export const MAX_SESSIONS = limit("MAX_SESSIONS");

// uint64 fields decode as Long objects when the long package is present (protobufjs depends on it).
type Long64 = number | { toNumber(): number };
export function toNumber(v: Long64 | null | undefined): number {
  if (v === null || v === undefined) return 0;
  return typeof v === "number" ? v : v.toNumber();
}

/** A decoded guest message: `body` names the field that is set. */
export interface GuestFrame {
  session: number;
  body: string;
  hello?: { protocolVersion: number; agentVersion: string; boot: { name: string; tNs: Long64 }[]; pid: number; generation: Long64 };
  suspended?: Record<string, never>;
  started?: { pid: number };
  output?: { stream: number; data: Uint8Array };
  credit?: { bytes: number };
  exit?: { code: number; signal: number; timedOut: boolean; durationNs: Long64; oomKills: Long64; pidsLimitHits: Long64; cpuTimeNs: Long64; peakMemoryBytes: Long64 };
  stat?: WireStat;
  entries?: { entries: WireStat[] };
  done?: { size: Long64 };
  error?: { kind: number; errnum: number; message: string };
  metrics?: Record<string, Long64> & { cpus: number; processes: number };
  fsEvents?: { events: { kind: number; path: string; from: string; directory: boolean }[] };
}

export interface WireStat {
  name: string;
  type: number;
  size: Long64;
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: Long64;
  linkTarget: string;
}

export const errorKindName = (kind: number): string => ErrorKinds[kind] ?? `KIND_${kind}`;
export const fileTypeName = (type: number): string => (FileTypes[type] ?? "UNKNOWN").toLowerCase();
export const streamName = (stream: number): string => (Streams[stream] ?? "UNKNOWN").toLowerCase();

/** Encodes one host message as a frame: 4-byte big-endian length, then the message. */
export function encodeFrame(message: Record<string, unknown>): Buffer {
  return lengthPrefixed(HostMessage.encode(HostMessage.fromObject(message)).finish());
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
        const message = GuestMessage.decode(frame);
        decoded = message as unknown as GuestFrame;
        // `body` is protobufjs's oneof accessor, whose setter clears the oneof for a name that is
        // no field: "" (a frame with no body) needs a property of its own.
        Object.defineProperty(decoded, "body", { value: (message as unknown as { body?: string }).body ?? "", enumerable: true });
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
