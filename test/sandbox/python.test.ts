// PythonSandbox end to end: one real VM (QEMU; TCG here) shared by the tests of this file.
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { ExecError, PythonSandbox, ResourceError, SandboxNotRunningError, TimeoutError } from "../../src/index.js";

let sb: PythonSandbox;

beforeAll(async () => {
  sb = new PythonSandbox({ name: "py-tests" });
  await sb.start({ memory: 1024, cpus: 2 });
}, 180_000);

afterAll(async () => {
  await sb?.stop();
});

describe("the seed's examples", () => {
  it("says hello from Python", async () => {
    const execution = await sb.run("print('Hello from Python!')");
    expect(await execution.output()).toBe("Hello from Python!");
    expect(execution.language).toBe("python");
    expect(execution.hasError()).toBe(false);
  });

  it("echoes 2 + 2 like the interactive prompt", async () => {
    expect(await (await sb.run("2 + 2")).output()).toBe("4");
    expect(await (await sb.run("None")).output()).toBe("");
  });

  it("has the standard library that python:3.12-slim has (http, urllib, json, sqlite3, venv)", async () => {
    const execution = await sb.run(
      "import http.client, urllib.request, json, sqlite3, ssl, venv, email.message\n" +
        "sqlite3.connect(':memory:').execute('select 1').fetchone()[0] + len(json.dumps({'ok': True}))",
    );
    expect(await execution.error()).toBe("");
    expect(await execution.output()).toBe("13");
  });

  it("runs a shell command", async () => {
    const execution = await sb.command.run("echo", ["Hello World"]);
    expect(await execution.output()).toBe("Hello World");
    expect(execution.exitCode).toBe(0);
    expect(execution.success).toBe(true);
  });

  it("gives the guest the memory and cpus passed to start()", async () => {
    const meminfo = await sb.fs.readText("/proc/meminfo");
    const totalMiB = Number(/MemTotal:\s+(\d+) kB/.exec(meminfo)![1]) / 1024;
    expect(totalMiB).toBeGreaterThan(900);
    expect(totalMiB).toBeLessThanOrEqual(1024);
    expect(await (await sb.command.run("nproc")).output()).toBe("2");
  });
});

describe("run()", () => {
  it("keeps state between calls", async () => {
    await sb.run("counter = 40\ndef bump():\n    global counter\n    counter += 1\n    return counter");
    await sb.run("bump()");
    expect(await (await sb.run("bump()")).output()).toBe("42");
  });

  it("reports exceptions with the traceback", async () => {
    const execution = await sb.run("def f():\n    return 1 / 0\nf()");
    expect(execution.hasError()).toBe(true);
    expect(execution.errorName).toBe("ZeroDivisionError");
    const error = await execution.error();
    expect(error).toContain("Traceback (most recent call last)");
    expect(error).toContain("ZeroDivisionError: division by zero");
    expect(error).not.toContain("python_driver");
  });

  it("keeps stdout and stderr apart, including output of child processes", async () => {
    const execution = await sb.run("import sys, subprocess\nprint('out')\nprint('err', file=sys.stderr)\n_ = subprocess.run(['echo', 'child'])");
    expect(execution.stdout).toBe("out\nchild\n");
    expect(execution.stderr).toBe("err\n");
  });

  it("survives a cell writing to fd 1 and a child sharing it; their output comes in order", async () => {
    expect((await sb.run('import os; print("a"); os.write(1, b"x\\n"); print("b")')).stdout).toBe("a\nx\nb\n");
    const child = await sb.run('import subprocess; print("before"); subprocess.run("echo hi", shell=True); print("after")');
    expect(child.stdout).toBe("before\nhi\nafter\n");
    expect(await (await sb.run("2 + 2")).output()).toBe("4");
  });

  it("returns large output whole", async () => {
    const execution = await sb.run("print('x' * 5_000_000)");
    expect(execution.stdout.length).toBe(5_000_001);
  });

  it("kills a cell on timeout, says the state is lost, and the next call works", async () => {
    await sb.run("kept = 'before timeout'");
    const err = await sb.run("while True: pass", { timeout: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toMatch(/restarted.*state is lost/);
    const after = await sb.run("'kept' in globals()");
    expect(await after.output()).toBe("False");
    expect(await (await sb.run("1 + 1")).output()).toBe("2");
  });

  it("turns a memory bomb into a ResourceError and recovers", async () => {
    const err = await sb.run("hog = []\nwhile True:\n    hog.append(bytearray(64 * 1024 * 1024))").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ResourceError);
    expect((err as Error).message).toContain("1024 MiB");
    expect(await (await sb.run("'alive'")).output()).toBe("'alive'");
  });
});

describe("command.run()", () => {
  it("reports exit codes and stderr without throwing", async () => {
    const execution = await sb.command.run("sh", ["-c", "echo oops >&2; exit 3"]);
    expect(execution.exitCode).toBe(3);
    expect(execution.success).toBe(false);
    expect(await execution.error()).toBe("oops");
  });

  it("passes cwd and env", async () => {
    const execution = await sb.command.run("sh", ["-c", 'echo "$GREETING in $(pwd)"'], { cwd: "/tmp", env: { GREETING: "hi" } });
    expect(await execution.output()).toBe("hi in /tmp");
  });

  it("throws typed errors for a missing program and a timeout", async () => {
    await expect(sb.command.run("no-such-program")).rejects.toBeInstanceOf(ExecError);
    await expect(sb.command.run("sleep", ["30"], { timeout: 1 })).rejects.toBeInstanceOf(TimeoutError);
  });

  it("streams output", async () => {
    const proc = sb.command.spawn("sh", ["-c", "for i in 1 2 3; do echo line $i; done"]);
    const chunks: string[] = [];
    for await (const chunk of proc) chunks.push(chunk.data.toString());
    expect(chunks.join("")).toBe("line 1\nline 2\nline 3\n");
    expect((await proc.exit).exitCode).toBe(0);
  });

  it("turns an out-of-memory kill into a ResourceError", async () => {
    const err = await sb.command.run("python3", ["-c", "hog = []\nwhile True: hog.append(bytearray(64 * 1024 * 1024))"]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ResourceError);
  });
});

describe("fs", () => {
  it("writes, reads, lists, stats and removes", async () => {
    const data = randomBytes(3 * 1024 * 1024);
    await sb.fs.write("/root/work/data.bin", data);
    expect(
      createHash("sha256")
        .update(await sb.fs.read("/root/work/data.bin"))
        .digest("hex"),
    ).toBe(createHash("sha256").update(data).digest("hex"));
    expect((await sb.fs.stat("/root/work/data.bin")).size).toBe(data.length);
    expect((await sb.fs.list("/root/work")).map((e) => e.name)).toEqual(["data.bin"]);
    const seen = await sb.run(`open('/root/work/data.bin', 'rb').read(4) == bytes.fromhex('${data.subarray(0, 4).toString("hex")}')`);
    expect(await seen.output()).toBe("True");
    await sb.fs.remove("/root/work", { recursive: true });
    await expect(sb.fs.stat("/root/work")).rejects.toMatchObject({ errnoName: "ENOENT" });
  });

  it("copies directory trees between host and guest", async () => {
    const host = mkdtempSync(path.join(tmpdir(), "msb-copy-"));
    try {
      mkdirSync(path.join(host, "in", "sub"), { recursive: true });
      writeFileSync(path.join(host, "in", "a.txt"), "alpha");
      writeFileSync(path.join(host, "in", "sub", "b.txt"), "beta");
      expect(await sb.fs.copyIn(path.join(host, "in"), "/root/tree")).toBe(9);
      expect(await (await sb.command.run("cat", ["/root/tree/a.txt", "/root/tree/sub/b.txt"])).output()).toBe("alphabeta");
      await sb.command.run("sh", ["-c", "echo made in guest > /root/tree/sub/c.txt"]);
      await sb.fs.copyOut("/root/tree", path.join(host, "out"));
      expect(readFileSync(path.join(host, "out", "sub", "c.txt"), "utf8")).toBe("made in guest\n");
      expect(readFileSync(path.join(host, "out", "a.txt"), "utf8")).toBe("alpha");
    } finally {
      rmSync(host, { recursive: true, force: true });
    }
  });
});

describe("lifecycle", () => {
  it("refuses calls on a sandbox that is not running", async () => {
    const idle = new PythonSandbox();
    await expect(idle.run("1")).rejects.toBeInstanceOf(SandboxNotRunningError);
    await expect(idle.command.run("true")).rejects.toThrow(/not running: call start\(\)/);
  });
});
