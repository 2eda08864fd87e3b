// AgentClient: the host's handle on one guest agent. Connects over a unix socket (or adopts an
// already-open stream), checks the handshake, and offers processes and file operations, many
// at once over the one connection.
import { randomBytes } from "node:crypto";
import { createConnection } from "node:net";
import type { Duplex } from "node:stream";

import { AgentConnectionError, AgentError, FileOperationError, abortError, InvalidArgumentError, linuxErrnoName, TimeoutError } from "../errors.js";
import { type AgentHello, Channel } from "./channel.js";
import { Inbound, Outbound } from "./flow.js";
import { agentFailure, checkTimeout, collect, type ExecOptions, ExecProcess, type ExecResult, type SpawnOptions } from "./process.js";
import { DEFAULT_WINDOW_BYTES, errorKindName, fileTypeName, type GuestFrame, toNumber, type WireStat } from "./protocol.js";

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

function fileFailure(e: NonNullable<GuestFrame["error"]>): Error {
  if (errorKindName(e.kind) === "IO") return new FileOperationError(e.message, e.errnum, linuxErrnoName(e.errnum));
  return agentFailure(e);
}

function toStat(s: WireStat): FileStat {
  const stat: FileStat = {
    name: s.name,
    type: fileTypeName(s.type) as FileType,
    size: toNumber(s.size),
    mode: s.mode,
    uid: s.uid,
    gid: s.gid,
    mtime: new Date(toNumber(s.mtimeNs) / 1e6),
  };
  if (s.linkTarget) stat.linkTarget = s.linkTarget;
  return stat;
}

/**
 * A Resume: `generation` other than the agent's makes the VM a restored copy that takes the
 * entropy, time and identity given (defaults: 64 random bytes, now, unchanged) and keeps only the
 * sessions in `keep` (default none).
 */
export interface ResumeOptions {
  generation: number;
  entropy?: Uint8Array;
  unixTimeNs?: bigint;
  hostname?: string;
  /** A UUID ("xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", lower case). */
  bootId?: string;
  keep?: number[];
}

function resumeMessage(r: ResumeOptions): Record<string, unknown> {
  if (r.hostname !== undefined && (r.hostname.length > 64 || !/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(r.hostname))) {
    throw new InvalidArgumentError(`hostname ${JSON.stringify(r.hostname)} is invalid: 1-64 letters, digits, '-' and '_'`);
  }
  if (r.bootId !== undefined && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(r.bootId)) {
    throw new InvalidArgumentError(`boot id ${JSON.stringify(r.bootId)} is not a lower-case UUID`);
  }
  const entropy = r.entropy ?? randomBytes(64);
  if (entropy.length > 512) throw new InvalidArgumentError(`entropy of ${entropy.length} bytes is more than the 512 the agent takes`);
  return {
    session: 0,
    resume: {
      generation: r.generation,
      entropy,
      unixTimeNs: (r.unixTimeNs ?? BigInt(Date.now()) * 1_000_000n).toString(),
      hostname: r.hostname ?? "",
      bootId: r.bootId ?? "",
      keep: r.keep ?? [],
    },
  };
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
   * A new connection to a VM restored from a saved state: the guest is running already and waits
   * for its host, so the host speaks first (a Resume), and the Hello answering it opens the
   * connection. Sessions the Resume keeps are not known to this client until adopted.
   */
  static async fromRestoredStream(stream: Duplex, r: ResumeOptions, opts: ConnectOptions = {}): Promise<AgentClient> {
    const timeout = checkTimeout(opts.timeout ?? 10, "connect timeout");
    const message = resumeMessage(r);
    const channel = new Channel(stream);
    const hello = channel.handshake(timeout, opts.signal);
    channel.send(message);
    return new AgentClient(channel, await hello);
  }

  /**
   * Quiets the agent before its VM is saved: it stops reading its processes' output and files,
   * and once what it had queued has arrived, sends nothing until resume().
   */
  async suspend(opts: { timeout?: number } = {}): Promise<void> {
    const timeout = checkTimeout(opts.timeout ?? 10, "suspend timeout");
    const done = this.channel.suspended(timeout);
    this.channel.send({ session: 0, suspend: {} });
    await done;
  }

  /** Lets a suspended agent go on (see ResumeOptions for a restored copy); resolves with its new hello. */
  async resume(r: ResumeOptions, opts: { timeout?: number } = {}): Promise<AgentHello> {
    const timeout = checkTimeout(opts.timeout ?? 10, "resume timeout");
    const message = resumeMessage(r);
    const hello = this.channel.handshake(timeout);
    this.channel.send(message);
    this.current = await hello;
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

  /** Starts a process and returns it for streaming output, stdin and signals. */
  spawn(argv: readonly string[], opts: SpawnOptions = {}): ExecProcess {
    return new ExecProcess(this.channel, argv, opts);
  }

  /**
   * Takes over a process a Resume kept running in a restored VM (`session` as it was, `pid` in the
   * guest); `opts` as it was spawned with (stdin, window).
   */
  adopt(session: number, pid: number, opts: SpawnOptions = {}): ExecProcess {
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
      if (!channel.closed) channel.send({ session: id, cancel: {} });
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
        if (f.body === "output") inbound.push({ data: f.output!.data as Buffer });
        else if (f.body === "done") finish();
        else if (f.body === "error") finish(fileFailure(f.error!));
        else finish(new AgentError(`unexpected ${f.body} frame for a file read`, "PROTOCOL"));
      },
      fail: (err) => finish(err),
    });
    const inbound = new Inbound<{ data: Buffer }>(
      DEFAULT_WINDOW_BYTES,
      (bytes) => open && !channel.closed && channel.send({ session: id, credit: { bytes } }),
      cancel,
    );
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    channel.send({ session: id, readFile: { path, offset, length, window: DEFAULT_WINDOW_BYTES } });
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
        if (f.body === "credit") return outbound.credit(f.credit!.bytes);
        channel.release(id);
        if (f.body === "done") settle.resolve(toNumber(f.done!.size));
        else if (f.body === "error") settle.reject(fileFailure(f.error!));
        else settle.reject(new AgentError(`unexpected ${f.body} frame for a file write`, "PROTOCOL"));
      },
      fail: (err) => settle.reject(err),
    });
    const outbound = new Outbound(channel, id);
    const onAbort = () => {
      channel.release(id);
      if (!channel.closed) channel.send({ session: id, cancel: {} });
      settle.reject(abortError(opts.signal!));
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    result.catch((err: Error) => outbound.fail(err));
    try {
      channel.send({ session: id, writeFile: { path, mode: opts.mode ?? 0, parents: !!opts.parents } });
      if (typeof data === "string") await outbound.write(Buffer.from(data));
      else if (data instanceof Uint8Array) await outbound.write(data);
      // Readables in string mode yield strings.
      else for await (const chunk of data as AsyncIterable<Uint8Array | string>) await outbound.write(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
      await outbound.end();
    } catch (err) {
      // A failed source cancels the guest's half-written file; a guest-side failure explains itself.
      if (!channel.closed) {
        channel.release(id);
        channel.send({ session: id, cancel: {} });
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
    await this.request({ listDir: { path: checkPath(path) } }, opts.signal, (f) => {
      for (const e of f.entries!.entries) entries.push(toStat(e));
    });
    return entries;
  }

  /** Describes a path; a symbolic link is described, not followed. */
  async stat(path: string, opts: { signal?: AbortSignal } = {}): Promise<FileStat> {
    const f = await this.request({ stat: { path: checkPath(path) } }, opts.signal);
    return toStat(f.stat!);
  }

  /** Creates a directory; `parents` behaves like mkdir -p. */
  async mkdir(path: string, opts: { parents?: boolean; mode?: number; signal?: AbortSignal } = {}): Promise<void> {
    await this.request({ mkdir: { path: checkPath(path), mode: opts.mode ?? 0, parents: !!opts.parents } }, opts.signal);
  }

  /** Removes a file, symbolic link or empty directory; `recursive` behaves like rm -r. */
  async remove(path: string, opts: { recursive?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    await this.request({ remove: { path: checkPath(path), recursive: !!opts.recursive } }, opts.signal);
  }

  /** Renames within the guest, as rename(2). */
  async rename(from: string, to: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    await this.request({ rename: { from: checkPath(from, "from"), to: checkPath(to, "to") } }, opts.signal);
  }

  /** Sends one request and resolves with its terminal frame; `entries` frames go to `onEntries`. */
  private request(body: Record<string, unknown>, signal: AbortSignal | undefined, onEntries?: (f: GuestFrame) => void): Promise<GuestFrame> {
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
          if (f.body === "entries" && onEntries) return onEntries(f);
          end();
          if (f.body === "error") reject(fileFailure(f.error!));
          else resolve(f);
        },
        fail: (err) => (end(), reject(err)),
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      channel.send({ session: id, ...body });
    });
  }

  // ---------------------------------------------------------------- lifetime

  /** Asks the agent to end every process and exit (as the guest's init: power off). */
  async shutdown(opts: { timeout?: number } = {}): Promise<void> {
    const timeout = checkTimeout(opts.timeout ?? 10, "shutdown timeout");
    const timer = setTimeout(() => this.channel.close(new TimeoutError(`the agent did not confirm shutdown within ${timeout} s`)), timeout * 1000);
    try {
      await this.request({ shutdown: {} }, undefined);
    } finally {
      clearTimeout(timer);
    }
    this.channel.close(new AgentConnectionError("the agent was shut down"));
  }

  /** Closes the connection; calls still pending fail with AgentConnectionError. */
  close(): void {
    this.channel.close(new AgentConnectionError("the agent client was closed"));
  }
}

