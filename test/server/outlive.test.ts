// Sandboxes outlive `msb server`: the server process is SIGKILLed in the middle of a session and a
// new one on the same cache adopts what runs and what is paused, as the real SDKs (e2b 2.51 and
// @e2b/code-interpreter on it, unmodified) and `msb ps` see it; with --stop-on-exit, SIGTERM
// stops everything. The servers are the CLI, as a self-hoster runs them.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, readdirSync } from "node:fs";
import { createServer as netServer } from "node:net";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

import { alive } from "../../src/liveness.js";
import { pausedDir } from "../../src/sandbox/paused.js";
import { Sandbox } from "../../src/sandbox/sandbox.js";
import type { ServerRecord } from "../../src/server/sandboxes.js";

const MSB = fileURLToPath(new URL("../../dist/cli/msb.js", import.meta.url));
const KEY = "outlive-key";
type Interpreter = typeof import("@e2b/code-interpreter");
let ci: Interpreter;
let url: string;
let port: number;
const servers = new Set<ChildProcess>();

async function freePort(): Promise<number> {
  const s = netServer().listen(0, "127.0.0.1");
  await once(s, "listening");
  const p = (s.address() as { port: number }).port;
  s.close();
  return p;
}

// `msb server` on the fixed port; resolves once it listens, with what it said until then.
async function startServer(...args: string[]): Promise<{ proc: ChildProcess; said: () => string }> {
  const proc = spawn(process.execPath, [MSB, "server", "--port", String(port), "--api-key", KEY, ...args], { stdio: ["ignore", "ignore", "pipe"] });
  servers.add(proc);
  proc.once("exit", () => servers.delete(proc));
  let said = "";
  proc.stderr!.setEncoding("utf8").on("data", (d: string) => (said += d));
  await new Promise<void>((resolve, reject) => {
    const check = () => (said.includes("listening on") ? resolve() : undefined);
    proc.stderr!.on("data", check);
    proc.once("exit", (code) => reject(new Error(`msb server exited (${code}): ${said}`)));
  });
  return { proc, said: () => said };
}

async function stopServer(proc: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = once(proc, "exit");
  proc.kill(signal);
  await exited;
}

// The orphan (a VM with no server) the server recorded as sandbox `id`, if any.
const orphanOf = (id: string) => Sandbox.orphans().find((o) => (o.data as ServerRecord | undefined)?.id === id);

beforeAll(async () => {
  port = await freePort();
  url = `http://127.0.0.1:${port}`;
  Object.assign(process.env, { E2B_API_URL: url, E2B_SANDBOX_URL: url, E2B_API_KEY: KEY, E2B_DOMAIN: "localhost" });
  ci = (await import("@e2b/code-interpreter")) as unknown as Interpreter;
});
// A test that failed half-way leaves no server on the shared port for the next.
afterEach(async () => {
  for (const proc of servers) await stopServer(proc, "SIGKILL");
});
afterAll(async () => {
  // Whatever a failed test left running goes too.
  for (const o of Sandbox.orphans()) if ((o.data as ServerRecord | undefined)?.server === 1) Sandbox.discard(o);
});

describe("sandboxes outlive msb server", () => {
  it("a SIGKILLed server's sandbox and its fork go on under the next: variable, code context, file and background process kept, listed once, nothing left after", async () => {
    const first = await startServer();
    const sb = await ci.Sandbox.create({ metadata: { who: "outlive" }, timeoutMs: 600_000 });
    await sb.runCode("x = 41");
    // A code context of its own, which the pause, the fork and the next server all carry.
    const ctx = await sb.createCodeContext();
    await sb.runCode("c = 9", { context: ctx });
    await sb.files.write("/root/kept.txt", "kept across servers");
    const ticker = await sb.commands.run("while true; do echo tick >> /tmp/ticks; sleep 0.2; done", { background: true });
    // A pause and resume first: the resumed VM is the one that must outlive the server.
    await sb.pause();
    await ci.Sandbox.connect(sb.sandboxId, { timeoutMs: 600_000 });
    const infoBefore = await sb.getInfo();
    expect((await sb.runCode("c", { context: ctx })).text).toBe("9");
    // A fork outlives the server as well, its own state kept.
    const [fork] = (await sb.fork({ timeoutMs: 600_000 })) as InstanceType<Interpreter["Sandbox"]>[];
    await fork!.runCode("x = 100");
    expect((await fork!.runCode("c + 1", { context: ctx })).text).toBe("10");

    await stopServer(first.proc, "SIGKILL");
    const orphan = orphanOf(sb.sandboxId);
    expect(orphan, "the VM runs on with no server").toBeDefined();
    const { helper, dir } = orphan!.state.machine.vm;
    expect(alive(helper)).toBe(true);

    const second = await startServer();
    expect(second.said()).toMatch(new RegExp(`adopted 2 sandboxes running: (${sb.sandboxId}, ${fork!.sandboxId}|${fork!.sandboxId}, ${sb.sandboxId})\n`));
    expect((await (await ci.Sandbox.connect(fork!.sandboxId)).runCode("x + 1")).text).toBe("101");
    await ci.Sandbox.kill(fork!.sandboxId);
    const fds = () => readdirSync(`/proc/${second.proc.pid}/fd`).length;
    // Metadata and timeout were kept (connect sets a timeout of its own: asked before it).
    const info = await ci.Sandbox.getInfo(sb.sandboxId);
    expect(info.metadata).toEqual({ who: "outlive" });
    expect(info.endAt.getTime()).toBe(infoBefore.endAt.getTime());
    const again = await ci.Sandbox.connect(sb.sandboxId);
    expect((await again.runCode("x + 1")).text).toBe("42");
    expect((await again.runCode("c * 2", { context: ctx })).text).toBe("18");
    expect((await again.listCodeContexts()).map((c: { id: string }) => c.id)).toEqual([ctx.id]);
    expect(await again.files.read("/root/kept.txt")).toBe("kept across servers");
    // The background process never stopped, and the new server knows it by its pid.
    const count = async () => Number((await again.commands.run("wc -l < /tmp/ticks")).stdout.trim());
    const n1 = await count();
    await new Promise((r) => setTimeout(r, 1000));
    expect(await count()).toBeGreaterThan(n1);
    expect((await again.commands.list()).map((p: { pid: number }) => p.pid)).toContain(ticker.pid);

    const ps = await promisify(execFile)(process.execPath, [MSB, "ps", "--server", url, "--api-key", KEY]);
    expect(ps.stdout.split("\n").filter((l) => l.trim().startsWith(sb.sandboxId))).toHaveLength(1);

    const fdsAdopted = fds();
    await again.kill();
    expect(alive(helper)).toBe(false);
    expect(existsSync(dir)).toBe(false);
    // The adopted VM's agent, monitor and helper sockets and its egress proxy were let go (the
    // kill's own HTTP connection may be a new one).
    expect(fds()).toBeLessThanOrEqual(fdsAdopted - 3);
    await stopServer(second.proc, "SIGTERM");
    expect(orphanOf(sb.sandboxId)).toBeUndefined();
  }, 300_000);

  it("paused sandboxes and secrets wait for the next server, after a SIGKILL and after a close; --stop-on-exit removes the paused ones", async () => {
    const first = await startServer();
    const mem = await ci.Sandbox.create({ metadata: { who: "paused" }, timeoutMs: 600_000 });
    await mem.runCode("p = 7");
    const pctx = await mem.createCodeContext();
    await mem.runCode("q = 3", { context: pctx });
    await mem.files.write("/root/p.txt", "paused across servers");
    const ticker = await mem.commands.run("while true; do echo tick >> /tmp/ticks; sleep 0.2; done", { background: true });
    await mem.pause();
    const files = await ci.Sandbox.create({ timeoutMs: 600_000 });
    await files.files.write("/root/f.txt", "files only");
    await files.pause({ keepMemory: false });
    const savedDir = pausedDir(`srv-${mem.sandboxId}`);
    expect(existsSync(savedDir)).toBe(true);
    // The key's secrets are the server's state too (kept in the cache: one a failed run left goes first).
    await ci.Secret.destroy("kept-secret");
    await ci.Secret.create("kept-secret", "v1", { metadata: { for: "restart" } });
    await ci.Secret.update("kept-secret", "v2");

    await stopServer(first.proc, "SIGKILL");
    const second = await startServer();
    expect(await ci.Secret.getInfo("kept-secret")).toMatchObject({ name: "kept-secret", version: 2, metadata: { for: "restart" } });
    expect(await ci.Secret.destroy("kept-secret")).toBe(true);
    expect(second.said()).toMatch(new RegExp(`adopted 2 sandboxes paused: (${mem.sandboxId}, ${files.sandboxId}|${files.sandboxId}, ${mem.sandboxId})`));
    const info = await ci.Sandbox.getInfo(mem.sandboxId);
    expect(info.state).toBe("paused");
    expect(info.metadata).toEqual({ who: "paused" });
    // The old token still opens it: connect resumes it with its memory and kept process.
    const back = await ci.Sandbox.connect(mem.sandboxId, { timeoutMs: 600_000 });
    expect((await back.runCode("p + 1")).text).toBe("8");
    expect((await back.runCode("q", { context: pctx })).text).toBe("3");
    expect(await back.files.read("/root/p.txt")).toBe("paused across servers");
    expect((await back.commands.list()).map((p: { pid: number }) => p.pid)).toContain(ticker.pid);
    const count = async () => Number((await back.commands.run("wc -l < /tmp/ticks")).stdout.trim());
    const n1 = await count();
    await new Promise((r) => setTimeout(r, 1000));
    expect(await count()).toBeGreaterThan(n1);
    expect(existsSync(savedDir)).toBe(false); // resumed: the saved state went
    await back.kill();

    // A close with outlive lets the paused one go to the next server as well.
    await stopServer(second.proc, "SIGTERM");
    expect(second.said()).toContain("1 sandbox left for the next msb server on this cache");
    const third = await startServer("--stop-on-exit");
    expect(third.said()).toContain(`adopted 1 sandbox paused: ${files.sandboxId}`);
    expect((await ci.Sandbox.getInfo(files.sandboxId)).state).toBe("paused");
    const filesDir = pausedDir(`srv-${files.sandboxId}`);
    expect(existsSync(filesDir)).toBe(true);
    // --stop-on-exit: what it adopted paused goes at its end, saved state and record.
    await stopServer(third.proc, "SIGTERM");
    expect(existsSync(filesDir)).toBe(false);
    const fourth = await startServer();
    expect(fourth.said()).not.toContain("adopted");
    await stopServer(fourth.proc, "SIGTERM");
  }, 300_000);

  it("an expired sandbox is stopped at adoption; with --stop-on-exit SIGTERM stops every sandbox", async () => {
    const first = await startServer();
    const short = await ci.Sandbox.create({ timeoutMs: 8_000 });
    await stopServer(first.proc, "SIGTERM"); // without --stop-on-exit: it runs on
    const left = orphanOf(short.sandboxId);
    expect(left).toBeDefined();
    await new Promise((r) => setTimeout(r, 9_000));
    const second = await startServer();
    expect(second.said()).toMatch(new RegExp(`stopped sandbox ${short.sandboxId}: its timeout passed`));
    expect(alive(left!.state.machine.vm.helper)).toBe(false);
    expect(existsSync(left!.state.machine.vm.dir)).toBe(false);
    await stopServer(second.proc, "SIGTERM");

    const third = await startServer("--stop-on-exit");
    const sb = await ci.Sandbox.create();
    await sb.runCode("y = 1");
    const ps = await promisify(execFile)(process.execPath, [MSB, "ps", "--server", url, "--api-key", KEY]);
    const vmm = Number(new RegExp(`^\\s*${sb.sandboxId} .* pid (\\d+)`, "m").exec(ps.stdout)?.[1]);
    expect(vmm).toBeGreaterThan(0);
    expect(alive({ pid: vmm })).toBe(true);
    await stopServer(third.proc, "SIGTERM");
    expect(third.said()).toContain("stopping every sandbox");
    expect(alive({ pid: vmm })).toBe(false);
    expect(orphanOf(sb.sandboxId)).toBeUndefined();
    expect(Sandbox.orphans().filter((o) => (o.data as ServerRecord | undefined)?.server === 1)).toEqual([]);
  }, 300_000);
});
