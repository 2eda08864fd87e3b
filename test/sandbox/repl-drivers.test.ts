// The in-guest REPL drivers behind Repl, run by the real agent as a host process (no VM): cells
// and control frames on the agent's channel, output as the driver's own stdout and stderr. And the
// frame decoder, and the constants the drivers get from the host.
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { AgentClient } from "../../src/agent-client/client.js";
import { AgentProtocolError, ExecError } from "../../src/errors.js";
import { BASH_REPL, driverSource, NODE_REPL, PYTHON_REPL, Repl, type ReplLanguage } from "../../src/sandbox/repl.js";
import { driverPrelude, encodeCell, REPL_PROTOCOL, ReplFrameDecoder } from "../../src/sandbox/repl-frames.js";
import { type RunningAgent, startAgent } from "../agent-client/helpers.js";

let agent: RunningAgent;
let client: AgentClient;

beforeAll(async () => {
  agent = await startAgent();
  client = await agent.connect();
});

afterAll(async () => {
  client?.close();
  await agent?.stop();
});

// Debian's /usr/bin/python3 is the 3.11 the guest runs; /usr/bin first keeps a pyenv shim out.
function repl(lang: ReplLanguage): Repl {
  return new Repl(lang, {
    agent: () => client,
    processOptions: () => ({ env: { PATH: "/usr/bin:/bin", HOME: agent.dir }, cwd: agent.dir }),
    exhausted: () => undefined,
    driverDir: agent.dir,
  });
}

describe("python driver", () => {
  let py: Repl;
  beforeAll(() => {
    py = repl(PYTHON_REPL);
  });
  afterAll(() => py.reset());

  it("echoes the value of the last expression, and reports it as the cell's result", async () => {
    expect(await py.run("2 + 2")).toMatchObject({ status: "success", stdout: "4\n", stderr: "", result: "4" });
    expect((await py.run("'a' * 3")).result).toBe("'aaa'");
    // None is not echoed, and is no result; nor is a statement.
    expect(await py.run("None")).toMatchObject({ stdout: "", result: undefined });
    expect(await py.run("y = 1")).toMatchObject({ stdout: "", result: undefined });
  });

  it("keeps state between cells, and _ like the prompt", async () => {
    expect((await py.run("x = 41")).stdout).toBe("");
    expect((await py.run("x + 1")).stdout).toBe("42\n");
    expect((await py.run("_ * 2")).stdout).toBe("84\n");
    expect((await py.run("__name__")).stdout).toBe("'__main__'\n");
  });

  it("keeps print() and raw os.write(1) in order", async () => {
    const r = await py.run('print("a"); import os; os.write(1, b"b\\n")');
    // os.write returns 2, the last expression's value.
    expect(r.stdout).toBe("a\nb\n2\n");
  });

  it("survives writes to fd 1 and children that share it, in order", async () => {
    expect((await py.run('import os; os.write(1, b"x\\n"); None')).stdout).toBe("x\n");
    const child = await py.run('import subprocess; print("before", flush=True); subprocess.run("echo hi; echo oops >&2", shell=True); print("after")');
    expect(child).toMatchObject({ status: "success", stdout: "before\nhi\nafter\n", stderr: "oops\n" });
    expect((await py.run("2 + 2")).stdout).toBe("4\n");
  });

  it("gives the cell and its children /dev/null for stdin, and no channel", async () => {
    const r = await py.run("input()");
    expect(r).toMatchObject({ status: "error", errorName: "EOFError" });
    expect((await py.run('subprocess.run(["cat"], capture_output=True).stdout')).stdout).toBe("b''\n");
    // A shell started from the cell has its stdio, and not the channel.
    const seen = (await py.run('import os; os.system("ls /proc/$$/fd"); "MSB_CHANNEL_FD" in os.environ')).stdout.split("\n");
    expect(seen).toEqual(expect.arrayContaining(["0", "1", "2", "False"]));
    expect(seen).not.toContain("3");
  });

  it("reports exceptions with a traceback of the user's code only", async () => {
    const r = await py.run("def f():\n    return 1 / 0\nf()");
    expect(r).toMatchObject({ status: "error", errorName: "ZeroDivisionError" });
    expect(r.stderr).toMatch(/^Traceback \(most recent call last\):\n/);
    expect(r.stderr).toContain('File "<cell-');
    expect(r.stderr).toContain("return 1 / 0");
    expect(r.stderr).toContain("ZeroDivisionError: division by zero");
    expect(r.stderr).not.toContain("python_driver");
    expect((await py.run("1")).stdout).toBe("1\n");
  });

  it("reports syntax errors", async () => {
    const r = await py.run("def f(:\n  pass");
    expect(r).toMatchObject({ status: "error", errorName: "SyntaxError" });
    expect(r.stderr).toContain("def f(:");
    expect(r.stderr).not.toContain("Traceback");
    expect(r.stderr).not.toContain("python_driver");
  });

  it("delivers a 5 MB print complete before the end of the cell", async () => {
    const r = await py.run('print("y" * 5_000_000)');
    expect(r.stdout).toBe(`${"y".repeat(5_000_000)}\n`);
  });

  it("flushes a partial line before the end of the cell", async () => {
    expect((await py.run('import sys; sys.stdout.write("no newline")')).stdout).toBe("no newline10\n");
  });

  it("survives sys.exit() and KeyboardInterrupt", async () => {
    expect(await py.run("import sys; sys.exit(3)")).toMatchObject({ status: "error", errorName: "SystemExit" });
    expect(await py.run("raise KeyboardInterrupt")).toMatchObject({ status: "error", errorName: "KeyboardInterrupt" });
    expect((await py.run("x")).stdout).toBe("41\n");
  });

  it("sends odd exception messages and huge names as valid, bounded frames", async () => {
    const r = await py.run('raise ValueError("quote \\" nl \\n \\ud800 é 🎉")');
    expect(r).toMatchObject({ status: "error", errorName: "ValueError" });
    expect(r.stderr).toContain('quote " nl');
    const big = await py.run('raise type("E" * 1_000_000, (Exception,), {})("🎉" * 1_000_000)');
    expect(big.errorName).toBe("E".repeat(REPL_PROTOCOL.MAX_TEXT_CHARS));
    expect((await py.run("x")).stdout).toBe("41\n");
  });

  it("treats garbage on its channel as a protocol violation, and starts afresh", async () => {
    const err = await py.run('import os; os.write(3, b"garbage!")').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentProtocolError);
    expect((err as Error).message).toMatch(/unknown frame type 103.*python interpreter was stopped and its state is lost/);
    // A header announcing 2 GiB fails at the header, not after buffering.
    await py.run("x = 1");
    const big = await py.run('import os; os.write(3, b"\\x02\\x7f\\xff\\xff\\xff")').catch((e: unknown) => e);
    expect((big as Error).message).toMatch(/is 2147483647 bytes; the limit is/);
    expect((await py.run("'x' in globals()")).stdout).toBe("False\n");
  });
});

describe("node driver", () => {
  let js: Repl;
  beforeAll(() => {
    js = repl(NODE_REPL);
  });
  afterAll(() => js.reset());

  it("echoes the last expression like the Node REPL", async () => {
    expect(await js.run("2+2")).toMatchObject({ status: "success", stdout: "4\n", stderr: "", result: "4" });
    expect((await js.run("'a' + 'b'")).stdout).toBe("'ab'\n");
    expect((await js.run("'a' + 'b'")).result).toBe("'ab'");
    expect((await js.run("let q = 1")).result).toBeUndefined();
    expect((await js.run("{ a: 1 }")).stdout).toBe("{ a: 1 }\n");
    expect((await js.run("undefined")).stdout).toBe("");
  });

  it("keeps var, let, const and functions across plain cells", async () => {
    expect((await js.run("var v = 1; let l = 2; const c = 3; function f() { return 4 }")).stdout).toBe("");
    expect((await js.run("v + l + c + f()")).stdout).toBe("10\n");
    // Like a script (and unlike the Node REPL), a let cannot be declared twice.
    expect(await js.run("let l = 5")).toMatchObject({ status: "error", errorName: "SyntaxError" });
  });

  it("supports top-level await", async () => {
    expect((await js.run("await new Promise(r => setTimeout(() => r(7), 10))")).stdout).toBe("7\n");
  });

  it("keeps simple declarations made in await cells", async () => {
    const r = await js.run(
      "const z = await Promise.resolve(5)\nlet w\nclass K { m() { return z } }\nasync function g() { return 9 }\nnew K().m() + (await g())",
    );
    expect(r).toMatchObject({ stdout: "14\n", status: "success" });
    expect((await js.run("z + (w === undefined ? 1 : 0) + new K().m() + (await g())")).stdout).toBe("20\n");
  });

  it("sends console and process.stdout/stderr to fd 1 and 2", async () => {
    expect((await js.run('console.log("x")')).stdout).toBe("x\n");
    const r = await js.run('process.stdout.write("o"); console.error("e"); process.stderr.write("f\\n"); 1');
    expect(r).toMatchObject({ stdout: "o1\n", stderr: "e\nf\n" });
  });

  it("survives writes to fd 1 and children that share it, in order", async () => {
    expect((await js.run('require("fs").writeSync(1, "x\\n")')).stdout).toBe("x\n2\n");
    const child = await js.run(
      'console.log("before"); require("child_process").execSync("echo hi; echo oops >&2", { stdio: "inherit" }); console.log("after")',
    );
    expect(child).toMatchObject({ status: "success", stdout: "before\nhi\nafter\n", stderr: "oops\n" });
    expect((await js.run("2 + 2")).stdout).toBe("4\n");
  });

  it("reports thrown errors with their stack", async () => {
    const r = await js.run('function boom() { throw new TypeError("bad") }\nboom()');
    expect(r).toMatchObject({ status: "error", errorName: "TypeError" });
    expect(r.stderr).toMatch(/^TypeError: bad\n\s+at boom \(<cell-\d+>:1:/);
    expect(r.stderr).not.toContain("node_driver");
    const a = await js.run("await null; null.x");
    expect(a).toMatchObject({ status: "error", errorName: "TypeError" });
    expect(a.stderr).toContain("<cell-");
  });

  it("reports syntax errors", async () => {
    const r = await js.run("foo bar");
    expect(r).toMatchObject({ status: "error", errorName: "SyntaxError" });
    expect(r.stderr).toContain("foo bar");
  });

  it("survives process.exit(), gives stdin /dev/null and keeps its channel out of the environment", async () => {
    expect(await js.run("process.exit(2)")).toMatchObject({ status: "error", errorName: "ProcessExit" });
    const stdin = await js.run('await new Promise((r) => { let d = ""; process.stdin.on("data", (c) => (d += c)).on("end", () => r(d)) })');
    expect(stdin.stdout).toBe("''\n");
    expect((await js.run('"MSB_CHANNEL_FD" in process.env')).stdout).toBe("false\n");
    expect((await js.run("v")).stdout).toBe("1\n");
  });

  it("delivers a 5 MB write complete before the end of the cell", async () => {
    const r = await js.run('process.stdout.write("z".repeat(5_000_000)); 0');
    expect(r.stdout).toBe(`${"z".repeat(5_000_000)}0\n`);
  });

  it("treats garbage on its channel as a protocol violation, and starts afresh", async () => {
    const err = await js.run('require("fs").writeSync(3, "garbage")').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentProtocolError);
    expect((err as Error).message).toMatch(/javascript interpreter was stopped and its state is lost/);
    expect((await js.run("typeof v")).stdout).toBe("'undefined'\n");
  });
});

describe("bash driver", () => {
  let sh: Repl;
  beforeAll(() => {
    sh = repl(BASH_REPL);
  });
  afterAll(() => sh.reset());

  it("keeps variables, functions and the working directory across cells", async () => {
    expect(await sh.run("x=41; f() { echo $((x + 1)); }; cd /tmp")).toMatchObject({ status: "success", stdout: "", stderr: "" });
    expect(await sh.run("f; pwd")).toMatchObject({ status: "success", stdout: "42\n/tmp\n" });
  });

  it("passes stdout and stderr through, trailing newlines and all, in order", async () => {
    expect(await sh.run("echo out; echo err >&2; printf 'a\\n\\n'")).toMatchObject({ stdout: "out\na\n\n", stderr: "err\n" });
    expect((await sh.run("cat <<'E'\nline one\n\nE\n")).stdout).toBe("line one\n\n");
  });

  it("reports a non-zero status of the last command as an ExitCode error, and goes on", async () => {
    const r = await sh.run("ls /nonexistent-dir");
    expect(r).toMatchObject({ status: "error", errorName: "ExitCode" });
    expect(r.stderr).toMatch(/nonexistent-dir/);
    expect(await sh.run("false; true")).toMatchObject({ status: "success" });
    expect(await sh.run("(exit 7)")).toMatchObject({ status: "error", errorName: "ExitCode" });
    expect((await sh.run("echo $x")).stdout).toBe("41\n");
  });

  it("gives cells /dev/null for stdin and no channel", async () => {
    expect((await sh.run("cat; echo done")).stdout).toBe("done\n");
    // A child shell has the cell's stdio, and not the channel.
    const fds = (await sh.run("bash -c 'ls -l /proc/$$/fd; true'; printenv MSB_CHANNEL_FD || echo unset")).stdout.split("\n");
    expect(fds).toContain("unset");
    expect(fds.join("\n")).not.toMatch(/ 3 ->/);
  });

  it("says its state is lost when a cell exits the shell, and starts afresh", async () => {
    await expect(sh.run("exit 3")).rejects.toThrow(/bash interpreter ended \(exit code 3\); its state is lost/);
    expect((await sh.run('echo "[$x]"')).stdout).toBe("[]\n");
  });
});

describe("a driver whose program is missing", () => {
  it("fails its first cell with the agent's ExecError (ENOENT), not a hang", async () => {
    const r = repl({ ...BASH_REPL, interpreter: ["no-such-shell"] });
    const err = await r.run("true").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExecError);
    expect(err).toMatchObject({ errnoName: "ENOENT" });
  });
});

describe("the drivers' constants", () => {
  it("are the host's, put in front of each driver in its own syntax", () => {
    expect(driverPrelude("python")).toContain(`FRAME_END = ${REPL_PROTOCOL.FRAME_END}\n`);
    expect(driverPrelude("javascript")).toContain(`const MAX_TEXT_CHARS = ${REPL_PROTOCOL.MAX_TEXT_CHARS};\n`);
    expect(driverSource(PYTHON_REPL).toString().startsWith(driverPrelude("python"))).toBe(true);
    expect(driverSource(NODE_REPL).toString().startsWith(driverPrelude("javascript"))).toBe(true);
    expect(driverSource(BASH_REPL).toString().startsWith(driverPrelude("bash"))).toBe(true);
    expect(driverPrelude("bash")).toContain(`FRAME_READY=${REPL_PROTOCOL.FRAME_READY}\n`);
    // ... and written nowhere else.
    for (const file of [...PYTHON_REPL.driver, ...NODE_REPL.driver, ...BASH_REPL.driver]) {
      const source = readFileSync(new URL(`../../guest/repl/${file}`, import.meta.url), "utf8");
      for (const name of Object.keys(REPL_PROTOCOL)) expect(source).not.toMatch(new RegExp(`\\b${name}\\s*=`));
    }
  });
});

describe("ReplFrameDecoder", () => {
  const { FRAME_READY: READY, FRAME_END: END } = REPL_PROTOCOL;
  const frame = (type: number, body: Buffer | string): Buffer => {
    const b = Buffer.from(body);
    const head = Buffer.alloc(5);
    head.writeUInt8(type, 0);
    head.writeUInt32BE(b.length, 1);
    return Buffer.concat([head, b]);
  };

  it("decodes frames split at any byte", () => {
    const wire = Buffer.concat([
      frame(READY, '{"language":"python","version":"3.11.2"}'),
      frame(END, '{"status":"error","ename":"E","evalue":"v"}'),
      frame(END, '{"status":"ok","result":"4"}'),
    ]);
    const d = new ReplFrameDecoder();
    const frames = [...wire].flatMap((byte) => d.push(Buffer.from([byte])));
    expect(frames).toEqual([
      { type: "ready", language: "python", version: "3.11.2" },
      { type: "end", status: "error", ename: "E", evalue: "v" },
      { type: "end", status: "ok", result: "4" },
    ]);
    d.end();
  });

  it("encodes cells with a big-endian length", () => {
    expect(encodeCell("é")).toEqual(Buffer.from([0, 0, 0, 2, 0xc3, 0xa9]));
  });

  it("rejects garbage, unknown types and oversized frames at the header", () => {
    expect(() => new ReplFrameDecoder().push(Buffer.from("hello world"))).toThrow(AgentProtocolError);
    expect(() => new ReplFrameDecoder().push(Buffer.from([9, 0, 0, 0, 0]))).toThrow(/unknown frame type 9/);
    expect(() => new ReplFrameDecoder().push(Buffer.from([END, 0x00, 0x10, 0x00, 0x01]))).toThrow(/limit/);
  });

  it("rejects bad JSON and bad status frames", () => {
    for (const body of ["{not json", '"ok"', '{"status":"maybe"}', '{"status":"error","ename":3}', "\xff"]) {
      expect(() => new ReplFrameDecoder().push(frame(END, body))).toThrow(AgentProtocolError);
    }
    expect(() => new ReplFrameDecoder().push(frame(END, Buffer.from([0x7b, 0xff, 0x7d])))).toThrow(/UTF-8 JSON/);
    expect(() => new ReplFrameDecoder().push(frame(READY, '{"language":"python"}'))).toThrow(AgentProtocolError);
  });

  it("stays failed after a violation and flags a truncated stream", () => {
    const d = new ReplFrameDecoder();
    expect(() => d.push(Buffer.from([0, 0, 0, 0, 0]))).toThrow(AgentProtocolError);
    expect(() => d.push(frame(END, '{"status":"ok"}'))).toThrow(AgentProtocolError);
    const t = new ReplFrameDecoder();
    expect(t.push(frame(END, '{"status":"ok"}').subarray(0, 6))).toEqual([]);
    expect(() => t.end()).toThrow(/ended inside a frame/);
  });
});
