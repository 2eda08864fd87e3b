// A sandbox's log: the output of its commands and what happened to it (started, commands' exits,
// a lifetime limit, stopped) as JSON lines in the cache, and the guest console's last 64 KiB when
// the VM ends; readable while it runs and after. Bounded on disk: a file past MAX_FILE_BYTES
// becomes the one previous file (so a sandbox keeps at most twice that), and only the newest
// KEEP_SANDBOXES sandboxes' logs are kept. Writes are batched: a command streaming fast output
// costs one append per FLUSH_MS, not one per chunk.
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from "node:fs";
import path from "node:path";

import { cacheDir } from "../paths.js";

const MAX_FILE_BYTES = 512 * 1024;
const KEEP_SANDBOXES = 200;
const FLUSH_MS = 200;
export const CONSOLE_TAIL_BYTES = 64 * 1024;

export interface LogEntry {
  time: Date;
  /** A command's stdout or stderr, a line of the guest console, or an event of the sandbox. */
  source: "stdout" | "stderr" | "console" | "event";
  text: string;
  /** The command that wrote it (stdout, stderr and its exit event). */
  command?: string;
}

export interface LogOptions {
  /** The last this many entries (default 100). */
  tail?: number;
  /** Only entries from these sources. */
  sources?: LogEntry["source"][];
}

interface Stored {
  t: number;
  s: LogEntry["source"];
  x: string;
  c?: string;
}

let pruned = false;

export class SandboxLog {
  readonly file: string;
  /** Where the VM's console goes when it ends (VmConfig.consoleKeep). */
  readonly console: string;
  private pending: string[] = [];
  private pendingBytes = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(name: string, id: string) {
    const dir = path.join(cacheDir(), "logs", "sandboxes");
    mkdirSync(dir, { recursive: true });
    if (!pruned) {
      pruned = true;
      prune(dir);
    }
    this.file = path.join(dir, `${name}.${id}.jsonl`);
    this.console = path.join(dir, `${name}.${id}.console.log`);
  }

  add(source: LogEntry["source"], text: string, command?: string): void {
    const line = `${JSON.stringify({ t: Date.now(), s: source, x: text, ...(command !== undefined ? { c: command } : {}) } satisfies Stored)}\n`;
    this.pending.push(line);
    this.pendingBytes += line.length;
    if (this.pendingBytes >= 64 * 1024) this.flush();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), FLUSH_MS);
      this.timer.unref();
    }
  }

  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.pending.length) return;
    const text = this.pending.join("");
    this.pending = [];
    this.pendingBytes = 0;
    try {
      if (existsSync(this.file) && statSync(this.file).size + text.length > MAX_FILE_BYTES) renameSync(this.file, `${this.file}.1`);
      appendFileSync(this.file, text, { mode: 0o600 });
    } catch {
      // A full or read-only cache loses log lines, never a command's result.
    }
  }

  /** The newest entries, oldest first; `live` is the console of a VM still running. */
  read(opts: LogOptions = {}, live?: string): LogEntry[] {
    this.flush();
    const tail = opts.tail ?? 100;
    const entries: LogEntry[] = [];
    for (const f of [`${this.file}.1`, this.file]) {
      if (!existsSync(f)) continue;
      for (const line of readFileSync(f, "utf8").split("\n")) {
        if (!line) continue;
        try {
          const e = JSON.parse(line) as Stored;
          entries.push({ time: new Date(e.t), source: e.s, text: e.x, ...(e.c !== undefined ? { command: e.c } : {}) });
        } catch {
          // a line cut by a crash
        }
      }
    }
    const consoleFile = live ?? this.console;
    if (existsSync(consoleFile)) {
      const at = statSync(consoleFile).mtime;
      const text = readFileSync(consoleFile, "utf8");
      const lines = text.slice(-CONSOLE_TAIL_BYTES).split(/\r?\n/).filter(Boolean);
      entries.push(...lines.map((x) => ({ time: at, source: "console" as const, text: x })));
    }
    // Console lines carry no times of their own: they sit at the console file's last write.
    entries.sort((a, b) => a.time.getTime() - b.time.getTime());
    const wanted = opts.sources ? entries.filter((e) => opts.sources!.includes(e.source)) : entries;
    return tail > 0 ? wanted.slice(-tail) : [];
  }
}

/** What one command may put in the log as it runs, and what of its end is kept for its exit. */
const COMMAND_HEAD_BYTES = 64 * 1024;
const COMMAND_TAIL_BYTES = 64 * 1024;

/**
 * One command's output on its way to the log: the first COMMAND_HEAD_BYTES as they come (a
 * running command's log shows it), then only the last COMMAND_TAIL_BYTES, kept as bytes and
 * logged at the end with a note of what was left out. A command printing gigabytes costs the
 * log a fixed amount of work, not a copy of everything.
 */
export class CommandTap {
  private headBytes = 0;
  private readonly tail: { stream: "stdout" | "stderr"; data: Buffer }[] = [];
  private tailBytes = 0;
  private skipped = 0;

  constructor(
    private readonly log: SandboxLog,
    private readonly command: string,
  ) {}

  output(chunk: { stream: "stdout" | "stderr"; data: Buffer }): void {
    if (this.headBytes < COMMAND_HEAD_BYTES) {
      this.headBytes += chunk.data.length;
      this.log.add(chunk.stream, chunk.data.toString("utf8"), this.command);
      return;
    }
    this.tail.push(chunk);
    this.tailBytes += chunk.data.length;
    while (this.tailBytes - this.tail[0]!.data.length >= COMMAND_TAIL_BYTES) {
      const dropped = this.tail.shift()!;
      this.tailBytes -= dropped.data.length;
      this.skipped += dropped.data.length;
    }
  }

  end(r: { exitCode: number | null; signal: string | null; timedOut: boolean }): void {
    if (this.skipped) this.log.add("event", `${this.skipped} bytes of output not logged`, this.command);
    for (const c of this.tail.splice(0)) this.log.add(c.stream, c.data.toString("utf8"), this.command);
    this.log.add("event", r.timedOut ? "timed out" : r.signal ? `killed by ${r.signal}` : `exited with ${r.exitCode}`, this.command);
  }
}

// Keeps the newest KEEP_SANDBOXES sandboxes' logs.
function prune(dir: string): void {
  try {
    const logs = readdirSync(dir).filter((f) => f.endsWith(".jsonl"));
    if (logs.length <= KEEP_SANDBOXES) return;
    const byAge = logs.map((f) => ({ f, t: statSync(path.join(dir, f)).mtimeMs })).sort((a, b) => b.t - a.t);
    for (const { f } of byAge.slice(KEEP_SANDBOXES)) {
      const base = f.slice(0, -".jsonl".length);
      for (const g of [f, `${f}.1`, `${base}.console.log`]) rmSync(path.join(dir, g), { force: true });
    }
  } catch {
    // pruning is best effort
  }
}
