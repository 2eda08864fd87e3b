// The in-guest REPL drivers, run as host processes over the real frame protocol, and the frame decoder.
import { type ChildProcessByStdio, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { AgentProtocolError } from "../../src/errors.js";
import { encodeCell, ReplFrameDecoder, type ReplFrame } from "../../src/sandbox/repl-frames.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
// Debian's /usr/bin/python3 is the 3.11 the guest runs; a pyenv shim may be something else.
const PYTHON = existsSync("/usr/bin/python3") ? "/usr/bin/python3" : "python3";

interface CellResult {
  stdout: string;
  stderr: string;
  end: Extract<ReplFrame, { type: "end" }>;
}

class Driver {
  private readonly decoder = new ReplFrameDecoder();
  private stdout: Buffer[] = [];
  private stderr: Buffer[] = [];
  private waiters: Array<(r: CellResult) => void> = [];
  private driverStderr = "";
  private failure: Error | null = null;
  readonly ready: Promise<Extract<ReplFrame, { type: "ready" }>>;
  readonly exited: Promise<number | null>;

  constructor(private readonly proc: ChildProcessByStdio<Writable, Readable, Readable>) {
    let onReady!: (f: Extract<ReplFrame, { type: "ready" }>) => void;
    this.ready = new Promise((r) => (onReady = r));
    this.exited = new Promise((r) => proc.once("exit", (code) => r(code)));
    proc.stderr.on("data", (c: Buffer) => (this.driverStderr += c.toString()));
    proc.stdout.on("data", (chunk: Buffer) => {
      let frames: ReplFrame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (err) {
        this.failure = err as Error;
        return;
      }
      for (const f of frames) {
        if (f.type === "ready") onReady(f);
        else if (f.type === "stdout") this.stdout.push(f.data);
        else if (f.type === "stderr") this.stderr.push(f.data);
        else if (f.type === "end") {
          const result = {
            stdout: Buffer.concat(this.stdout).toString(),
            stderr: Buffer.concat(this.stderr).toString(),
            end: f,
          };
          this.stdout = [];
          this.stderr = [];
          this.waiters.shift()?.(result);
        }
      }
    });
  }

  static start(command: string, script: string): Driver {
    return new Driver(spawn(command, [path.join(root, "guest/repl", script)], { stdio: ["pipe", "pipe", "pipe"] }));
  }

  run(code: string): Promise<CellResult> {
    if (this.failure) throw this.failure;
    const result = new Promise<CellResult>((resolve) => this.waiters.push(resolve));
    this.proc.stdin.write(encodeCell(code));
    return result;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Crash output of the driver itself (must stay empty). */
  get crashOutput(): string {
    return this.driverStderr;
  }

  async stop(): Promise<void> {
    this.proc.stdin.end();
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }
}

describe("python driver", () => {
  let py: Driver;
  beforeAll(async () => {
    py = Driver.start(PYTHON, "python_driver.py");
    const ready = await py.ready;
    expect(ready.language).toBe("python");
    expect(ready.version).toMatch(/^3\.\d+\.\d+$/);
  });
  afterAll(async () => {
    await py.stop();
    expect(py.crashOutput).toBe("");
  });

  it("echoes the value of the last expression, and reports it as the cell's result", async () => {
    expect(await py.run("2 + 2")).toEqual({ stdout: "4\n", stderr: "", end: { type: "end", status: "ok", result: "4" } });
    expect((await py.run("'a' * 3")).end).toEqual({ type: "end", status: "ok", result: "'aaa'" });
    // None is not echoed, and is no result; nor is a statement.
    expect((await py.run("None")).end).toEqual({ type: "end", status: "ok" });
    expect((await py.run("y = 1")).end).toEqual({ type: "end", status: "ok" });
  });

  it("keeps state between cells, and _ like the prompt", async () => {
    expect((await py.run("x = 41")).stdout).toBe("");
    expect((await py.run("x + 1")).stdout).toBe("42\n");
    expect((await py.run("_ * 2")).stdout).toBe("84\n");
    expect((await py.run("__name__")).stdout).toBe("'__main__'\n");
  });

  it("prints nothing for None", async () => {
    const r = await py.run("None");
    expect(r).toMatchObject({ stdout: "", stderr: "", end: { status: "ok" } });
  });

  it("keeps print() and raw os.write(1) in order", async () => {
    const r = await py.run('print("a"); import os; os.write(1, b"b\\n")');
    // os.write returns 2, the last expression's value.
    expect(r.stdout).toBe("a\nb\n2\n");
  });

  it("captures child processes at the fd level", async () => {
    const r = await py.run('import subprocess; subprocess.run(["echo","child"]); None');
    expect(r.stdout).toBe("child\n");
    const sh = await py.run('import os; os.system("echo out; echo err >&2"); None');
    expect(sh).toMatchObject({ stdout: "out\n", stderr: "err\n" });
  });

  it("keeps the protocol's stdin away from the cell and its children", async () => {
    const r = await py.run("input()");
    expect(r.end).toMatchObject({ status: "error", ename: "EOFError" });
    expect(r.stderr).toContain("stdin is not available");
    // A child reading stdin gets /dev/null, not the host's next cell.
    expect((await py.run('subprocess.run(["cat"], capture_output=True).stdout')).stdout).toBe("b''\n");
  });

  it("reports exceptions with a traceback of the user's code only", async () => {
    const r = await py.run("def f():\n    return 1 / 0\nf()");
    expect(r.end).toEqual({ type: "end", status: "error", ename: "ZeroDivisionError", evalue: "division by zero" });
    expect(r.stderr).toMatch(/^Traceback \(most recent call last\):\n/);
    expect(r.stderr).toContain('File "<cell-');
    expect(r.stderr).toContain("return 1 / 0");
    expect(r.stderr).toContain("ZeroDivisionError: division by zero");
    expect(r.stderr).not.toContain("python_driver");
    expect((await py.run("1")).stdout).toBe("1\n");
  });

  it("reports syntax errors", async () => {
    const r = await py.run("def f(:\n  pass");
    expect(r.end).toMatchObject({ status: "error", ename: "SyntaxError" });
    expect(r.stderr).toContain("def f(:");
    expect(r.stderr).toContain("SyntaxError");
    expect(r.stderr).not.toContain("Traceback");
    expect(r.stderr).not.toContain("python_driver");
  });

  it("delivers a 5 MB print complete before the end frame", async () => {
    const r = await py.run('print("y" * 5_000_000)');
    expect(r.stdout.length).toBe(5_000_001);
    expect(r.stdout).toBe("y".repeat(5_000_000) + "\n");
  });

  it("survives sys.exit() and KeyboardInterrupt", async () => {
    const r = await py.run("import sys; sys.exit(3)");
    expect(r.end).toEqual({ type: "end", status: "error", ename: "SystemExit", evalue: "3" });
    const k = await py.run("raise KeyboardInterrupt");
    expect(k.end).toMatchObject({ status: "error", ename: "KeyboardInterrupt" });
    expect(py.alive).toBe(true);
    expect((await py.run("x")).stdout).toBe("41\n");
  });

  it("encodes odd exception messages as valid JSON", async () => {
    const r = await py.run('raise ValueError("quote \\" nl \\n \\ud800 é 🎉")');
    expect(r.end).toEqual({ type: "end", status: "error", ename: "ValueError", evalue: 'quote " nl \n \ud800 é 🎉' });
  });
});

describe("node driver", () => {
  let js: Driver;
  beforeAll(async () => {
    js = Driver.start(process.execPath, "node_driver.js");
    const ready = await js.ready;
    expect(ready).toEqual({ type: "ready", language: "javascript", version: process.versions.node });
  });
  afterAll(async () => {
    await js.stop();
    expect(js.crashOutput).toBe("");
  });

  it("echoes the last expression like the Node REPL", async () => {
    expect(await js.run("2+2")).toEqual({ stdout: "4\n", stderr: "", end: { type: "end", status: "ok" } });
    expect((await js.run("'a' + 'b'")).stdout).toBe("'ab'\n");
    expect((await js.run("{ a: 1 }")).stdout).toBe("{ a: 1 }\n");
    expect((await js.run("undefined")).stdout).toBe("");
  });

  it("keeps var, let, const and functions across plain cells", async () => {
    expect((await js.run("var v = 1; let l = 2; const c = 3; function f() { return 4 }")).stdout).toBe("");
    expect((await js.run("v + l + c + f()")).stdout).toBe("10\n");
    // Like a script (and unlike the Node REPL), a let cannot be declared twice.
    expect((await js.run("let l = 5")).end).toMatchObject({ status: "error", ename: "SyntaxError" });
  });

  it("supports top-level await", async () => {
    expect((await js.run("await new Promise(r => setTimeout(() => r(7), 10))")).stdout).toBe("7\n");
  });

  it("keeps simple declarations made in await cells", async () => {
    const r = await js.run(
      "const z = await Promise.resolve(5)\nlet w\nclass K { m() { return z } }\nasync function g() { return 9 }\nnew K().m() + (await g())",
    );
    expect(r).toMatchObject({ stdout: "14\n", end: { status: "ok" } });
    expect((await js.run("z + (w === undefined ? 1 : 0) + new K().m() + (await g())")).stdout).toBe("20\n");
  });

  it("captures console and process.stdout/stderr", async () => {
    expect((await js.run('console.log("x")')).stdout).toBe("x\n");
    const r = await js.run('process.stdout.write("o"); console.error("e"); process.stderr.write("f\\n"); 1');
    expect(r).toMatchObject({ stdout: "o1\n", stderr: "e\nf\n" });
  });

  it("reports thrown errors with their stack", async () => {
    const r = await js.run('function boom() { throw new TypeError("bad") }\nboom()');
    expect(r.end).toEqual({ type: "end", status: "error", ename: "TypeError", evalue: "bad" });
    expect(r.stderr).toMatch(/^TypeError: bad\n\s+at boom \(<cell-\d+>:1:/);
    expect(r.stderr).not.toContain("node_driver");
    const a = await js.run("await null; null.x");
    expect(a.end).toMatchObject({ status: "error", ename: "TypeError" });
    expect(a.stderr).toContain("<cell-");
  });

  it("reports syntax errors", async () => {
    const r = await js.run("foo bar");
    expect(r.end).toMatchObject({ status: "error", ename: "SyntaxError" });
    expect(r.stderr).toContain("foo bar");
  });

  it("survives process.exit() and hides process.stdin", async () => {
    expect((await js.run("process.exit(2)")).end).toMatchObject({ status: "error", ename: "ProcessExit" });
    expect((await js.run("process.stdin")).stderr).toContain("process.stdin is not available");
    expect(js.alive).toBe(true);
    expect((await js.run("v")).stdout).toBe("1\n");
  });

  it("splits big writes into frames below the limit", async () => {
    const r = await js.run('process.stdout.write("z".repeat(5_000_000)); 0');
    expect(r.stdout.length).toBe(5_000_002);
  });
});

describe("ReplFrameDecoder", () => {
  const frame = (type: number, body: Buffer | string): Buffer => {
    const b = Buffer.from(body);
    const head = Buffer.alloc(5);
    head.writeUInt8(type, 0);
    head.writeUInt32BE(b.length, 1);
    return Buffer.concat([head, b]);
  };

  it("decodes frames split at any byte", () => {
    const wire = Buffer.concat([
      frame(4, '{"language":"python","version":"3.11.2"}'),
      frame(1, "out"),
      frame(2, ""),
      frame(3, '{"status":"error","ename":"E","evalue":"v"}'),
      frame(3, '{"status":"ok"}'),
    ]);
    const d = new ReplFrameDecoder();
    const frames = [...wire].flatMap((byte) => d.push(Buffer.from([byte])));
    expect(frames).toEqual([
      { type: "ready", language: "python", version: "3.11.2" },
      { type: "stdout", data: Buffer.from("out") },
      { type: "stderr", data: Buffer.alloc(0) },
      { type: "end", status: "error", ename: "E", evalue: "v" },
      { type: "end", status: "ok" },
    ]);
    d.end();
  });

  it("encodes cells with a big-endian length", () => {
    expect(encodeCell("é")).toEqual(Buffer.from([0, 0, 0, 2, 0xc3, 0xa9]));
  });

  it("rejects garbage, unknown types and oversized frames at the header", () => {
    expect(() => new ReplFrameDecoder().push(Buffer.from("hello world"))).toThrow(AgentProtocolError);
    expect(() => new ReplFrameDecoder().push(Buffer.from([9, 0, 0, 0, 0]))).toThrow(/unknown frame type 9/);
    const big = Buffer.from([1, 0x01, 0x00, 0x00, 0x01]); // 16 MiB + 1
    expect(() => new ReplFrameDecoder().push(big)).toThrow(AgentProtocolError);
    expect(() => new ReplFrameDecoder().push(Buffer.from([3, 0x00, 0x10, 0x00, 0x01]))).toThrow(/limit/);
  });

  it("rejects bad JSON and bad status frames", () => {
    for (const body of ["{not json", '"ok"', '{"status":"maybe"}', '{"status":"error","ename":3}', "\xff"]) {
      expect(() => new ReplFrameDecoder().push(frame(3, body))).toThrow(AgentProtocolError);
    }
    expect(() => new ReplFrameDecoder().push(frame(3, Buffer.from([0x7b, 0xff, 0x7d])))).toThrow(/UTF-8 JSON/);
    expect(() => new ReplFrameDecoder().push(frame(4, '{"language":"python"}'))).toThrow(AgentProtocolError);
  });

  it("stays failed after a violation and flags a truncated stream", () => {
    const d = new ReplFrameDecoder();
    expect(() => d.push(Buffer.from([0, 0, 0, 0, 0]))).toThrow(AgentProtocolError);
    expect(() => d.push(frame(1, "ok"))).toThrow(AgentProtocolError);
    const t = new ReplFrameDecoder();
    expect(t.push(frame(1, "abc").subarray(0, 6))).toEqual([]);
    expect(() => t.end()).toThrow(/ended inside a frame/);
  });
});
