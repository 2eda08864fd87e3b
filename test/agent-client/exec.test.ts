// Processes through the real agent binary on a unix socket.
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { AgentClient } from "../../src/agent-client/client.js";
import { AbortError, ExecError, InvalidArgumentError, OutputLimitError } from "../../src/errors.js";
import { groupGone, type RunningAgent, startAgent } from "./helpers.js";

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

describe("handshake", () => {
  it("reports protocol and agent version, pid and boot timeline", () => {
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));
    expect(client.hello.protocolVersion).toBe(1);
    expect(client.hello.agentVersion).toBe(pkg.version);
    expect(client.hello.pid).toBe(agent.proc.pid);
    expect(client.hello.boot[0]?.name).toBe("agent_start");
    expect(client.hello.boot[0]?.ns).toBeGreaterThan(0);
  });
});

describe("exec", () => {
  it("keeps stdout and stderr apart", async () => {
    const r = await client.exec(["sh", "-c", "echo out; echo err >&2; echo out2"]);
    expect(r.stdout.toString()).toBe("out\nout2\n");
    expect(r.stderr.toString()).toBe("err\n");
    expect(r.exitCode).toBe(0);
    expect(r.signal).toBeNull();
    expect(r.pid).toBeGreaterThan(0);
  });

  it("reports exit codes and signals", async () => {
    expect((await client.exec(["sh", "-c", "exit 3"])).exitCode).toBe(3);
    const killed = await client.exec(["sh", "-c", "kill -TERM $$"]);
    expect(killed.exitCode).toBeNull();
    expect(killed.signal).toBe("SIGTERM");
  });

  it("passes env and cwd exactly, and looks the program up in the given PATH", async () => {
    const r = await client.exec(["sh", "-c", 'echo "$GREETING|$(pwd)|$(env | wc -l)"'], {
      env: { GREETING: "hi there", PATH: "/usr/bin:/bin" },
      cwd: "/tmp",
    });
    // env | wc -l counts GREETING, PATH and the PWD the shell adds itself
    expect(r.stdout.toString()).toBe("hi there|/tmp|3\n");
  });

  it("round-trips stdin, collected and interactively", async () => {
    expect((await client.exec(["cat"], { stdin: "hello\nworld" })).stdout.toString()).toBe("hello\nworld");

    const proc = client.spawn(["cat"], { stdin: true });
    const it = proc[Symbol.asyncIterator]();
    for (const line of ["one\n", "two\n", "three\n"]) {
      await proc.write(line);
      const chunk = await it.next();
      expect(chunk.value.data.toString()).toBe(line);
    }
    await proc.end();
    expect((await it.next()).done).toBe(true);
    expect((await proc.exit).exitCode).toBe(0);
  });

  it("streams a large stdin through a pipe under flow control", async () => {
    const big = Buffer.alloc(8 * 1024 * 1024, "x");
    const r = await client.exec(["wc", "-c"], { stdin: big });
    expect(r.stdout.toString().trim()).toBe(String(big.length));
  });

  it("runs 100 processes at once on one connection, each with its own output", async () => {
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) => client.exec(["sh", "-c", `echo start-${i}; sleep 0.2; echo end-${i} >&2; exit ${i % 7}`])),
    );
    results.forEach((r, i) => {
      expect(r.stdout.toString()).toBe(`start-${i}\n`);
      expect(r.stderr.toString()).toBe(`end-${i}\n`);
      expect(r.exitCode).toBe(i % 7);
    });
  });

  it("streams 100 MB of stdout with flat host memory", async () => {
    const total = 100 * 1000 * 1000;
    const proc = client.spawn(["head", "-c", String(total), "/dev/zero"]);
    const base = process.memoryUsage();
    let received = 0;
    let peak = 0;
    for await (const chunk of proc) {
      received += chunk.data.length;
      if ((received & 0xfffff) < chunk.data.length) {
        const m = process.memoryUsage();
        peak = Math.max(peak, m.arrayBuffers - base.arrayBuffers, m.rss - base.rss);
      }
    }
    expect(received).toBe(total);
    expect((await proc.exit).exitCode).toBe(0);
    // The window is 1 MiB: the host holds a few MiB at most, never the whole stream.
    expect(peak).toBeLessThan(48 * 1024 * 1024);
  });

  it("pauses a process nobody reads without holding up other sessions or growing the agent", async () => {
    const flood = client.spawn(["sh", "-c", "yes flood"]);
    await flood.pid;
    const t0 = Date.now();
    const r = await client.exec(["echo", "still responsive"]);
    expect(r.stdout.toString()).toBe("still responsive\n");
    expect(Date.now() - t0).toBeLessThan(5000);
    await new Promise((res) => setTimeout(res, 300));
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${agent.proc.pid}/status`, "utf8"))![1]);
    expect(rss).toBeLessThan(16 * 1024); // kB
    flood.kill();
    // Output is delivered, not dropped: reading what was held back lets the exit through.
    for await (const _ of flood);
    expect((await flood.exit).signal).toBe("SIGKILL");
  });

  it("kills the whole process tree on timeout", async () => {
    const t0 = Date.now();
    const proc = client.spawn(["sh", "-c", "sleep 100 & sleep 100 & echo started; wait"], { timeout: 1 });
    const pid = await proc.pid;
    const chunks: string[] = [];
    for await (const c of proc) chunks.push(c.data.toString());
    const status = await proc.exit;
    expect(chunks.join("")).toBe("started\n");
    expect(status.timedOut).toBe(true);
    expect(status.signal).toBe("SIGKILL");
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(status.durationMs).toBeGreaterThanOrEqual(1000);
    expect(await groupGone(pid)).toEqual([]);
  });

  it("delivers signals to the process group", async () => {
    const proc = client.spawn(["sh", "-c", "sleep 30; echo not reached"]);
    const pid = await proc.pid;
    expect(() => proc.kill("SIGBOGUS" as never)).toThrow(/unknown signal "SIGBOGUS"/);
    proc.kill("SIGTERM");
    const status = await proc.exit;
    expect(status.signal).toBe("SIGTERM");
    expect(await groupGone(pid)).toEqual([]);
  });

  it("returns when the process exits even if a background child keeps its output open", async () => {
    const t0 = Date.now();
    const r = await client.exec(["sh", "-c", "sleep 5 & echo parent done"]);
    expect(r.stdout.toString()).toBe("parent done\n");
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it("still kills the background members of a group whose leader has exited", async () => {
    const proc = client.spawn(["sh", "-c", "yes background & echo leader done"]);
    const pid = await proc.pid;
    const it = proc[Symbol.asyncIterator]();
    await it.next();
    await new Promise((r) => setTimeout(r, 300)); // the leader is gone; `yes` keeps the pipe busy
    proc.kill("SIGKILL");
    while (!(await it.next()).done);
    expect((await proc.exit).exitCode).toBe(0); // the leader's own status
    expect(await groupGone(pid)).toEqual([]);
  });

  it("aborts through an AbortSignal and kills the process", async () => {
    const ac = new AbortController();
    const running = client.exec(["sh", "-c", "echo $$; sleep 30"], { signal: ac.signal });
    setTimeout(() => ac.abort(new Error("user gave up")), 300);
    const err = await running.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AbortError);
    expect((err as AbortError).cause).toEqual(new Error("user gave up"));
  });

  it("kills a process whose output exceeds maxBuffer", async () => {
    await expect(client.exec(["sh", "-c", "yes"], { maxBuffer: 1024 * 1024 })).rejects.toBeInstanceOf(OutputLimitError);
  });

  it("applies rlimits", async () => {
    const r = await client.exec(["sh", "-c", "ulimit -n; ulimit -Hn"], { rlimits: { nofile: [64, 128] } });
    expect(r.stdout.toString()).toBe("64\n128\n");
  });
});

describe("exec failures are typed", () => {
  it("names a missing program", async () => {
    const err = await client.exec(["definitely-not-a-program"]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExecError);
    expect(err).toMatchObject({ code: "MSB_EXEC_FAILED", errnoName: "ENOENT", errno: 2 });
    expect((err as Error).message).toContain("definitely-not-a-program");
  });

  it("names a bad working directory", async () => {
    const err = await client.exec(["true"], { cwd: "/no/such/dir" }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "MSB_EXEC_FAILED", errnoName: "ENOENT" });
    expect((err as Error).message).toContain("/no/such/dir");
  });

  it("reports a file without execute permission", async () => {
    await client.writeFile(`${agent.dir}/not-executable`, "#!/bin/sh\necho hi\n", { mode: 0o644 });
    const err = await client.exec([`${agent.dir}/not-executable`]).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "MSB_EXEC_FAILED", errnoName: "EACCES" });
  });

  it("runs as another user, and reports a directory that user may not enter", async () => {
    const r = await client.exec(["id", "-u"], { user: "nobody" });
    expect(r.stdout.toString().trim()).toBe("65534");
    await client.mkdir(`${agent.dir}/private`, { mode: 0o700 });
    const err = await client.exec(["true"], { user: "nobody", cwd: `${agent.dir}/private` }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: "MSB_EXEC_FAILED", errnoName: "EACCES" });
  });

  it("reports an unknown user", async () => {
    const err = await client.exec(["true"], { user: "no-such-user" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExecError);
    expect((err as Error).message).toContain("no-such-user");
  });

  it("rejects bad options before sending anything", () => {
    expect(() => client.spawn([])).toThrow(InvalidArgumentError);
    expect(() => client.spawn(["echo"], { cwd: "relative" })).toThrow(/absolute/);
    expect(() => client.spawn(["echo"], { timeout: -1 })).toThrow(/positive number of seconds/);
    expect(() => client.spawn(["echo"], { env: { "A=B": "x" } })).toThrow(InvalidArgumentError);
    expect(() => client.spawn(["echo"], { rlimits: { bogus: 1 } as never })).toThrow(/unknown rlimit/);
    expect(() => client.spawn(["echo\0"])).toThrow(/NUL/);
  });
});
