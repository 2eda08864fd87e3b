// AgentClient: the host's handle on one guest agent. Connects over a unix socket (or adopts an
// already-open stream), checks the handshake, and offers processes and file operations, many
// at once over the one connection.
import { randomBytes } from "node:crypto";
import { createConnection } from "node:net";
import type { Duplex } from "node:stream";

import { AgentConnectionError, AgentError, abortError, FileOperationError, InvalidArgumentError, linuxErrnoName, TimeoutError } from "../errors.js";
import { type AgentHello, Channel } from "./channel.js";
import { Inbound, Outbound } from "./flow.js";
import {
  agentFailure,
  type ChannelChunk,
  checkTimeout,
  collect,
  type ExecOptions,
  ExecProcess,
  type ExecResult,
  type OutputChunk,
  type SpawnOptions,
} from "./process.js";
import { DEFAULT_WINDOW_BYTES, errorKindName, fileTypeName, type GuestBody, type GuestFrame, type HostBody } from "./protocol.js";
import { FsWatch } from "./watch.js";

export type { AgentHello } from "./channel.js";

export interface ConnectOptions {
  /** Seconds to wait for the socket and the agent's hello. Default 10. */
  timeout?: number;
  signal?: AbortSignal;
}

export type FileType = "regular" | "directory" | "symlink" | "char_device" | "block_device" | "fifo" | "socket" | "unknown";

export interface FileStat {
  name: string;
  type: FileType;
  size: number;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  mtime: Date;
  /** Target of a symbolic link. */
  linkTarget?: string;
}

export interface ReadFileOptions {
  /** Byte offset to start at. */
  offset?: number;
  /** Bytes to read; default: to the end. */
  length?: number;
  signal?: AbortSignal;
}

export interface WriteFileOptions {
  /** Permission bits of a new file. Default 0o644. */
  mode?: number;
  /** Create missing parent directories. */
  parents?: boolean;
  signal?: AbortSignal;
}

export type FileData = string | Uint8Array | Iterable<Uint8Array | string> | AsyncIterable<Uint8Array | string>;

function checkPath(path: unknown, what = "path"): string {
  if (typeof path !== "string" || !path.startsWith("/") || path.includes("\0")) {
    throw new InvalidArgumentError(`${what} ${JSON.stringify(path)} must be an absolute guest path`);
  }
  return path;
}

function checkCount(name: string, v: number | undefined): number {
  if (v === undefined) return 0;
  if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`${name} must be a byte count >= 0, got ${v}`);
  return v;
}

function fileFailure(e: GuestBody<"error">): Error {
  if (errorKindName(e.kind) === "IO") return new FileOperationError(e.message, e.errnum, linuxErrnoName(e.errnum));
  return agentFailure(e);
}

function toStat(s: GuestBody<"stat">): FileStat {
  const stat: FileStat = {
    name: s.name,
    type: fileTypeName(s.type) as FileType,
    size: Number(s.size),
    mode: s.mode,
    uid: s.uid,
    gid: s.gid,
    mtime: new Date(Number(s.mtimeNs / 1000000n)),
  };
  if (s.linkTarget) stat.linkTarget = s.linkTarget;
  return stat;
}

/**
 * A Resume. A `generation` other than the agent's makes the VM a restored copy: it takes the
 * entropy, time and identity given, and only the sessions in `keep` carry on, for adopt(). The
 * agent bounds them (entropy 512 bytes, hostname 64 characters, keep 4096 sessions) and refuses
 * more with AgentError kind BAD_REQUEST, changing nothing.
 */
export interface ResumeOptions {
  /** An integer >= 0: the agent's own carries on as before; any other makes the VM a copy. */
  generation: number;
  /** Mixed into the guest kernel's RNG, credited. Default: 64 random bytes. */
  entropy?: Uint8Array;
  /** The guest's clock is stepped to this (0: left alone). Default: now. */
  unixTimeNs?: bigint;
  /** Default: unchanged. */
  hostname?: string;
  /** Boot id and machine id, a lower-case UUID ("xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"). Default: unchanged. */
  bootId?: string;
  /** Sessions (ExecProcess.session) that carry on in a copy; the agent kills the others. Default: none. */
  keep?: number[];
}

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

// Checks the form of a Resume; its bounds are the agent's to check.
function resumeMessage(r: ResumeOptions): HostBody {
  if (!Number.isSafeInteger(r.generation) || r.generation < 0) {
    throw new InvalidArgumentError(`generation must be an integer >= 0, got ${String(r.generation)}`);
  }
  if (r.entropy !== undefined && !(r.entropy instanceof Uint8Array)) throw new InvalidArgumentError("entropy must be a Uint8Array");
  if (r.unixTimeNs !== undefined && (typeof r.unixTimeNs !== "bigint" || r.unixTimeNs < INT64_MIN || r.unixTimeNs > INT64_MAX)) {
    throw new InvalidArgumentError(`unixTimeNs must be a bigint of nanoseconds within int64, got ${String(r.unixTimeNs)}`);
  }
  if (r.hostname !== undefined && (typeof r.hostname !== "string" || !/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(r.hostname))) {
    throw new InvalidArgumentError(`hostname ${JSON.stringify(r.hostname)} is invalid: letters, digits, '-' and '_', from a letter or digit`);
  }
  if (r.bootId !== undefined && (typeof r.bootId !== "string" || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(r.bootId))) {
    throw new InvalidArgumentError(`boot id ${JSON.stringify(r.bootId)} is not a lower-case UUID`);
  }
  const keep = r.keep ?? [];
  if (!Array.isArray(keep) || !keep.every((id) => Number.isInteger(id) && id >= 1 && id <= 0xffffffff)) {
    throw new InvalidArgumentError("keep must list session ids (integers from 1 to 4294967295)");
  }
  return {
    case: "resume",
    value: {
      generation: BigInt(r.generation),
      entropy: r.entropy ?? randomBytes(64),
      unixTimeNs: r.unixTimeNs ?? BigInt(Date.now()) * 1_000_000n,
      hostname: r.hostname ?? "",
      bootId: r.bootId ?? "",
      keep,
    },
  };
}

/** The guest's counters, as MetricsResult in proto/agent.proto names them. */
export interface GuestMetrics {
  cpuBusyNs: number;
  cpuTotalNs: number;
  cpus: number;
  memoryTotalBytes: number;
  memoryAvailableBytes: number;
  diskTotalBytes: number;
  diskFreeBytes: number;
  diskReadBytes: number;
  diskWrittenBytes: number;
  netRxBytes: number;
  netTxBytes: number;
  processes: number;
  uptimeNs: number;
}

export class AgentClient {
  private constructor(
    private readonly channel: Channel,
    private current: AgentHello,
  ) {}

  /** What the agent said when the connection opened, or answered the last resume(): versions, pid, boot timeline, generation. */
  get hello(): AgentHello {
    return this.current;
  }

  /** Connects to an agent listening on a unix socket. */
  static async connect(path: string, opts: ConnectOptions = {}): Promise<AgentClient> {
    const timeout = checkTimeout(opts.timeout ?? 10, "connect timeout");
    if (opts.signal?.aborted) throw abortError(opts.signal);
    const socket = createConnection(path);
    const started = Date.now();
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new TimeoutError(`could not connect to the agent at ${path} within ${timeout} s`)), timeout * 1000);
        const onAbort = () => reject(abortError(opts.signal!));
        opts.signal?.addEventListener("abort", onAbort, { once: true });
        const settle = () => (clearTimeout(timer), opts.signal?.removeEventListener("abort", onAbort));
        socket.once("connect", () => (settle(), resolve()));
        socket.once("error", (err) => (settle(), reject(new AgentConnectionError(`cannot connect to the agent at ${path}: ${err.message}`, { cause: err }))));
      });
    } catch (err) {
      socket.destroy();
      throw err;
    }
    const left = Math.max(0.001, timeout - (Date.now() - started) / 1000);
    return AgentClient.fromStream(socket, { ...opts, timeout: left });
  }

  /** Adopts an open byte stream to an agent (a VM's serial port socket, a vsock bridge). */
  static async fromStream(stream: Duplex, opts: ConnectOptions = {}): Promise<AgentClient> {
    const timeout = checkTimeout(opts.timeout ?? 10, "connect timeout");
    const channel = new Channel(stream);
    const hello = await channel.handshake(timeout, opts.signal);
    return new AgentClient(channel, hello);
  }

  /**
   * A new connection to a VM whose host went away while its agent lingered (linger()): the agent
   * speaks first (a Hello) and holds everything until the Resume sent here, of its own generation,
   * which keeps the sessions in `keep` (take each over with adopt()) and ends the others. What
   * comes before the Hello was written for the lost host, and is dropped.
   */
  static async fromLingeringStream(stream: Duplex, keep: readonly number[], opts: ConnectOptions = {}): Promise<AgentClient> {
    const timeout = checkTimeout(opts.timeout ?? 10, "connect timeout");
    const channel = new Channel(stream);
    try {
      const first = await channel.handshake(timeout, opts.signal, true);
      const message = resumeMessage({ generation: first.generation, keep: [...keep] });
      return new AgentClient(channel, await channel.resume(message, keep, timeout, { opening: true, signal: opts.signal }));
    } catch (err) {
      channel.close(err as Error);
      throw err;
    }
  }

  /**
   * A new connection to a VM restored from a saved state: the guest is running already and waits
   * for its host, so the host speaks first (a Resume), and the Hello answering it opens the
   * connection (a refused Resume rejects with AgentError and closes the stream). The sessions the
   * Resume keeps are not known to the new client: take each over with adopt(); until then what the
   * agent sends for them waits, and their ids stay theirs.
   */
  static async fromRestoredStream(stream: Duplex, r: ResumeOptions, opts: ConnectOptions = {}): Promise<AgentClient> {
    const timeout = checkTimeout(opts.timeout ?? 10, "connect timeout");
    const message = resumeMessage(r);
    if (opts.signal?.aborted) throw abortError(opts.signal);
    const channel = new Channel(stream);
    try {
      return new AgentClient(channel, await channel.resume(message, r.keep ?? [], timeout, { opening: true, signal: opts.signal }));
    } catch (err) {
      channel.close(err as Error);
      throw err;
    }
  }

  /**
   * Quiets the agent before its VM is saved: it stops reading its processes' output and files, and
   * once what it had queued has arrived, sends nothing until resume(). From the call on, what this
   * client sends (stdin, credit, new requests) is held until resume() is answered, so no byte is in
   * flight towards the guest when the VM is saved. Rejects with TimeoutError (and closes the
   * connection) when the agent does not answer within `timeout` seconds (default 10).
   */
  async suspend(opts: { timeout?: number } = {}): Promise<void> {
    await this.channel.suspend(checkTimeout(opts.timeout ?? 10, "suspend timeout"));
  }

  /**
   * Lets the agent go on, suspended or not, and resolves with the Hello answering it, which becomes
   * `hello`. With the agent's own generation everything carries on and what was held goes out.
   * With another, the VM is a copy: every session this client had fails with AgentError kind
   * RESTORED (the agent killed those not in `keep`; take kept ones over with adopt()). A Resume
   * the agent refuses rejects with AgentError (kind BAD_REQUEST) and changes nothing.
   */
  async resume(r: ResumeOptions, opts: { timeout?: number } = {}): Promise<AgentHello> {
    const timeout = checkTimeout(opts.timeout ?? 10, "resume timeout");
    this.current = await this.channel.resume(resumeMessage(r), r.keep ?? [], timeout);
    return this.current;
  }

  /** True once the connection is gone; every call then fails with AgentConnectionError. */
  get closed(): boolean {
    return this.channel.closed;
  }

  // ---------------------------------------------------------------- processes

  /** Runs a process to completion and returns its collected output and exit status. */
  exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return collect(this.channel, argv, opts);
  }

  /** Starts a process and returns it for streaming output, stdin and signals (and its channel, with `channel: true`). */
  spawn(argv: readonly string[], opts: SpawnOptions & { channel: true }): ExecProcess<OutputChunk | ChannelChunk>;
  spawn(argv: readonly string[], opts?: SpawnOptions): ExecProcess;
  spawn(argv: readonly string[], opts: SpawnOptions = {}): ExecProcess<OutputChunk | ChannelChunk> {
    return new ExecProcess(this.channel, argv, opts);
  }

  /**
   * Takes over a process the last resume kept (`session` as it was, `pid` in the guest), with what
   * it sent since; `opts` as it was spawned with (stdin, window). Throws InvalidArgumentError for
   * a session that was not kept or is adopted already.
   */
  adopt(session: number, pid: number, opts: SpawnOptions & { channel: true }): ExecProcess<OutputChunk | ChannelChunk>;
  adopt(session: number, pid: number, opts?: SpawnOptions): ExecProcess;
  adopt(session: number, pid: number, opts: SpawnOptions = {}): ExecProcess<OutputChunk | ChannelChunk> {
    return new ExecProcess(this.channel, [], opts, { session, pid });
  }

  // ---------------------------------------------------------------- files

  /** Streams a guest file's bytes; leaving the loop early cancels the read. */
  readFileStream(path: string, opts: ReadFileOptions = {}): AsyncIterableIterator<Buffer> {
    checkPath(path);
    const offset = checkCount("offset", opts.offset);
    const length = checkCount("length", opts.length);
    if (opts.signal?.aborted) throw abortError(opts.signal);
    const channel = this.channel;
    let open = true;
    const cancel = () => {
      if (!open) return;
      open = false;
      channel.release(id);
      if (!channel.closed) channel.send(id, { case: "cancel", value: {} });
    };
    const onAbort = () => {
      cancel();
      inbound.end(abortError(opts.signal!));
    };
    const finish = (err?: Error) => {
      open = false;
      channel.release(id);
      opts.signal?.removeEventListener("abort", onAbort);
      inbound.end(err);
    };
    const id = channel.open({
      frame: (f) => {
        const b = f.body;
        if (b.case === "output") inbound.push({ data: b.value.data as Buffer });
        else if (b.case === "done") finish();
        else if (b.case === "error") finish(fileFailure(b.value));
        else finish(new AgentError(`unexpected ${b.case} frame for a file read`, "PROTOCOL"));
      },
      fail: (err) => finish(err),
    });
    const inbound = new Inbound<{ data: Buffer }>(
      DEFAULT_WINDOW_BYTES,
      (bytes) => open && !channel.closed && channel.send(id, { case: "credit", value: { bytes } }),
      cancel,
    );
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    channel.send(id, { case: "readFile", value: { path, offset: BigInt(offset), length: BigInt(length), window: DEFAULT_WINDOW_BYTES } });
    // Callers iterate plain Buffers.
    const chunks: AsyncIterableIterator<Buffer> = {
      next: async () => {
        const r = await inbound.next();
        return r.done ? r : { value: r.value.data, done: false };
      },
      return: async () => (await inbound.return(), { value: undefined, done: true }),
      [Symbol.asyncIterator]() {
        return this;
      },
    };
    return chunks;
  }

  /** Reads a whole guest file. */
  async readFile(path: string, opts: ReadFileOptions = {}): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const chunk of this.readFileStream(path, opts)) parts.push(chunk);
    return Buffer.concat(parts);
  }

  /**
   * Writes a guest file from a string, bytes, or an (async) iterable of byte chunks such as a
   * Node Readable. The guest writes a temporary file and renames it into place at the end, so
   * the path never holds half a file. Resolves with the number of bytes written.
   */
  async writeFile(path: string, data: FileData, opts: WriteFileOptions = {}): Promise<number> {
    checkPath(path);
    if (opts.mode !== undefined && (!Number.isInteger(opts.mode) || opts.mode < 0 || opts.mode > 0o7777)) {
      throw new InvalidArgumentError(`mode must be permission bits from 0 to 0o7777, got ${opts.mode}`);
    }
    if (opts.signal?.aborted) throw abortError(opts.signal);
    const channel = this.channel;
    let settle!: { resolve: (n: number) => void; reject: (e: Error) => void };
    const result = new Promise<number>((resolve, reject) => (settle = { resolve, reject }));
    const id = channel.open({
      frame: (f) => {
        const b = f.body;
        if (b.case === "credit") return outbound.credit(b.value.bytes);
        channel.release(id);
        if (b.case === "done") settle.resolve(Number(b.value.size));
        else if (b.case === "error") settle.reject(fileFailure(b.value));
        else settle.reject(new AgentError(`unexpected ${b.case} frame for a file write`, "PROTOCOL"));
      },
      fail: (err) => settle.reject(err),
    });
    const outbound = new Outbound(channel, id);
    const onAbort = () => {
      channel.release(id);
      if (!channel.closed) channel.send(id, { case: "cancel", value: {} });
      settle.reject(abortError(opts.signal!));
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    result.catch((err: Error) => outbound.fail(err));
    try {
      channel.send(id, { case: "writeFile", value: { path, mode: opts.mode ?? 0, parents: !!opts.parents } });
      if (typeof data === "string") await outbound.write(Buffer.from(data));
      else if (data instanceof Uint8Array) await outbound.write(data);
      // Readables in string mode yield strings.
      else for await (const chunk of data as AsyncIterable<Uint8Array | string>) await outbound.write(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
      await outbound.end();
    } catch (err) {
      // A failed source cancels the guest's half-written file; a guest-side failure explains itself.
      if (!channel.closed) {
        channel.release(id);
        channel.send(id, { case: "cancel", value: {} });
      }
      settle.reject(err as Error);
    }
    try {
      return await result;
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Lists a directory (without . and ..); symbolic links are described, not followed. */
  async list(path: string, opts: { signal?: AbortSignal } = {}): Promise<FileStat[]> {
    const entries: FileStat[] = [];
    await this.request({ case: "listDir", value: { path: checkPath(path) } }, opts.signal, (e) => {
      for (const s of e.entries) entries.push(toStat(s));
    });
    return entries;
  }

  /** Describes a path; a symbolic link is described, not followed. */
  async stat(path: string, opts: { signal?: AbortSignal } = {}): Promise<FileStat> {
    return toStat(this.answer(await this.request({ case: "stat", value: { path: checkPath(path) } }, opts.signal), "stat"));
  }

  /** Creates a directory; `parents` behaves like mkdir -p. */
  async mkdir(path: string, opts: { parents?: boolean; mode?: number; signal?: AbortSignal } = {}): Promise<void> {
    await this.request({ case: "mkdir", value: { path: checkPath(path), mode: opts.mode ?? 0, parents: !!opts.parents } }, opts.signal);
  }

  /** Removes a file, symbolic link or empty directory; `recursive` behaves like rm -r. */
  async remove(path: string, opts: { recursive?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    await this.request({ case: "remove", value: { path: checkPath(path), recursive: !!opts.recursive } }, opts.signal);
  }

  /** Renames within the guest, as rename(2). */
  async rename(from: string, to: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.request({ case: "rename", value: { from: checkPath(from, "from"), to: checkPath(to, "to") } }, opts.signal);
  }

  /** The guest's counters now (cumulative ones since its boot); see MetricsResult in proto/agent.proto. */
  async metrics(opts: { signal?: AbortSignal } = {}): Promise<GuestMetrics> {
    const m = this.answer(await this.request({ case: "metrics", value: {} }, opts.signal), "metrics");
    const n = Number;
    return {
      cpuBusyNs: n(m.cpuBusyNs),
      cpuTotalNs: n(m.cpuTotalNs),
      cpus: m.cpus,
      memoryTotalBytes: n(m.memoryTotalBytes),
      memoryAvailableBytes: n(m.memoryAvailableBytes),
      diskTotalBytes: n(m.diskTotalBytes),
      diskFreeBytes: n(m.diskFreeBytes),
      diskReadBytes: n(m.diskReadBytes),
      diskWrittenBytes: n(m.diskWrittenBytes),
      netRxBytes: n(m.netRxBytes),
      netTxBytes: n(m.netTxBytes),
      processes: m.processes,
      uptimeNs: n(m.uptimeNs),
    };
  }

  // A request's terminal frame, which must be of kind `c`.
  private answer<C extends "stat" | "metrics">(f: GuestFrame, c: C): GuestBody<C> {
    if (f.body.case !== c) throw new AgentError(`the agent answered ${c} with ${f.body.case ?? "an empty"} frame`, "PROTOCOL");
    return f.body.value as GuestBody<C>;
  }

  /**
   * Sends one request and resolves with its terminal frame; `entries` frames go to `onEntries`.
   * `now`: sent even while a suspended connection holds frames.
   */
  private request(body: HostBody, signal: AbortSignal | undefined, onEntries?: (e: GuestBody<"entries">) => void, now = false): Promise<GuestFrame> {
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const channel = this.channel;
    return new Promise<GuestFrame>((resolve, reject) => {
      const onAbort = () => {
        channel.release(id);
        reject(abortError(signal!));
      };
      const end = () => {
        channel.release(id);
        signal?.removeEventListener("abort", onAbort);
      };
      const id = channel.open({
        frame: (f) => {
          if (f.body.case === "entries" && onEntries) return onEntries(f.body.value);
          end();
          if (f.body.case === "error") reject(fileFailure(f.body.value));
          else resolve(f);
        },
        fail: (err) => (end(), reject(err)),
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      channel.send(id, body, now);
    });
  }

  // ---------------------------------------------------------------- lifetime

  /**
   * With `on`, a host that goes away leaves the agent's processes held (as if suspended) for the
   * next host, whose Resume says which carry on, instead of ending them (an outliving VM).
   */
  linger(on: boolean): void {
    this.channel.send(0, { case: "linger", value: { on } }, true);
  }

  /** Asks the agent to end every process and exit (as the guest's init: power off), suspended or not. */
  async shutdown(opts: { timeout?: number } = {}): Promise<void> {
    const timeout = checkTimeout(opts.timeout ?? 10, "shutdown timeout");
    const timer = setTimeout(() => this.channel.close(new TimeoutError(`the agent did not confirm shutdown within ${timeout} s`)), timeout * 1000);
    try {
      await this.request({ case: "shutdown", value: {} }, undefined, undefined, true);
    } finally {
      clearTimeout(timer);
    }
    this.channel.close(new AgentConnectionError("the agent was shut down"));
  }

  /** Requests under way: commands running, files being read or written; not watches, which only wait. */
  get activeSessions(): number {
    return this.channel.openSessions - this.watches;
  }

  private watches = 0;

  /**
   * Watches the guest directory `path` (with `recursive`, the tree below it): an async iterable of
   * changes that ends when the loop is left, close() is called, or the directory goes.
   */
  watch(path: string, opts: { recursive?: boolean } = {}): FsWatch {
    const w = new FsWatch(this.channel, checkPath(path), !!opts.recursive, fileFailure, () => this.watches--);
    this.watches++;
    return w;
  }

  /** Closes the connection; calls still pending fail with `reason` (default AgentConnectionError). */
  close(reason: Error = new AgentConnectionError("the agent client was closed")): void {
    this.channel.close(reason);
  }
}
