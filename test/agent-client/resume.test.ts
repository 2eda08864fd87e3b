// Suspend and Resume through the real agent binary: a quiet stream for saving a VM, and a restored
// copy that kills what it does not keep and hands kept processes to a new host.

import { once } from "node:events";
import { existsSync, writeFileSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";

import { AgentClient } from "../../src/agent-client/client.js";
import type { ExecProcess } from "../../src/agent-client/process.js";
import { FrameDecoder, type GuestFrame } from "../../src/agent-client/protocol.js";
import { AgentError, InvalidArgumentError } from "../../src/errors.js";
import { bodyOf, type RunningAgent, rawConnection, startAgent } from "./helpers.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let agent: RunningAgent;
const clients: AgentClient[] = [];

async function freshAgent(): Promise<AgentClient> {
  agent = await startAgent();
  return connect();
}

async function connect(): Promise<AgentClient> {
  const client = await agent.connect();
  clients.push(client);
  return client;
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await agent?.stop();
});

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  for (const t0 = Date.now(); !cond(); await sleep(10)) if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
}

/** Waits (2 s at most) for guest process `pid` to be gone, asking through `client`. */
async function gone(client: AgentClient, pid: number): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    if ((await client.exec(["sh", "-c", `kill -0 ${pid} 2>/dev/null`])).exitCode !== 0) return true;
    await sleep(20);
  }
  return false;
}

/** Counts a process's output chunks as they arrive. */
function count(proc: ExecProcess): { chunks: number } {
  const seen = { chunks: 0 };
  void (async () => {
    for await (const _chunk of proc) seen.chunks++;
  })().catch(() => {});
  return seen;
}

/** A process that answers each stdin line with "got LINE". */
const ECHO_LINES = ["sh", "-c", 'while read l; do echo "got $l"; done'];

async function roundTrip(proc: ExecProcess, line: string): Promise<string> {
  await proc.write(`${line}\n`);
  const r = await proc[Symbol.asyncIterator]().next();
  return r.done ? "" : r.value.data.toString();
}

const raw = rawConnection;

/** Reads past its first Hello until `body` arrives; the frames before it. */
async function readUntil(c: Awaited<ReturnType<typeof raw>>, body: string): Promise<GuestFrame[]> {
  const before: GuestFrame[] = [];
  for (;;) {
    const f = await c.next();
    if (!f) throw new Error(`no ${body} frame`);
    if (f.body.case === body) return before;
    before.push(f);
  }
}

/**
 * A second connection to the agent, as a restored VM's port looks to its new host: the agent's
 * greeting on connect went to "the host that saved it", so it is read off here.
 */
async function restoredPort(): Promise<Socket> {
  const socket = createConnection(agent.socket);
  await once(socket, "connect");
  const [greeting] = (await once(socket, "data")) as [Buffer];
  const f = [...new FrameDecoder().push(greeting)];
  expect(f.map((x) => x.body.case)).toEqual(["hello"]);
  expect(greeting.readUInt32BE(0) + 4).toBe(greeting.length);
  return socket;
}

describe("suspend", () => {
  it("stops a chatty process's output until resume; the same generation carries on", async () => {
    const client = await freshAgent();
    const proc = client.spawn(["yes"]);
    const seen = count(proc);
    await until("output", () => seen.chunks > 10);

    await client.suspend();
    await sleep(50); // what arrived before Suspended leaves the client's own queue
    const atSuspend = seen.chunks;
    const held = client.exec(["echo", "held"]);
    let settled = false;
    void held.finally(() => (settled = true));
    await sleep(300);
    expect(seen.chunks).toBe(atSuspend);
    expect(settled).toBe(false);

    const hello = await client.resume({ generation: client.hello.generation });
    expect(hello.generation).toBe(0);
    expect(client.hello).toBe(hello);
    expect((await held).stdout.toString()).toBe("held\n");
    await until("output after resume", () => seen.chunks > atSuspend + 10);
    proc.kill();
    expect((await proc.exit).signal).toBe("SIGKILL");
  });

  it("writes nothing after Suspended, answers a second Suspend, and a Resume with a Hello", async () => {
    await freshAgent();
    const c = await raw(agent.socket);
    c.send(1, { case: "exec", value: { argv: ["/bin/yes"] } });
    expect((await c.next())?.body.case).toBe("started");
    expect((await c.next())?.body.case).toBe("output");
    c.send(0, { case: "suspend", value: {} });
    const before = await readUntil(c, "suspended");
    const credit = before.reduce((n, f) => n + (f.body.case === "output" ? f.body.value.data.length : 0), 0) + 65536;
    c.send(1, { case: "credit", value: { bytes: credit } }); // read, but produces nothing now
    expect(await c.next(300)).toBeUndefined();
    c.send(0, { case: "suspend", value: {} });
    expect((await c.next())?.body.case).toBe("suspended");
    c.send(2, { case: "stat", value: { path: "/" } }); // answered, but held back
    expect(await c.next(300)).toBeUndefined();
    c.send(0, { case: "resume", value: { generation: 0n } });
    // The same generation: the conversation goes on, what was held back first.
    expect(await c.next()).toMatchObject({ session: 2, body: { case: "stat" } });
    expect((await c.next())?.body).toMatchObject({ case: "hello", value: { generation: 0n } });
    expect((await c.next())?.body.case).toBe("output");
    c.socket.destroy();
  });

  it("lets Shutdown through while suspended", async () => {
    const client = await freshAgent();
    await client.suspend();
    const exited = once(agent.proc, "exit");
    await client.shutdown();
    await exited;
  });

  it("belongs on session 0, as does Resume", async () => {
    await freshAgent();
    const c = await raw(agent.socket);
    c.send(4, { case: "suspend", value: {} });
    expect(await c.next()).toMatchObject({ session: 4, body: { case: "error", value: { kind: 1 } } });
    c.send(4, { case: "resume", value: { generation: 9n } });
    expect(await c.next()).toMatchObject({ session: 4, body: { case: "error", value: { kind: 1 } } });
    expect((await connect()).hello.generation).toBe(0);
    c.socket.destroy();
  });
});

describe("resume with a new generation", () => {
  it("kills every session it does not keep, without a word", async () => {
    await freshAgent();
    const c = await raw(agent.socket);
    c.send(3, { case: "exec", value: { argv: ["/bin/sleep", "60"] } });
    const pid = bodyOf(await c.next(), "started").pid;
    c.send(0, { case: "suspend", value: {} });
    expect((await c.next())?.body.case).toBe("suspended");
    c.send(4, { case: "stat", value: { path: "/" } }); // answered, held back, and dropped: the copy's host did not ask
    await sleep(100);
    c.send(0, { case: "resume", value: { generation: 5n, entropy: Buffer.alloc(64, 7) } });
    const hello = await c.next();
    expect(hello?.body.case).toBe("hello");
    expect(hello!.body).toMatchObject({ value: { generation: 5n } });
    expect(await c.next(300)).toBeUndefined();
    const other = await connect();
    expect(other.hello.generation).toBe(5);
    expect(await gone(other, pid)).toBe(true);
    expect(await c.next(100)).toBeUndefined();
    c.socket.destroy();
  });

  it("ends this client's sessions; a kept process is adopted and carries on", async () => {
    const client = await freshAgent();
    const kept = client.spawn(ECHO_LINES, { stdin: true });
    const keptPid = await kept.pid;
    expect(await roundTrip(kept, "a")).toBe("got a\n");
    const victim = client.spawn(["sleep", "60"]);
    const victimPid = await victim.pid;
    // Done with its pipes at once (the agent sees them close before the Suspend); it exits while
    // the agent is suspended, and its Exit waits for the Resume.
    const quiet = client.spawn(["sh", "-c", "exec >/dev/null 2>&1; sleep 0.5; exit 3"]);
    const quietPid = await quiet.pid;
    await sleep(200);

    await client.suspend();
    const queued = client.exec(["echo", "queued"]); // sent after the Hello: it runs in the copy
    await sleep(600);
    const hello = await client.resume({ generation: 7, keep: [kept.session, quiet.session] });
    expect(hello.generation).toBe(7);
    for (const p of [victim, kept, quiet]) {
      const err = await p.exit.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentError);
      expect((err as AgentError).kind).toBe("RESTORED");
    }
    expect((await queued).stdout.toString()).toBe("queued\n");

    const adopted = client.adopt(kept.session, keptPid, { stdin: true });
    expect(await adopted.pid).toBe(keptPid);
    expect(await roundTrip(adopted, "b")).toBe("got b\n");
    expect(() => client.adopt(kept.session, keptPid)).toThrow(InvalidArgumentError);
    expect(await gone(client, victimPid)).toBe(true);
    await adopted.end();
    expect((await adopted.exit).exitCode).toBe(0);
    expect((await client.adopt(quiet.session, quietPid).exit).exitCode).toBe(3);
  });

  it("gives a kept process the stdin already in the guest, and its adopter a fresh window", async () => {
    const client = await freshAgent();
    const MiB = 1024 * 1024;
    const kept = client.spawn(["sh", "-c", "sleep 1; wc -c"], { stdin: true });
    const pid = await kept.pid;
    await kept.write(Buffer.alloc(3 * MiB)); // mostly queued in the agent: the pipe is not read yet
    await client.suspend();
    await client.resume({ generation: 8, keep: [kept.session] });
    const adopted = client.adopt(kept.session, pid, { stdin: true });
    await adopted.write(Buffer.alloc(5 * MiB)); // more than the window left by the stale bytes
    await adopted.end();
    const out: Buffer[] = [];
    for await (const chunk of adopted) out.push(chunk.data);
    expect(Buffer.concat(out).toString().trim()).toBe(String(8 * MiB));
    expect((await adopted.exit).exitCode).toBe(0);
  });

  it("opens a new connection host-first (fromRestoredStream), which takes over what was kept", async () => {
    const old = await freshAgent();
    const kept = old.spawn(ECHO_LINES, { stdin: true });
    const keptPid = await kept.pid;
    expect(await roundTrip(kept, "a")).toBe("got a\n");
    const victimPid = await old.spawn(["sleep", "60"]).pid;
    // Prints once the test lets it, then says so by removing the file.
    const go = path.join(agent.dir, "go");
    const late = old.spawn(["sh", "-c", `while [ ! -e ${go} ]; do sleep 0.02; done; echo late; rm ${go}`]);
    const latePid = await late.pid;
    await old.suspend();

    const keep = [kept.session, late.session];
    const client = await AgentClient.fromRestoredStream(await restoredPort(), {
      generation: 11,
      keep,
      hostname: "copy",
      bootId: "0b5e6f43-9c1d-4a7e-8f2b-3d4c5e6f7a8b",
    });
    clients.push(client);
    expect(client.hello.generation).toBe(11);
    expect(client.hello.pid).toBe(agent.proc.pid);
    // What a kept process sends before it is adopted waits for its adopter.
    writeFileSync(go, "");
    await until("the late output", () => !existsSync(go));
    await sleep(100);
    const adoptedLate = client.adopt(late.session, latePid);
    expect((await adoptedLate[Symbol.asyncIterator]().next()).value?.data.toString()).toBe("late\n");
    expect((await adoptedLate.exit).exitCode).toBe(0);
    // The kept session's id stays its own: new requests take other ids.
    expect((await client.exec(["echo", "new host"])).stdout.toString()).toBe("new host\n");
    const adopted = client.adopt(kept.session, keptPid, { stdin: true });
    expect(await roundTrip(adopted, "c")).toBe("got c\n");
    expect(await gone(client, victimPid)).toBe(true);
    await adopted.end();
    expect((await adopted.exit).exitCode).toBe(0);
  });
});

describe("a Resume out of bounds", () => {
  it("is refused with BAD_REQUEST, even while suspended, and changes nothing", async () => {
    const client = await freshAgent();
    const pid = await client.spawn(["sleep", "60"]).pid;
    await client.suspend();
    const bad = [
      { generation: 3, entropy: new Uint8Array(513) },
      { generation: 3, hostname: "h".repeat(65) },
      { generation: 3, keep: Array.from({ length: 4097 }, (_, i) => i + 1) },
    ];
    for (const r of bad) {
      const err = await client.resume(r).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentError);
      expect((err as AgentError).kind).toBe("BAD_REQUEST");
      expect((err as Error).message).toContain("out of bounds");
    }
    const other = await connect();
    expect(other.hello.generation).toBe(0);
    expect((await other.exec(["sh", "-c", `kill -0 ${pid}`])).exitCode).toBe(0);
    expect((await client.resume({ generation: 0 })).generation).toBe(0);
    expect((await client.exec(["echo", "on"])).stdout.toString()).toBe("on\n");

    const refused = await AgentClient.fromRestoredStream(await restoredPort(), { generation: 4, entropy: new Uint8Array(600) }).catch((e: unknown) => e);
    expect((refused as AgentError).kind).toBe("BAD_REQUEST");
    expect((await connect()).hello.generation).toBe(0);
  });

  it("in form is refused by the client before anything is sent", async () => {
    const client = await freshAgent();
    for (const r of [
      { generation: -1 },
      { generation: 1.5 },
      { generation: 1, bootId: "not-a-uuid" },
      { generation: 1, keep: [0] },
      { generation: 1, unixTimeNs: 2n ** 63n },
    ]) {
      await expect(client.resume(r)).rejects.toBeInstanceOf(InvalidArgumentError);
    }
    expect((await client.exec(["true"])).exitCode).toBe(0);
  });
});
