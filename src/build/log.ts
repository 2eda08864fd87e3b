// A build's log: every event goes to the caller's listener and to a file in the cache,
// builds/logs/<time>-<random>.log, which a failed build keeps (its error names the file) and a
// successful one removes. The newest KEEP files are kept; each is cut off at MAX_BYTES.
import { randomBytes } from "node:crypto";
import { createWriteStream, type WriteStream } from "node:fs";
import { mkdir, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { finished } from "node:stream/promises";

import type { BuildLogEvent } from "./spec.js";

const KEEP = 50;
const MAX_BYTES = 16 * 1024 * 1024;

export class BuildLog {
  private bytes = 0;

  private constructor(
    readonly file: string,
    private readonly out: WriteStream,
    private readonly listener: ((e: BuildLogEvent) => void) | undefined,
  ) {}

  static async open(cacheRoot: string, listener?: (e: BuildLogEvent) => void): Promise<BuildLog> {
    const dir = path.join(cacheRoot, "builds", "logs");
    await mkdir(dir, { recursive: true });
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "");
    const file = path.join(dir, `${stamp}-${randomBytes(4).toString("hex")}.log`);
    const out = createWriteStream(file, { mode: 0o600 });
    out.on("error", () => {}); // a log that cannot be written does not fail the build
    return new BuildLog(file, out, listener);
  }

  write(e: BuildLogEvent): void {
    this.listener?.(e);
    const text = e.kind === "step" ? `step ${e.step + 1}: ${e.text}\n` : e.kind === "cached" ? `step ${e.step + 1}: cached\n` : e.text;
    if (this.bytes > MAX_BYTES) return;
    this.bytes += Buffer.byteLength(text);
    this.out.write(this.bytes > MAX_BYTES ? `\n[the log is cut off here: more than ${MAX_BYTES} bytes]\n` : text);
  }

  private async close(): Promise<void> {
    this.out.end();
    await finished(this.out).catch(() => {});
  }

  /** The build succeeded: its log goes. */
  async done(): Promise<void> {
    await this.close();
    await rm(this.file, { force: true });
  }

  /** The build failed: its log stays, and the oldest beyond the newest KEEP go. */
  async keep(): Promise<void> {
    await this.close();
    const dir = path.dirname(this.file);
    const logs = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith(".log")).sort();
    for (const old of logs.slice(0, Math.max(0, logs.length - KEEP))) await rm(path.join(dir, old), { force: true });
  }
}
