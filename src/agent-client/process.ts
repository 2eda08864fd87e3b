// A process running in the guest: the streaming form (ExecProcess: output as an async iterable,
// stdin writes, signals) and the option checks that turn ExecOptions into an Exec request.
import { AgentError, abortError, ExecError, InvalidArgumentError, linuxErrnoName, OutputLimitError, TimeoutError } from "../errors.js";
import type { Channel } from "./channel.js";
import { Inbound, Outbound } from "./flow.js";
import {
  DEFAULT_WINDOW_BYTES,
  errorKindName,
  type GuestBody,
  type GuestFrame,
  type HostBody,
  MAX_WINDOW_BYTES,
  RlimitResources,
  SignalNumbers,
  signalName,
  streamName,
} from "./protocol.js";

/** PATH of a process whose environment names none: the agent searches no other. */
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Linux signal names, as the protocol defines them. */
export const SIGNALS = Object.keys(SignalNumbers) as SignalName[];
export type SignalName =
  | "SIGHUP"
  | "SIGINT"
  | "SIGQUIT"
  | "SIGILL"
  | "SIGTRAP"
  | "SIGABRT"
  | "SIGBUS"
  | "SIGFPE"
  | "SIGKILL"
  | "SIGUSR1"
  | "SIGSEGV"
  | "SIGUSR2"
  | "SIGPIPE"
  | "SIGALRM"
  | "SIGTERM"
  | "SIGSTKFLT"
  | "SIGCHLD"
  | "SIGCONT"
  | "SIGSTOP"
  | "SIGTSTP"
  | "SIGTTIN"
  | "SIGTTOU"
  | "SIGURG"
  | "SIGXCPU"
  | "SIGXFSZ"
  | "SIGVTALRM"
  | "SIGPROF"
  | "SIGWINCH"
  | "SIGIO"
  | "SIGPWR"
  | "SIGSYS";

export type RlimitName = "cpu" | "fsize" | "data" | "stack" | "core" | "nofile" | "as" | "nproc" | "memlock";

export interface SpawnOptions {
  /** The whole environment of the process; PATH is DEFAULT_PATH unless it names one. */
  env?: Record<string, string>;
  /** Absolute working directory in the guest. Default: "/". */
  cwd?: string;
  /** User to run as: a name from the guest's /etc/passwd, or a uid. */
  user?: string | number;
  uid?: number;
  gid?: number;
  /** Give the process a stdin pipe (write() / end()); otherwise it reads /dev/null. */
  stdin?: boolean;
  /**
   * Give the process a channel to the host beside its stdio: a socket at its fd 3, named by
   * MSB_CHANNEL_FD=3 in its environment. writeChannel() / endChannel() send it bytes; what it
   * writes there arrives as "channel" chunks, never ahead of stdout and stderr it wrote before.
   * Not with `pty`.
   */
  channel?: boolean;
  /** Seconds after which the guest kills the whole process tree (exit.timedOut is then true). */
  timeout?: number;
  /** Resource limits: a number sets soft and hard, a pair sets [soft, hard]; Infinity = unlimited. */
  rlimits?: Partial<Record<RlimitName, number | [number, number]>>;
  /** Output credit in bytes: how far the process may run ahead of the reader. */
  window?: number;
  /** Aborting kills the process tree. */
  signal?: AbortSignal;
  /**
   * Run on a terminal of this size instead of pipes: output (stdout and stderr alike) arrives as
   * raw "stdout" chunks, write() types on the terminal, resize() changes its size; the process
   * leads a session with the terminal as its controlling terminal (Ctrl-C is the byte "\x03").
   */
  pty?: { rows: number; cols: number };
  /** @internal Sees every output chunk as it arrives, before the reader (the sandbox's log). */
  onOutput?: (chunk: OutputChunk) => void;
}

export interface OutputChunk {
  stream: "stdout" | "stderr";
  data: Buffer;
}

/** What a process spawned with `channel: true` wrote to its channel. */
export interface ChannelChunk {
  stream: "channel";
  data: Buffer;
}

export interface ExitStatus {
  /** Exit code, or null when a signal ended the process. */
  exitCode: number | null;
  /** The signal that ended the process ("SIGKILL"), or null. */
  signal: string | null;
  /** The guest killed the process because `timeout` passed. */
  timedOut: boolean;
  /** From start to exit, in milliseconds. */
  durationMs: number;
  /** Counters of the process tree's own cgroup in a VM (0 outside one): processes the OOM killer took, forks refused by the pids limit. */
  guestCounters: { oomKills: number; pidsLimitHits: number };
  /** CPU time of the whole process tree (0 outside a VM), and the largest resident set of the process or a descendant it waited for. */
  usage: { cpuTimeMs: number; peakMemoryBytes: number };
}

function checkString(name: string, v: unknown): string {
  if (typeof v !== "string") throw new InvalidArgumentError(`${name} must be a string, got ${typeof v}`);
  if (v.includes("\0")) throw new InvalidArgumentError(`${name} ${JSON.stringify(v)} contains a NUL byte`);
  return v;
}

function checkId(name: string, v: unknown): number {
  if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 0xfffffffe) {
    throw new InvalidArgumentError(`${name} must be an integer from 0 to 4294967294, got ${String(v)}`);
  }
  return v as number;
}

export function checkTimeout(timeout: unknown, what = "timeout"): number {
  if (typeof timeout !== "number" || !(timeout > 0) || !Number.isFinite(timeout)) {
    throw new InvalidArgumentError(`${what} must be a positive number of seconds, got ${String(timeout)}`);
  }
  return timeout;
}

function limitValue(v: number): bigint {
  if (v === Infinity) return 2n ** 64n - 1n; // RLIM_INFINITY
  if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`rlimit values must be integers >= 0 or Infinity, got ${v}`);
  return BigInt(v);
}

/** A terminal size: whole rows and columns from 1 to 1000. */
export function checkTerminalSize(size: unknown): { rows: number; cols: number } {
  const { rows, cols } = (size ?? {}) as { rows?: unknown; cols?: unknown };
  const ok = (v: unknown) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 1000;
  if (typeof size !== "object" || !ok(rows) || !ok(cols)) {
    throw new InvalidArgumentError(`terminal size ${JSON.stringify(size)} is invalid: give { rows, cols }, whole numbers from 1 to 1000`);
  }
  return { rows: rows as number, cols: cols as number };
}

/** The Exec message, as built from spawn options. */
type ExecInit = Extract<HostBody, { case: "exec" }>["value"];

/** Validates spawn options and builds the Exec message. */
export function execRequest(argv: readonly string[], opts: SpawnOptions): ExecInit {
  if (!Array.isArray(argv) || argv.length === 0) {
    throw new InvalidArgumentError("argv must be a non-empty array: the program, then its arguments");
  }
  argv.forEach((a, i) => {
    checkString(`argv[${i}]`, a);
  });
  if (argv[0] === "") throw new InvalidArgumentError("argv[0] (the program) is empty");
  const env = { PATH: DEFAULT_PATH, ...opts.env };
  const envList = Object.entries(env).map(([k, v]) => {
    if (!k || k.includes("=") || k.includes("\0")) throw new InvalidArgumentError(`environment name ${JSON.stringify(k)} is invalid`);
    return `${k}=${checkString(`env.${k}`, v)}`;
  });
  const req: ExecInit = { argv: [...argv], env: envList, openStdin: !!opts.stdin || !!opts.pty };
  if (opts.pty !== undefined) req.pty = checkTerminalSize(opts.pty);
  if (opts.channel) {
    if (opts.pty !== undefined) throw new InvalidArgumentError("a process gets a channel or a terminal (pty), not both");
    req.channel = true;
  }
  if (opts.cwd !== undefined) {
    if (!checkString("cwd", opts.cwd).startsWith("/")) throw new InvalidArgumentError(`cwd ${JSON.stringify(opts.cwd)} must be an absolute path`);
    req.cwd = opts.cwd;
  }
  if (opts.user !== undefined) req.user = typeof opts.user === "number" ? String(checkId("user", opts.user)) : checkString("user", opts.user);
  if (opts.uid !== undefined) req.uid = checkId("uid", opts.uid);
  if (opts.gid !== undefined) req.gid = checkId("gid", opts.gid);
  if (opts.timeout !== undefined) req.timeoutMs = BigInt(Math.ceil(checkTimeout(opts.timeout) * 1000));
  if (opts.window !== undefined) {
    if (!Number.isInteger(opts.window) || opts.window < 1 || opts.window > MAX_WINDOW_BYTES) {
      throw new InvalidArgumentError(`window must be an integer from 1 to ${MAX_WINDOW_BYTES} bytes, got ${opts.window}`);
    }
    req.window = opts.window;
  }
  if (opts.rlimits) {
    req.rlimits = Object.entries(opts.rlimits).map(([name, v]) => {
      const resource = RlimitResources[name.toUpperCase()];
      if (resource === undefined) {
        throw new InvalidArgumentError(`unknown rlimit ${JSON.stringify(name)}; known: ${Object.keys(RlimitResources).join(", ").toLowerCase()}`);
      }
      const [soft, hard] = Array.isArray(v) ? v : [v!, v!];
      return { resource, soft: limitValue(soft), hard: limitValue(hard) };
    });
  }
  return req;
}

/** Turns an agent Error frame into the matching typed error. */
export function agentFailure(e: GuestBody<"error">): Error {
  const kind = errorKindName(e.kind);
  if (kind === "EXEC_FAILED") return new ExecError(e.message, e.errnum, linuxErrnoName(e.errnum));
  return new AgentError(`agent error (${kind}): ${e.message}`, kind);
}

/**
 * A process in the guest. Iterate it for its output (stdout and stderr chunks in the order the
 * guest read them); the process can run at most `window` bytes ahead of the iteration, so output
 * nobody reads pauses it, and `exit` resolves only once its output was delivered. Leaving the
 * loop early drops the rest of the output and lets the process run on.
 */
export class ExecProcess<Chunk extends OutputChunk | ChannelChunk = OutputChunk> implements AsyncIterable<Chunk> {
  /** Resolves with the guest pid once the process runs; rejects with ExecError if it could not start. */
  readonly pid: Promise<number>;
  /** Resolves when the process ended and its output was delivered. */
  readonly exit: Promise<ExitStatus>;
  private readonly output: Inbound<Chunk>;
  private readonly stdin: Outbound;
  private readonly id: number;
  private started = false;
  private done = false;
  private resolvePid!: (pid: number) => void;
  private rejectPid!: (e: Error) => void;
  private resolveExit!: (s: ExitStatus) => void;
  private rejectExit!: (e: Error) => void;
  private readonly onAbort = () => this.kill("SIGKILL");
  private backstop: NodeJS.Timeout | undefined;

  /**
   * Starts `argv`; or, with `adopted`, takes over a process a resume kept running (its session and
   * guest pid), sending nothing: what the agent sent for it since is handed over at once.
   */
  constructor(
    private readonly channel: Channel,
    argv: readonly string[],
    private readonly opts: SpawnOptions = {},
    adopted?: { session: number; pid: number },
  ) {
    const request = adopted ? undefined : execRequest(argv, opts);
    if (opts.signal?.aborted) throw abortError(opts.signal);
    this.pid = new Promise((res, rej) => {
      this.resolvePid = res;
      this.rejectPid = rej;
    });
    this.exit = new Promise((res, rej) => {
      this.resolveExit = res;
      this.rejectExit = rej;
    });
    // The caller may await only one of them; the other must not become an unhandled rejection.
    this.pid.catch(() => {});
    this.exit.catch(() => {});
    const sink = { frame: (f: GuestFrame) => this.onFrame(f), fail: (e: Error) => this.finish(e) };
    this.id = adopted ? adopted.session : channel.open(sink);
    this.output = new Inbound<Chunk>(
      opts.window ?? DEFAULT_WINDOW_BYTES,
      (bytes) => this.sendIfOpen({ case: "credit", value: { bytes } }),
      () => {},
    );
    this.stdin = new Outbound(channel, this.id);
    if (adopted) {
      this.started = true;
      this.resolvePid(adopted.pid);
      channel.adopt(adopted.session, sink);
    } else {
      channel.send(this.id, { case: "exec", value: request! });
    }
    if (!this.done) opts.signal?.addEventListener("abort", this.onAbort, { once: true });
    if (!this.done && opts.timeout !== undefined) this.armBackstop(argv[0] ?? `session ${this.id}`, opts.timeout);
  }

  // The guest kills a process at its timeout. This is the host's backstop for a guest that does
  // not answer (hung, hostile): no end within half the timeout more (1 to 10 s), while this side
  // is not the one holding up its output, fails the process with a TimeoutError.
  private armBackstop(program: string, timeout: number, wait = timeout + Math.min(10, Math.max(1, timeout / 2))): void {
    this.backstop = setTimeout(() => {
      if (this.done) return;
      if (this.output.backlog > 0) return this.armBackstop(program, timeout, 1); // our reader is behind, not the guest
      this.kill("SIGKILL");
      this.finish(new TimeoutError(`${program} did not end within its timeout of ${timeout} s and a grace after it: the guest is not answering`));
    }, wait * 1000);
  }

  /** The protocol session this process runs in: what a resume keeps. */
  get session(): number {
    return this.id;
  }

  /** Spawned with a stdin pipe (not a terminal) that end() has not closed. */
  get stdinOpen(): boolean {
    return !!this.opts.stdin && !this.opts.pty && !this.stdin.ended();
  }

  private sendIfOpen(body: HostBody): void {
    if (!this.done && !this.channel.closed) this.channel.send(this.id, body);
  }

  private onFrame(f: GuestFrame): void {
    const b = f.body;
    switch (b.case) {
      case "started":
        this.started = true;
        this.resolvePid(b.value.pid);
        break;
      case "output": {
        const chunk = { stream: streamName(b.value.stream), data: b.value.data as Buffer } as Chunk;
        if (chunk.stream === "channel" && !this.opts.channel) {
          this.finish(new AgentError("channel output for a process that has no channel", "PROTOCOL"));
          break;
        }
        if (chunk.stream !== "channel") this.opts.onOutput?.(chunk);
        this.output.push(chunk);
        break;
      }
      case "credit":
        this.stdin.credit(b.value.bytes);
        break;
      case "exit": {
        const e = b.value;
        this.finish(undefined, {
          exitCode: e.signal ? null : e.code,
          signal: signalName(e.signal),
          timedOut: e.timedOut,
          durationMs: Number(e.durationNs) / 1e6,
          guestCounters: { oomKills: Number(e.oomKills), pidsLimitHits: Number(e.pidsLimitHits) },
          usage: { cpuTimeMs: Number(e.cpuTimeNs) / 1e6, peakMemoryBytes: Number(e.peakMemoryBytes) },
        });
        break;
      }
      case "error":
        this.finish(agentFailure(b.value));
        break;
      default:
        this.finish(new AgentError(`unexpected ${b.case} frame for a process`, "PROTOCOL"));
    }
  }

  private finish(err: Error | undefined, status?: ExitStatus): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.backstop);
    this.channel.release(this.id);
    this.opts.signal?.removeEventListener("abort", this.onAbort);
    const aborted = this.opts.signal?.aborted ? abortError(this.opts.signal) : undefined;
    this.stdin.fail(err ?? aborted ?? new AgentError("the process has exited", "EXITED"));
    if (!this.started) this.rejectPid(err ?? new AgentError("the process ended before it started", "PROTOCOL"));
    if (err) {
      this.output.end(err);
      this.rejectExit(err);
    } else {
      this.output.end();
      this.resolveExit(status!);
    }
  }

  /** Writes to the process's stdin (spawned with `stdin: true`); resolves when handed to the channel. */
  write(data: string | Uint8Array): Promise<void> {
    if (!this.opts.stdin && !this.opts.pty) return Promise.reject(new InvalidArgumentError("this process was spawned without stdin: true"));
    return this.stdin.write(typeof data === "string" ? Buffer.from(data) : data);
  }

  /** Closes stdin after everything written so far (a terminal's input is ended by typing ^D). */
  end(): Promise<void> {
    if (!this.opts.stdin || this.opts.pty) return Promise.resolve();
    return this.stdin.end();
  }

  /** Writes to the process's channel (spawned with `channel: true`); resolves when handed to the connection. */
  writeChannel(data: string | Uint8Array): Promise<void> {
    if (!this.opts.channel) return Promise.reject(new InvalidArgumentError("this process was spawned without channel: true"));
    return this.stdin.write(typeof data === "string" ? Buffer.from(data) : data, true);
  }

  /** Half-closes the channel after everything written to it so far: the process reads end of file there. */
  endChannel(): Promise<void> {
    if (!this.opts.channel) return Promise.resolve();
    return this.stdin.end(true);
  }

  /** Changes the size of the process's terminal (spawned with `pty`); its foreground job gets SIGWINCH. */
  resize(rows: number, cols: number): void {
    if (!this.opts.pty) throw new InvalidArgumentError("this process was spawned without a terminal (pty)");
    this.sendIfOpen({ case: "resize", value: checkTerminalSize({ rows, cols }) });
  }

  /** Sends a signal to the process group (default SIGKILL). A process that already ended is left alone. */
  kill(signal: SignalName = "SIGKILL"): void {
    const number = SignalNumbers[signal];
    if (number === undefined) {
      throw new InvalidArgumentError(`unknown signal ${JSON.stringify(signal)}; use a Linux name such as "SIGTERM"`);
    }
    this.sendIfOpen({ case: "signal", value: { signal: number } });
  }

  [Symbol.asyncIterator](): AsyncIterator<Chunk> {
    return this.output;
  }
}

export interface ExecResult extends ExitStatus {
  pid: number;
  stdout: Buffer;
  stderr: Buffer;
}

export interface ExecOptions extends Omit<SpawnOptions, "stdin" | "channel"> {
  /** Bytes fed to stdin, which is then closed. Without it the process reads /dev/null. */
  stdin?: string | Uint8Array;
  /** Most bytes of stdout + stderr kept; past it the process is killed. Default 64 MiB. */
  maxBuffer?: number;
}

export const DEFAULT_MAX_BUFFER = 64 * 1024 * 1024;

/** Runs a process to completion and collects its output. */
export async function collect(channel: Channel, argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const maxBuffer = opts.maxBuffer ?? DEFAULT_MAX_BUFFER;
  if (!Number.isInteger(maxBuffer) || maxBuffer < 0) throw new InvalidArgumentError(`maxBuffer must be a byte count, got ${maxBuffer}`);
  const { stdin, maxBuffer: _unused, ...spawnOpts } = opts;
  const proc = new ExecProcess(channel, argv, { ...spawnOpts, stdin: stdin !== undefined });
  if (stdin !== undefined) {
    // Errors surface through exit; a process that ignores its stdin must not fail the call.
    proc
      .write(stdin)
      .then(() => proc.end())
      .catch(() => {});
  }
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let total = 0;
  let overflow = false;
  for await (const chunk of proc) {
    total += chunk.data.length;
    if (total > maxBuffer) {
      overflow = true;
      proc.kill("SIGKILL");
      break;
    }
    (chunk.stream === "stdout" ? out : err).push(chunk.data);
  }
  const status = await proc.exit;
  if (overflow) throw new OutputLimitError(`${argv[0]} wrote more than maxBuffer (${maxBuffer} bytes); it was killed`);
  if (opts.signal?.aborted) throw abortError(opts.signal);
  return { pid: await proc.pid, stdout: Buffer.concat(out), stderr: Buffer.concat(err), ...status };
}
