// sandbox.command: processes in a sandbox, collected (run) or streamed (spawn), on pipes or a
// terminal; each one's output and exit go to the sandbox's log.
import type { ExecProcess, ExecResult } from "../agent-client/process.js";

import { InvalidArgumentError, TimeoutError } from "../errors.js";
import { checkKeys, keysOf } from "../keys.js";
import { publish } from "../trace.js";
import { CommandExecution } from "./execution.js";
import { checkSeconds } from "./options.js";
import type { Sandbox } from "./sandbox.js";

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
}

const COMMAND_KEYS = keysOf<CommandOptions>({ timeout: true, cwd: true, env: true, signal: true });
const SPAWN_KEYS = keysOf<SpawnCommandOptions>({ timeout: true, cwd: true, env: true, signal: true, stdin: true, pty: true });
const RUN_KEYS = keysOf<RunOptions>({ timeout: true });

/** run()'s options checked: the interpreter's timeout in seconds, if any. */
export function runTimeout(opts: RunOptions): number | undefined {
  checkKeys("run option", opts, RUN_KEYS);
  return opts.timeout === undefined ? undefined : checkSeconds("timeout", opts.timeout);
}

/** sandbox.command: shell commands in the sandbox. */
export class SandboxCommands {
  constructor(private readonly sandbox: Sandbox) {}

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
    const timeout = opts.timeout === undefined ? undefined : checkSeconds("timeout", opts.timeout);
    const base = this.sandbox.processOptions(opts, timeout);
    if (opts.pty && base.env.TERM === "dumb") base.env = { ...base.env, TERM: "xterm-256color" };
    const tap = this.sandbox.logTap(command);
    const proc = this.sandbox
      .agent()
      .spawn([command, ...args], { ...base, stdin: !!opts.stdin, ...(opts.pty ? { pty: opts.pty } : {}), onOutput: (c) => tap.output(c) });
    proc.exit.then(
      (r) => tap.end(r),
      () => {},
    );
    return proc;
  }
}
