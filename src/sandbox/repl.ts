// The persistent interpreter behind run(): one driver process per sandbox and language
// (guest/repl/*_driver.*), started on first use, fed one cell at a time on its channel (see
// repl-frames.ts). A timeout kills it and the next run() starts a fresh one; the error says the
// state is lost. So does a driver that breaks the protocol: the code it runs can write to its channel.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import type { AgentClient } from "../agent-client/client.js";
import type { ChannelChunk, ExecProcess, ExitStatus, OutputChunk } from "../agent-client/process.js";
import { AgentProtocolError, ExecutionError, TimeoutError } from "../errors.js";
import { Execution } from "./execution.js";
import { driverPrelude, encodeCell, type ReplFrame, ReplFrameDecoder } from "./repl-frames.js";

export interface ReplLanguage {
  /** Reported on executions; also the language of the driver's prelude. */
  language: "python" | "javascript" | "bash";
  /** The driver's files in guest/repl/, shipped joined into one; the last one names it. */
  driver: string[];
  /** The interpreter; the driver's guest path is appended. */
  interpreter: string[];
}

/** What a REPL needs from its sandbox. */
export interface ReplHost {
  agent(): AgentClient;
  /** Environment, working directory and user for processes, from the image and the sandbox. */
  processOptions(): { env: Record<string, string>; cwd: string; user?: string; gid?: number };
  /** A ResourceError when the guest's counters at a process's exit show memory or processes ran out. */
  exhausted(what: string, counters: ExitStatus["guestCounters"]): Error | undefined;
  /** @internal Where drivers are written (default /run/microsandbox): tests of an agent on the host use a temporary directory. */
  driverDir?: string;
  /** The driver kept running changed (an outliving sandbox records it). */
  keptChanged?(): void;
}

type Driver = ExecProcess<OutputChunk | ChannelChunk>;
type End = Extract<ReplFrame, { type: "end" }>;

interface Cell {
  /** The driver the cell was sent to: frames of an older, killed driver must not reach it. */
  proc: Driver;
  stdout: Buffer[];
  stderr: Buffer[];
  settle(end: End | Error): void;
}

/** The interpreters behind run(). */
export const PYTHON_REPL: ReplLanguage = { language: "python", driver: ["python_driver.py"], interpreter: ["python3", "-u"] };
export const NODE_REPL: ReplLanguage = { language: "javascript", driver: ["node_cell.js", "node_driver.js"], interpreter: ["node"] };
export const BASH_REPL: ReplLanguage = { language: "bash", driver: ["bash_driver.sh"], interpreter: ["bash", "--norc", "--noprofile"] };

/** Every interpreter a sandbox can start, by its language. */
export const REPL_LANGUAGES: Readonly<Record<ReplLanguage["language"], ReplLanguage>> = { python: PYTHON_REPL, javascript: NODE_REPL, bash: BASH_REPL };

const DRIVER_DIR = "/run/microsandbox";
const READY_TIMEOUT_S = 120;

/** The in-guest driver program of `lang`: the protocol's constants, then its files. */
export function driverSource(lang: ReplLanguage): Buffer {
  const file = (name: string) => readFileSync(fileURLToPath(new URL(`../../guest/repl/${name}`, import.meta.url)));
  return Buffer.concat([Buffer.from(driverPrelude(lang.language)), ...lang.driver.map(file)]);
}

export class Repl {
  private proc: Driver | undefined;
  private pid: number | undefined;
  // Cells queued or running: run() counts them at once, before any await.
  private pending = 0;
  private starting: Promise<Driver> | undefined;
  private cell: Cell | undefined;
  private early: { stdout: Buffer[]; stderr: Buffer[] } = { stdout: [], stderr: [] };
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly lang: ReplLanguage,
    private readonly host: ReplHost,
  ) {}

  /** Runs one cell; cells queue behind each other. `timeout` is in seconds. */
  run(code: string, timeout?: number): Promise<Execution> {
    const cell = encodeCell(code); // size check before queueing
    this.pending++;
    const result = this.queue
      .then(() => this.runCell(cell, timeout))
      .finally(() => {
        this.pending--;
        this.host.keptChanged?.();
      });
    this.queue = result.catch(() => {});
    return result;
  }

  /** Ends the driver (the sandbox is stopping, or a timeout struck). */
  reset(): void {
    this.proc?.kill("SIGKILL");
    this.proc = undefined;
    this.pid = undefined;
    this.starting = undefined;
  }

  private async runCell(cell: Buffer, timeout: number | undefined): Promise<Execution> {
    const proc = await this.driver();
    const running: Cell = { proc, stdout: this.early.stdout, stderr: this.early.stderr, settle: () => {} };
    this.early = { stdout: [], stderr: [] };
    const end = await new Promise<End | Error>((settle) => {
      const timer =
        timeout === undefined
          ? undefined
          : setTimeout(() => {
              running.settle(
                new TimeoutError(`the code ran longer than ${timeout} s; the ${this.lang.language} interpreter was restarted and its state is lost`),
              );
              this.reset();
            }, timeout * 1000);
      running.settle = (r) => {
        clearTimeout(timer);
        settle(r);
      };
      this.cell = running;
      proc.writeChannel(cell).catch((err: Error) => running.settle(err));
    });
    if (this.cell === running) this.cell = undefined;
    const { stdout, stderr } = running;
    if (end instanceof Error) throw end;
    return new Execution(
      this.lang.language,
      end.status === "ok" ? "success" : "error",
      Buffer.concat(stdout).toString("utf8"),
      Buffer.concat(stderr).toString("utf8"),
      end.ename,
      end.result,
      end.evalue,
    );
  }

  private driver(): Promise<Driver> {
    if (this.proc) return Promise.resolve(this.proc);
    this.starting ??= this.spawnDriver().catch((err) => {
      this.starting = undefined;
      throw err;
    });
    return this.starting;
  }

  private async spawnDriver(): Promise<Driver> {
    const agent = this.host.agent();
    const guestPath = `${this.host.driverDir ?? DRIVER_DIR}/${this.lang.driver.at(-1)}`;
    await agent.writeFile(guestPath, driverSource(this.lang), { parents: true });
    // Cells go on the channel; stdin is /dev/null, so code that reads it cannot take them.
    const proc = agent.spawn([...this.lang.interpreter, guestPath], { ...this.host.processOptions(), channel: true });
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.kill("SIGKILL"); // not left running in the guest
        reject(new TimeoutError(`the ${this.lang.language} interpreter did not start within ${READY_TIMEOUT_S} s`));
      }, READY_TIMEOUT_S * 1000);
      this.pump(proc, {
        ready: () => (clearTimeout(timer), resolve()),
        failed: (err) => (clearTimeout(timer), reject(err)),
      });
    });
    await ready;
    this.pid = await proc.pid;
    this.proc = proc;
    return proc;
  }

  /**
   * The driver a copy of the VM keeps running, when there is one and no cell is queued or in
   * flight (a copy must not inherit half a conversation).
   */
  kept(): { session: number; pid: number } | undefined {
    return this.proc && this.pending === 0 && this.pid !== undefined ? { session: this.proc.session, pid: this.pid } : undefined;
  }

  /** Takes over the driver a restored copy of the VM kept running: its state comes along. */
  adopt(kept: { session: number; pid: number }): void {
    const proc = this.host.agent().adopt(kept.session, kept.pid, { channel: true });
    this.pump(proc);
    this.proc = proc;
    this.pid = kept.pid;
  }

  // The driver's stdout and stderr go to the cell in flight (between cells: to the next one), its
  // channel through the frame decoder. `starting`: a driver that has yet to say it is ready (an
  // adopted one is running already). The stderr of the current cell, bounded, explains a crash.
  private pump(proc: Driver, starting?: { ready(): void; failed(err: Error): void }): void {
    const decoder = new ReplFrameDecoder();
    let ready = !starting;
    let crashOutput = "";
    const mine = () => (this.cell?.proc === proc ? this.cell : undefined);
    const onFrame = (f: ReplFrame) => {
      if (f.type === "ready") {
        if (ready) throw new AgentProtocolError("REPL driver protocol: a second ready frame");
        ready = true;
        starting!.ready();
        return;
      }
      const cell = mine();
      if (!cell) {
        // A driver replaced already (timed out) may still have its say; the current one may not.
        if (!ready || this.proc === proc) throw new AgentProtocolError("REPL driver protocol: an end frame with no cell running");
        return;
      }
      this.cell = undefined;
      crashOutput = "";
      cell.settle(f);
    };
    (async () => {
      try {
        for await (const chunk of proc) {
          if (chunk.stream === "channel") {
            for (const f of decoder.push(chunk.data)) onFrame(f);
            continue;
          }
          if (chunk.stream === "stderr") crashOutput = (crashOutput + chunk.data.toString("utf8")).slice(-4000);
          (mine() ?? (this.proc === proc ? this.early : undefined))?.[chunk.stream].push(chunk.data);
        }
        const status = await proc.exit;
        throw (
          this.host.exhausted(`the ${this.lang.language} interpreter`, status.guestCounters) ??
          new ExecutionError(
            `the ${this.lang.language} interpreter ended (${status.signal ?? `exit code ${status.exitCode}`}); its state is lost` +
              (crashOutput ? `:\n${crashOutput}` : ""),
          )
        );
      } catch (err) {
        if (this.proc === proc) {
          this.proc = undefined;
          this.starting = undefined; // the next run() starts a fresh driver
        }
        proc.kill("SIGKILL");
        const error =
          err instanceof AgentProtocolError
            ? new AgentProtocolError(`${err.message}; the ${this.lang.language} interpreter was stopped and its state is lost`, { cause: err })
            : (err as Error);
        starting?.failed(error);
        mine()?.settle(error);
      }
    })();
  }
}
