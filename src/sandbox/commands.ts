// sandbox.command: processes in a sandbox, collected (run) or streamed (spawn), on pipes or a
// terminal; each one's output and exit go to the sandbox's log.
import type { ExecProcess, ExecResult } from "../agent-client/process.js";

import { InvalidArgumentError, TimeoutError } from "../errors.js";
import { checkKeys, keysOf } from "../keys.js";
import { publish } from "../trace.js";
import type { SandboxBase } from "./base.js";
import { CommandExecution } from "./execution.js";
import type { CommandTap } from "./logs.js";
import { checkSeconds } from "./options.js";

export interface CommandOptions {
  /** Seconds; past it the process tree is killed and TimeoutError is thrown. */
  timeout?: number;
  /** Absolute working directory. Default: the sandbox's workdir. */
  cwd?: string;
  /** Added to the sandbox's environment. */
  env?: Record<string, string>;
  signal?: AbortSignal;
}

export interface RunOptions {
  /** Seconds; past it the interpreter is killed (its state is lost) and TimeoutError is thrown. */
  timeout?: number;
}

/** What command.spawn() takes beyond run()'s options. */
export interface SpawnCommandOptions extends CommandOptions {
  /** A pipe to the process's stdin (write(), end()). */
  stdin?: boolean;
  /** Run on a terminal of this size. */
  pty?: { rows: number; cols: number };
  /**
   * Keep it running across pause() (with its memory) and resume(), in this process or another:
   * the resumed sandbox's command.resumed() hands it back. Not carried by fork() or save().
   */
  keep?: boolean;
}

/** A process spawned with `keep`, as a paused sandbox records it: enough to take it over again. */
export interface KeptCommand {
  session: number;
  pid: number;
  command: string;
  /** Its stdin pipe is open (spawned with `stdin` and not ended). */
  stdin: boolean;
  pty?: { rows: number; cols: number };
}

const COMMAND_KEYS = keysOf<CommandOptions>({ timeout: true, cwd: true, env: true, signal: true });
const SPAWN_KEYS = keysOf<SpawnCommandOptions>({ timeout: true, cwd: true, env: true, signal: true, stdin: true, pty: true, keep: true });
const RUN_KEYS = keysOf<RunOptions>({ timeout: true });

/** run()'s options checked: the interpreter's timeout in seconds, if any. */
export function runTimeout(opts: RunOptions): number | undefined {
  checkKeys("run option", opts, RUN_KEYS);
  return opts.timeout === undefined ? undefined : checkSeconds("timeout", opts.timeout);
}

type Kept = Pick<KeptCommand, "command" | "pty"> & { pid?: number };

/** sandbox.command: shell commands in the sandbox. */
export class SandboxCommands {
  // Processes spawned with `keep` that have not ended, with what a pause records of them.
  private readonly keeping = new Map<ExecProcess, Kept>();
  private adopted = new Map<number, ExecProcess>();

  constructor(private readonly sandbox: SandboxBase) {}

  /**
   * Runs `command` with `args` (no shell) and collects its output. A non-zero exit is not an error.
   * Without a command it runs the image's default (Entrypoint + Cmd).
   */
  async run(command?: string, args: readonly string[] = [], opts: CommandOptions = {}): Promise<CommandExecution> {
    if (command === undefined) {
      const [program, ...rest] = this.sandbox.defaultCommand();
      return this.run(program!, rest, opts);
    }
    if (typeof command !== "string" || command === "") throw new InvalidArgumentError('command must be a non-empty string, e.g. "echo"');
    if (!Array.isArray(args)) throw new InvalidArgumentError(`args must be an array of strings, got ${typeof args}`);
    checkKeys("command option", opts, COMMAND_KEYS);
    const timeout = opts.timeout === undefined ? undefined : checkSeconds("timeout", opts.timeout);
    const agent = this.sandbox.agent();
    const tap = this.sandbox.logTap(command);
    const traced = { sandbox: this.sandbox.name, command };
    const started = performance.now();
    publish("command:start", { ...traced, args });
    let r: ExecResult;
    try {
      r = await agent.exec([command, ...args], { ...this.sandbox.processOptions(opts, timeout), onOutput: (c) => tap.output(c) });
    } catch (error) {
      publish("command:end", { ...traced, exitCode: null, error, ms: performance.now() - started });
      throw error;
    }
    publish("command:end", { ...traced, exitCode: r.exitCode, ms: performance.now() - started });
    tap.end(r);
    const exhausted = this.sandbox.exhausted(command, r.guestCounters);
    if (exhausted) throw exhausted;
    if (r.timedOut) throw new TimeoutError(`${command} ran longer than ${timeout} s and was killed`);
    return new CommandExecution(command, args, r.exitCode, r.signal, r.stdout.toString("utf8"), r.stderr.toString("utf8"), r.durationMs, r.usage);
  }

  /**
   * Starts `command` and returns it for streaming output, stdin and signals; with `pty`, on a
   * terminal of that size (TERM xterm-256color unless set otherwise): resize(), job control, raw bytes.
   */
  spawn(command: string, args: readonly string[] = [], opts: SpawnCommandOptions = {}): ExecProcess {
    checkKeys("spawn option", opts, SPAWN_KEYS);
    if (opts.keep !== undefined && typeof opts.keep !== "boolean")
      throw new InvalidArgumentError(`keep ${JSON.stringify(opts.keep)} is invalid: give true or false`);
    const timeout = opts.timeout === undefined ? undefined : checkSeconds("timeout", opts.timeout);
    const base = this.sandbox.processOptions(opts, timeout);
    if (opts.pty && base.env.TERM === "dumb") base.env = { ...base.env, TERM: "xterm-256color" };
    const tap = this.sandbox.logTap(command);
    const proc = this.sandbox
      .agent()
      .spawn([command, ...args], { ...base, stdin: !!opts.stdin, ...(opts.pty ? { pty: opts.pty } : {}), onOutput: (c) => tap.output(c) });
    this.tapEnd(proc, tap);
    if (opts.keep) this.keep(proc, { command, ...(opts.pty ? { pty: opts.pty } : {}) });
    return proc;
  }

  // Tracks a process a pause keeps, until it ends; its pid is known once it started.
  private keep(proc: ExecProcess, info: Pick<KeptCommand, "command" | "pty">): void {
    const entry: Kept = { ...info };
    this.keeping.set(proc, entry);
    proc.pid
      .then((pid) => {
        entry.pid = pid;
        this.sandbox.recordChanged();
      })
      .catch(() => {});
    proc.exit
      .catch(() => {})
      .finally(() => {
        this.keeping.delete(proc);
        this.sandbox.recordChanged();
      });
  }

  private tapEnd(proc: ExecProcess, tap: Pick<CommandTap, "end">): void {
    proc.exit.then(
      (r) => tap.end(r),
      () => {},
    );
  }

  /**
   * The processes spawned with `keep` that the resume() which brought this sandbox back found
   * running, by guest pid: each goes on from where the paused one's output stopped (the handle from
   * before the pause yields what it had received, then fails once its VM stopped). Read their
   * output, or each stops once a window of it waits.
   */
  resumed(): ReadonlyMap<number, ExecProcess> {
    return this.adopted;
  }

  /**
   * @internal What a pause keeps of the processes spawned with `keep`: those that started and have
   * not ended, as the host knows them once the agent is suspended (a later end waits in the guest).
   */
  keptNow(): KeptCommand[] {
    return [...this.keeping].flatMap(([proc, { pid, ...info }]) => (pid === undefined ? [] : [{ session: proc.session, pid, stdin: proc.stdinOpen, ...info }]));
  }

  /** @internal Takes over the processes a resume kept, for resumed(). */
  adopt(kept: readonly KeptCommand[]): void {
    const agent = this.sandbox.agent();
    this.adopted = new Map(
      kept.map((k) => {
        const tap = this.sandbox.logTap(k.command);
        const proc = agent.adopt(k.session, k.pid, { stdin: k.stdin, ...(k.pty ? { pty: k.pty } : {}), onOutput: (c) => tap.output(c) });
        this.tapEnd(proc, tap);
        this.keep(proc, { command: k.command, ...(k.pty ? { pty: k.pty } : {}) });
        return [k.pid, proc];
      }),
    );
  }
}
