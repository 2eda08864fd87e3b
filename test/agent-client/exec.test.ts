// Processes through the real agent binary on a unix socket.
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { AgentClient } from "../../src/agent-client/client.js";
import type { ChannelChunk, ExecProcess, OutputChunk } from "../../src/agent-client/process.js";
import { PROTOCOL_VERSION } from "../../src/agent-client/protocol.js";
import { AbortError, ExecError, InvalidArgumentError, OutputLimitError } from "../../src/errors.js";
import { bodyOf, groupGone, type RunningAgent, rawConnection, startAgent } from "./helpers.js";

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
    expect(client.hello.protocolVersion).toBe(PROTOCOL_VERSION);
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

describe("channel", () => {
  /** Everything a process sent, by stream, in arrival order. */
  async function drain(proc: ExecProcess<OutputChunk | ChannelChunk>): Promise<Record<string, string>> {
    const out: Record<string, string> = { stdout: "", stderr: "", channel: "" };
    for await (const c of proc) out[c.stream] += c.data.toString();
    return out;
  }

  it("is fd 3, named in the environment, both ways, and ends with a half-close", async () => {
    // The agent's MSB_CHANNEL_FD replaces the host's.
    const proc = client.spawn(["sh", "-c", 'echo "fd $MSB_CHANNEL_FD"; cat <&3 >&3; echo "cat saw the end" >&2'], {
      channel: true,
      env: { PATH: "/usr/bin:/bin", MSB_CHANNEL_FD: "9" },
    });
    const output = drain(proc);
    await proc.writeChannel("ping ");
    await proc.writeChannel(Buffer.from("pong"));
    await proc.endChannel();
    expect(await output).toEqual({ stdout: "fd 3\n", stderr: "cat saw the end\n", channel: "ping pong" });
    expect((await proc.exit).exitCode).toBe(0);
  });

  it.each([
    ["with credit to spare", undefined],
    ["out of credit midway", 65536],
  ])("never overtakes stdout or stderr written before it, %s", async (_, window) => {
    // Each round writes 150 KB (more than the agent reads at once) to stdout or stderr, then
    // its number to the channel.
    const script = 'for i in $(seq 40); do head -c 150000 /dev/zero | tr "\\0" x; echo " $i" >&$((i % 2 + 1)); echo $i >&3; done';
    const proc = client.spawn(["sh", "-c", script], { channel: true, ...(window ? { window } : {}) });
    const lines = { stdout: 0, stderr: 0 };
    const pending = { stdout: "", stderr: "" };
    let rounds = 0;
    for await (const c of proc) {
      if (c.stream === "channel") {
        for (const n of c.data.toString().trim().split("\n").map(Number)) {
          // Round n's line is in, and so is every earlier round's.
          expect(lines.stdout + lines.stderr).toBeGreaterThanOrEqual(n);
          rounds = n;
        }
      } else {
        pending[c.stream] += c.data.toString();
        const parts = pending[c.stream].split("\n");
        pending[c.stream] = parts.pop()!;
        lines[c.stream] += parts.length;
        if (window) await new Promise((r) => setImmediate(r)); // a slow reader
      }
    }
    expect(rounds).toBe(40);
    expect(lines).toEqual({ stdout: 20, stderr: 20 });
    expect((await proc.exit).exitCode).toBe(0);
  });

  it("moves bulk under credit, and the exit waits for it", async () => {
    const proc = client.spawn(["sh", "-c", "head -c 8000000 /dev/zero >&3; echo done"], { channel: true, window: 65536 });
    let channel = 0;
    let stdout = "";
    for await (const c of proc) {
      if (c.stream === "channel") channel += c.data.length;
      else stdout += c.data.toString();
    }
    expect(channel).toBe(8_000_000);
    expect(stdout).toBe("done\n");
    expect((await proc.exit).exitCode).toBe(0);
  });

  it("does not hold the exit for background children that inherited it", async () => {
    const t0 = Date.now();
    const proc = client.spawn(["sh", "-c", "sleep 5 & echo bye >&3"], { channel: true });
    expect(await drain(proc)).toMatchObject({ channel: "bye\n" });
    expect((await proc.exit).exitCode).toBe(0);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it("credits bytes for a channel the process closed", async () => {
    const proc = client.spawn(["sh", "-c", "exec 3<&-; read go; echo closed"], { channel: true, stdin: true });
    const output = drain(proc);
    // Twice the window: a host waiting for credit that never comes would hang here.
    for (let i = 0; i < 8; i++) await proc.writeChannel(Buffer.alloc(1024 * 1024));
    await proc.write("go\n");
    expect(await output).toMatchObject({ stdout: "closed\n" });
  });

  it("is refused with a terminal, and absent unless asked for", async () => {
    expect(() => client.spawn(["true"], { channel: true, pty: { rows: 24, cols: 80 } })).toThrow(InvalidArgumentError);
    const raw = await rawConnection(agent.socket);
    raw.send(1, { case: "exec", value: { argv: ["true"], channel: true, pty: { rows: 24, cols: 80 } } });
    expect(bodyOf(await raw.next(), "error")).toMatchObject({ kind: 2, message: expect.stringContaining("a channel needs pipes") });
    raw.socket.destroy();
    const plain = client.spawn(["sh", "-c", 'echo "[$MSB_CHANNEL_FD]"; ls /proc/self/fd']);
    await expect(plain.writeChannel("x")).rejects.toBeInstanceOf(InvalidArgumentError);
    const [channelFd] = (await drain(plain)).stdout!.split("\n");
    expect(channelFd).toBe("[]");
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

  // Changing user takes root: the agent is root in a VM, and here only when the tests are.
  it.skipIf(process.getuid?.() !== 0)("runs as another user, and reports a directory that user may not enter", async () => {
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
