// msb server's forks, snapshots, files-only pauses and lifecycle against the real E2B SDKs,
// unmodified (e2b 2.51, and @e2b/code-interpreter on it for Python state), as a user checks them.
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { createServer, type RunningServer } from "../../src/index.js";
import { pausedDir } from "../../src/sandbox/paused.js";

let server: RunningServer;
const KEY = "e2b-fork-key";
const OTHER = "e2b-fork-other";

type Sdk = typeof import("e2b-251");
type Interpreter = typeof import("@e2b/code-interpreter");
let e2b: Sdk;
let ci: Interpreter;

beforeAll(async () => {
  // Four at once: a parent and three forks fill it, so a fourth fork meets the limit.
  server = await createServer({ port: 0, apiKeys: [KEY, OTHER], maxSandboxes: 4 });
  Object.assign(process.env, { E2B_API_URL: server.url, E2B_SANDBOX_URL: server.url, E2B_API_KEY: KEY, E2B_DOMAIN: "localhost" });
  e2b = (await import("e2b-251")) as unknown as Sdk;
  ci = (await import("@e2b/code-interpreter")) as unknown as Interpreter;
});
// Snapshots outlive the server: a test that fails midway still deletes the ones it took.
const taken: string[] = [];
afterAll(async () => {
  for (const id of taken) await e2b?.Sandbox.deleteSnapshot(id).catch(() => {});
  await server?.close();
});

describe("fork", () => {
  it("copies Python state and files into each fork, each its own sandbox from then on; a fork past the limit reports its error", async () => {
    const parent = await ci.Sandbox.create({ metadata: { role: "parent" } });
    try {
      expect((await parent.getInfo()).lifecycle).toEqual({ onTimeout: "kill", autoResume: false });
      await parent.runCode("x = 41");
      await parent.files.write("/root/f.txt", "from the parent");
      const results = await parent.fork({ count: 4, timeoutMs: 120_000 });
      expect(results).toHaveLength(4);
      const forks = results.slice(0, 3) as InstanceType<Interpreter["Sandbox"]>[];
      try {
        // The server runs four: the parent and three forks; the fourth fork alone failed.
        expect(results[3]).toBeInstanceOf(Error);
        expect((results[3] as Error).message).toMatch(/limit of 4 sandboxes/);
        for (const f of forks) expect(f).toBeInstanceOf(ci.Sandbox);
        expect(new Set([parent.sandboxId, ...forks.map((f) => f.sandboxId)]).size).toBe(4);
        for (const [i, f] of forks.entries()) {
          expect((await f.runCode("x + 1")).text).toBe("42");
          expect(await f.files.read("/root/f.txt")).toBe("from the parent");
          await f.runCode(`x = ${i}`);
          await f.files.write("/root/f.txt", `fork ${i}`);
          const info = await f.getInfo();
          expect(info.metadata).toEqual({ role: "parent" });
          expect(info.endAt.getTime()).toBeGreaterThan(Date.now() + 60_000);
        }
        for (const [i, f] of forks.entries()) {
          expect((await f.runCode("x")).text).toBe(String(i));
          expect(await f.files.read("/root/f.txt")).toBe(`fork ${i}`);
        }
        expect((await parent.runCode("x")).text).toBe("41");
        expect(await parent.files.read("/root/f.txt")).toBe("from the parent");
        // Each fork has its own access token: one fork's does not open another.
        const token = async (id: string) =>
          ((await (await fetch(`${server.url}/sandboxes/${id}`, { headers: { "x-api-key": KEY } })).json()) as { envdAccessToken: string }).envdAccessToken;
        const res = await fetch(`${server.url}/health`, {
          headers: { "e2b-sandbox-id": forks[1]!.sandboxId, "x-access-token": await token(forks[0]!.sandboxId) },
        });
        expect(res.status).toBe(401);
      } finally {
        await Promise.all(forks.map((f) => f.kill()));
      }
      // Another key's fork of it finds no such sandbox; a bad count is refused.
      await expect(e2b.Sandbox.fork(parent.sandboxId, { apiKey: OTHER })).rejects.toBeInstanceOf(e2b.SandboxNotFoundError);
      await expect(parent.fork({ count: 0 })).rejects.toThrow(/count 0 is invalid/);
    } finally {
      await parent.kill();
    }
  }, 600_000);

  it("carries an idle code context into the fork; one running a cell comes as a fresh interpreter in its cwd", async () => {
    const parent = await ci.Sandbox.create({ timeoutMs: 300_000 });
    try {
      const idle = await parent.createCodeContext();
      await parent.runCode("kept = 'idle context'", { context: idle });
      const busy = await parent.createCodeContext({ cwd: "/tmp/work" });
      await parent.runCode("lost = 1", { context: busy });
      const cell = parent.runCode("import time; time.sleep(6)", { context: busy, timeoutMs: 60_000 });
      await new Promise((r) => setTimeout(r, 1000)); // the cell is under way
      const [fork] = (await parent.fork()) as InstanceType<Interpreter["Sandbox"]>[];
      try {
        expect((await fork!.runCode("kept", { context: idle })).text).toBe("'idle context'");
        expect((await fork!.runCode("'lost' in globals()", { context: busy })).text).toBe("False");
        expect((await fork!.runCode("import os; os.getcwd()", { context: busy })).text).toBe("'/tmp/work'");
        expect((await fork!.listCodeContexts()).map((c: { id: string }) => c.id).sort()).toEqual([idle.id, busy.id].sort());
      } finally {
        await fork!.kill();
      }
      await cell;
      expect((await parent.runCode("lost", { context: busy })).text).toBe("1"); // the parent's own went on
    } finally {
      await parent.kill();
    }
  }, 300_000);
});

describe("snapshots", () => {
  it("starts sandboxes from a snapshot twice, in this server and a new one; lists and deletes it for its key only", async () => {
    const source = await ci.Sandbox.create();
    let snapshotId: string;
    try {
      await source.runCode("v = 'snapshotted'");
      const ctx = await source.createCodeContext();
      await source.runCode("w = 'in a context'", { context: ctx });
      await source.files.write("/root/s.txt", "in the snapshot");
      ({ snapshotId } = await source.createSnapshot());
      taken.push(snapshotId);
      // The source runs on, unchanged by the snapshot, and what it does next is not in it.
      await source.runCode("v = 'later'");
      // A named one is found by its name; a name that is no name is refused.
      const name = `named-${process.pid}`;
      const named = await source.createSnapshot({ name });
      taken.push(named.snapshotId);
      expect(named.snapshotId).toBe(`${name}:default`);
      await expect(source.createSnapshot({ name: "no name!" })).rejects.toThrow(/snapshot name "no name!" is invalid/);
      const ids = async (opts: object) => (await e2b.Sandbox.listSnapshots(opts).nextItems()).map((s) => s.snapshotId);
      expect(await ids({ name })).toEqual([named.snapshotId]);
      expect((await ids({ sandboxId: source.sandboxId })).sort()).toEqual([snapshotId, named.snapshotId].sort());
      expect(await e2b.Sandbox.deleteSnapshot(name)).toBe(true);
      expect(await ids({ sandboxId: source.sandboxId })).toEqual([snapshotId]);
    } finally {
      await source.kill();
    }
    await expect(e2b.Sandbox.create(snapshotId, { envs: { A: "1" } })).rejects.toThrow(/is a snapshot, whose environment and network were saved with it/);
    const fromIt = await ci.Sandbox.create(snapshotId);
    try {
      expect((await fromIt.runCode("v")).text).toBe("'snapshotted'");
      // Its code contexts came along, by their ids.
      const [ctx] = await fromIt.listCodeContexts();
      expect((await fromIt.runCode("w", { context: ctx! })).text).toBe("'in a context'");
      expect(await fromIt.files.read("/root/s.txt")).toBe("in the snapshot");
    } finally {
      await fromIt.kill();
    }
    // Another server (as after a restart) finds it in the cache, and starts from it again.
    const again = await createServer({ port: 0, apiKeys: [KEY, OTHER], maxSandboxes: 1 });
    try {
      const there = { apiUrl: again.url, sandboxUrl: again.url };
      // listSnapshots' options type leaves apiUrl out; the SDK passes it on to the connection all the same.
      expect((await e2b.Sandbox.listSnapshots(there as object).nextItems()).map((s) => s.snapshotId)).toContain(snapshotId);
      const second = await ci.Sandbox.create(snapshotId, there);
      try {
        expect((await second.runCode("v")).text).toBe("'snapshotted'");
      } finally {
        await second.kill();
      }
    } finally {
      await again.close();
    }
    // Another key neither sees nor uses it, nor deletes it.
    expect(await e2b.Sandbox.listSnapshots({ apiKey: OTHER }).nextItems()).toEqual([]);
    await expect(e2b.Sandbox.create(snapshotId, { apiKey: OTHER })).rejects.toThrow(/not found/);
    expect(await e2b.Sandbox.deleteSnapshot(snapshotId, { apiKey: OTHER })).toBe(false);
    expect(await e2b.Sandbox.deleteSnapshot(snapshotId)).toBe(true);
    expect((await e2b.Sandbox.listSnapshots().nextItems()).map((s) => s.snapshotId)).not.toContain(snapshotId);
    await expect(e2b.Sandbox.create(snapshotId)).rejects.toThrow(/snapshot "[^"]+" not found: it was deleted/);
    expect(await e2b.Sandbox.deleteSnapshot(snapshotId)).toBe(false);
  }, 600_000);
});

describe("pause({ keepMemory: false })", () => {
  it("keeps the files only: connect boots the sandbox afresh over them", async () => {
    const sb = await ci.Sandbox.create();
    try {
      await sb.runCode("v = 'in memory'");
      await sb.files.write("/root/k.txt", "on disk");
      await sb.files.write("/tmp/t.txt", "in /tmp");
      expect(await sb.pause({ keepMemory: false })).toBe(true);
      expect((await sb.getInfo()).state).toBe("paused");
      expect(existsSync(`${pausedDir(`srv-${sb.sandboxId}`)}/state`)).toBe(false); // no memory was kept
      // Paused, it refuses requests until connect.
      await expect(sb.files.read("/root/k.txt")).rejects.toThrow(/is paused: connect to it first/);
      const back = await ci.Sandbox.connect(sb.sandboxId);
      expect(await back.files.read("/root/k.txt")).toBe("on disk");
      expect(await back.files.read("/tmp/t.txt")).toBe("in /tmp");
      expect((await back.runCode("'v' in globals()")).text).toBe("False");
      expect((await back.runCode("v = 2; v")).text).toBe("2");
    } finally {
      await sb.kill();
    }
  }, 300_000);
});

describe("lifecycle", () => {
  it("pauses a sandbox when its timeout passes, and traffic to it resumes it (autoResume)", async () => {
    const sb = await e2b.Sandbox.create("base", { timeoutMs: 8_000, lifecycle: { onTimeout: "pause", autoResume: true } });
    try {
      expect((await sb.getInfo()).lifecycle).toEqual({ onTimeout: "pause", autoResume: true });
      await sb.files.write("/root/l.txt", "kept through the pause");
      await sb.commands.run("python3 -m http.server 8000 -d /root", { background: true });
      const http = await import("node:http");
      const viaHost = () =>
        new Promise<string>((resolve, reject) =>
          http
            .get({ host: "127.0.0.1", port: server.port, path: "/l.txt", headers: { host: sb.getHost(8000) } }, (res) => {
              let body = "";
              res.on("data", (c: Buffer) => (body += c));
              res.on("end", () => resolve(`${res.statusCode} ${body}`));
            })
            .on("error", reject),
        );
      await expect.poll(viaHost, { timeout: 20_000, interval: 250 }).toBe("200 kept through the pause");
      await expect.poll(async () => (await sb.getInfo()).state, { timeout: 60_000, interval: 500 }).toBe("paused");
      expect(existsSync(`${pausedDir(`srv-${sb.sandboxId}`)}/state`)).toBe(true);
      // Its memory holds its files too: a reboot from its files alone is refused, and it stays paused.
      await expect(e2b.Sandbox.connect(sb.sandboxId, { onResume: "reboot" })).rejects.toThrow(/cannot boot from its files alone/);
      expect((await sb.getInfo()).state).toBe("paused");
      // Traffic to its getHost URL resumes it rather than being refused, and its server is still there.
      expect(await viaHost()).toBe("200 kept through the pause");
      expect((await sb.getInfo()).state).toBe("running");
      expect(await sb.files.read("/root/l.txt")).toBe("kept through the pause");
      // Paused again, a data-plane request resumes it too.
      await sb.pause();
      expect(await sb.files.read("/root/l.txt")).toBe("kept through the pause");
      expect((await sb.getInfo()).state).toBe("running");
      expect((await sb.commands.run("echo up")).stdout).toBe("up\n");
    } finally {
      await sb.kill();
    }
    // The SDK refuses autoResume without a pause on timeout itself; the server does too.
    const res = await fetch(`${server.url}/v2/sandboxes`, {
      method: "POST",
      headers: { "x-api-key": KEY, "content-type": "application/json" },
      body: JSON.stringify({ templateID: "base", autoResume: { enabled: true } }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { message: string }).message).toMatch(/autoResume needs a sandbox that pauses on its timeout/);
  }, 300_000);
});

describe("paused sandboxes and the server's limits", () => {
  it("hold no running room but count against maxPaused; a resume needs room; a paused one's timeout is refused", async () => {
    const small = await createServer({ port: 0, apiKeys: [KEY], maxSandboxes: 1, maxPaused: 1 });
    const opts = { apiKey: KEY, apiUrl: small.url, sandboxUrl: small.url, domain: "localhost" };
    try {
      const a = await e2b.Sandbox.create("local:busybox", opts);
      await a.files.write("/root/a", "a");
      await a.pause();
      // Paused, it takes no room: another runs in the server's one place.
      const b = await e2b.Sandbox.create("local:busybox", opts);
      await expect(e2b.Sandbox.connect(a.sandboxId, opts)).rejects.toThrow(/limit of 1 sandboxes/);
      await expect(b.pause()).rejects.toThrow(/limit of 1 paused sandboxes/);
      await expect(a.setTimeout(60_000)).rejects.toThrow(/is paused: connect to it/);
      const connect = await fetch(`${small.url}/sandboxes/${a.sandboxId}/connect`, {
        method: "POST",
        headers: { "x-api-key": KEY, "content-type": "application/json" },
        body: JSON.stringify({ timeot: 60 }),
      });
      expect(connect.status).toBe(400);
      expect(((await connect.json()) as { message: string }).message).toMatch(/"timeot".*"timeout"/);
      await b.kill();
      const again = await e2b.Sandbox.connect(a.sandboxId, opts);
      expect(await again.files.read("/root/a")).toBe("a");
    } finally {
      await small.close();
    }
  }, 300_000);
});
