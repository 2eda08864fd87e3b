// The persistent interpreter behind run(): one driver process per sandbox and language
// (guest/repl/*_driver.*), started on first use, fed one cell at a time. A timeout kills it and
// the next run() starts a fresh one; the error says the state is lost.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import type { AgentClient } from "../agent-client/client.js";
import type { ExecProcess, ExitStatus } from "../agent-client/process.js";
import { ExecutionError, TimeoutError } from "../errors.js";
import { Execution } from "./execution.js";
import { encodeCell, type ReplFrame, ReplFrameDecoder } from "./repl-frames.js";

export interface ReplLanguage {
  /** Reported on executions ("python", "javascript"). */
  language: string;
  /** Driver file name in guest/repl/. */
  driver: string;
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
}

interface Cell {
  /** The driver the cell was sent to: frames of an older, killed driver must not reach it. */
  proc: ExecProcess;
  stdout: Buffer[];
  stderr: Buffer[];
  settle(frame: Extract<ReplFrame, { type: "end" }> | Error): void;
}

const DRIVER_DIR = "/run/microsandbox";
const READY_TIMEOUT_S = 120;

/** The in-guest driver program of `lang`. */
export function driverSource(lang: ReplLanguage): Buffer {
  return readFileSync(fileURLToPath(new URL(`../../guest/repl/${lang.driver}`, import.meta.url)));
}

export class Repl {
  private proc: ExecProcess | undefined;
  private pid: number | undefined;
  // Cells queued or running: run() counts them at once, before any await.
  private pending = 0;
  private starting: Promise<ExecProcess> | undefined;
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
    const result = this.queue.then(() => this.runCell(cell, timeout)).finally(() => this.pending--);
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
    const end = await new Promise<Extract<ReplFrame, { type: "end" }> | Error>((settle) => {
      this.cell = { proc, stdout: this.early.stdout, stderr: this.early.stderr, settle };
      this.early = { stdout: [], stderr: [] };
      const timer =
        timeout === undefined
          ? undefined
          : setTimeout(() => {
              settle(
                new TimeoutError(
                  `the code ran longer than ${timeout} s; the ${this.lang.language} interpreter was restarted and its state is lost`,
                ),
              );
              this.reset();
            }, timeout * 1000);
      const settleOnce = (r: Extract<ReplFrame, { type: "end" }> | Error) => {
        clearTimeout(timer);
        settle(r);
      };
      this.cell.settle = settleOnce;
      proc.write(cell).catch((err: Error) => settleOnce(err));
    });
    const { stdout, stderr } = this.cell!;
    this.cell = undefined;
    if (end instanceof Error) throw end;
    return new Execution(
      this.lang.language,
      end.status === "ok" ? "success" : "error",
      Buffer.concat(stdout).toString("utf8"),
      Buffer.concat(stderr).toString("utf8"),
      end.ename,
      end.result,
    );
  }

  private driver(): Promise<ExecProcess> {
    if (this.proc) return Promise.resolve(this.proc);
    this.starting ??= this.spawnDriver().catch((err) => {
      this.starting = undefined;
      throw err;
    });
    return this.starting;
  }

  private async spawnDriver(): Promise<ExecProcess> {
    const agent = this.host.agent();
    const guestPath = `${DRIVER_DIR}/${this.lang.driver}`;
    const source = driverSource(this.lang);
    await agent.writeFile(guestPath, source, { parents: true });
    const proc = agent.spawn([...this.lang.interpreter, guestPath], { ...this.host.processOptions(), stdin: true });
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
    const proc = this.host.agent().adopt(kept.session, kept.pid, { stdin: true });
    this.pump(proc, { ready: () => {}, failed: () => {} });
    this.proc = proc;
    this.pid = kept.pid;
  }

  // Every chunk of the driver's output goes through the frame decoder, into the cell in flight;
  // the driver's own stderr is kept (bounded) to explain a crash.
  private pump(proc: ExecProcess, on: { ready(): void; failed(err: Error): void }): void {
    const decoder = new ReplFrameDecoder();
    let crashOutput = "";
    const mine = () => (this.cell?.proc === proc ? this.cell : undefined);
    const onFrame = (f: ReplFrame) => {
      if (f.type === "ready") {
        on.ready();
      } else if (f.type === "end") {
        mine()?.settle(f);
      } else if (mine()) {
        mine()![f.type].push(f.data);
      } else if (this.proc === proc) {
        this.early[f.type].push(f.data); // output between cells goes with the next one
      }
    };
    (async () => {
      try {
        for await (const chunk of proc) {
          if (chunk.stream === "stderr") crashOutput = (crashOutput + chunk.data.toString("utf8")).slice(-4000);
          else for (const f of decoder.push(chunk.data)) onFrame(f);
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
        const error = err as Error;
        on.failed(error);
        mine()?.settle(error);
      }
    })();
  }
}
