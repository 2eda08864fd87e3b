// Linger through the real agent binary: a host that goes away without a word (msb server stopped
// or crashed) leaves its sessions waiting, and the next host's Resume takes the ones it names.

import { afterEach, describe, expect, it } from "vitest";

import type { GuestFrame } from "../../src/agent-client/protocol.js";
import { bodyOf, groupGone, type RawConnection, type RunningAgent, rawConnection, startAgent } from "./helpers.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let agent: RunningAgent;
const conns: RawConnection[] = [];

async function connect(): Promise<RawConnection> {
  const c = await rawConnection(agent.socket);
  conns.push(c);
  return c;
}

afterEach(async () => {
  for (const c of conns.splice(0)) c.socket.destroy();
  await agent?.stop();
});

/** Prints 0, 1, 2, ... one line every 50 ms. */
const COUNTER = ["/bin/sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done"];

/** Starts `argv` on `session`; its pid. */
async function start(c: RawConnection, session: number, argv: string[], openStdin = false): Promise<number> {
  c.send(session, { case: "exec", value: { argv, openStdin } });
  const f = await c.next();
  expect(f?.session).toBe(session);
  return bodyOf(f, "started").pid;
}

/** The numbers printed in the Output frames among `frames` (of session 1). */
function numbers(frames: GuestFrame[]): number[] {
  const text = frames
    .filter((f) => f.session === 1 && f.body.case === "output")
    .map((f) => Buffer.from(bodyOf(f, "output").data).toString())
    .join("");
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map(Number);
}

/** Frames until one of session `session` of kind `kind` arrives (inclusive). */
async function readUntil(c: RawConnection, session: number, kind: string, ms = 5000): Promise<GuestFrame[]> {
  const frames: GuestFrame[] = [];
  const deadline = Date.now() + ms;
  for (;;) {
    const f = await c.next(Math.max(1, deadline - Date.now()));
    if (!f) throw new Error(`no ${kind} on session ${session}; got ${frames.map((x) => `${x.session}:${x.body.case}`).join(" ")}`);
    frames.push(f);
    if (f.session === session && f.body.case === kind) return frames;
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe("linger", () => {
  it("a lost host leaves its sessions to the next one; its Resume keeps the named ones and ends the rest", async () => {
    agent = await startAgent();
    const first = await connect();
    first.send(0, { case: "linger", value: { on: true } });
    const reader = await start(first, 2, ["/bin/cat"], true);
    const finisher = await start(first, 3, ["/bin/sh", "-c", "sleep 0.3; echo finished"]);
    const counter = await start(first, 1, COUNTER); // last: its output comes between the others' Started
    const before = numbers(await readUntil(first, 1, "output"));
    await sleep(150);
    const seen = numbers(await readUntil(first, 1, "output"));
    const last = [...before, ...seen].at(-1) ?? -1;

    first.socket.destroy();
    await sleep(500); // the finisher exits meanwhile: its Exit waits for the next host
    expect([counter, reader, finisher].map(alive)).toEqual([true, true, false]);

    const second = await connect();
    second.send(0, { case: "resume", value: { generation: 0n, keep: [1, 3] } });
    const hello = bodyOf(await second.next(), "hello");
    expect(hello.generation).toBe(0n);

    // The finisher's output and Exit were held for this host; the counter goes on where it was.
    const frames = await readUntil(second, 3, "exit");
    const finished = frames.find((f) => f.session === 3 && f.body.case === "output");
    expect(Buffer.from(bodyOf(finished, "output").data).toString()).toBe("finished\n");
    expect(bodyOf(frames.at(-1), "exit").code).toBe(0);
    await sleep(200);
    const after = numbers([...frames, ...(await readUntil(second, 1, "output"))]);
    expect(after.length).toBeGreaterThan(2);
    const firstAfter = after[0] ?? -1;
    expect(firstAfter).toBeGreaterThan(last);
    expect(after).toEqual(after.map((_, i) => firstAfter + i)); // no number lost or repeated

    // The reader was not kept: its process group is gone, and no frame of it came.
    expect(await groupGone(reader)).toEqual([]);
    expect(frames.some((f) => f.session === 2)).toBe(false);

    second.send(1, { case: "signal", value: { signal: 9 } });
    const end = await readUntil(second, 1, "exit");
    expect(bodyOf(end.at(-1), "exit").signal).toBe(9);
    expect(end.some((f) => f.session === 2)).toBe(false);
  });

  it("without linger, a lost host's processes end with it", async () => {
    agent = await startAgent();
    const first = await connect();
    const reader = await start(first, 2, ["/bin/cat"], true);
    const counter = await start(first, 1, COUNTER);
    first.socket.destroy();
    expect(await groupGone(counter)).toEqual([]);
    expect(await groupGone(reader)).toEqual([]);
  });

  it("linger off again: the next lost host ends its sessions", async () => {
    agent = await startAgent();
    const first = await connect();
    first.send(0, { case: "linger", value: { on: true } });
    first.send(0, { case: "linger", value: { on: false } });
    const counter = await start(first, 1, COUNTER);
    first.socket.destroy();
    expect(await groupGone(counter)).toEqual([]);
  });

  it("a Resume naming sessions that are gone keeps nothing and breaks nothing", async () => {
    agent = await startAgent();
    const first = await connect();
    first.send(0, { case: "linger", value: { on: true } });
    const counter = await start(first, 1, COUNTER);
    first.socket.destroy();
    await sleep(100);

    const second = await connect();
    second.send(0, { case: "resume", value: { generation: 0n, keep: [7, 8] } });
    expect(bodyOf(await second.next(), "hello").generation).toBe(0n);
    expect(await groupGone(counter)).toEqual([]);
    // A second Resume finds no orphan left; the connection works as before.
    second.send(0, { case: "resume", value: { generation: 0n, keep: [1] } });
    expect(bodyOf(await second.next(), "hello").generation).toBe(0n);
    second.send(5, { case: "exec", value: { argv: ["/bin/echo", "still here"] } });
    const frames = await readUntil(second, 5, "exit");
    expect(frames.map((f) => f.body.case)).toEqual(["started", "output", "exit"]);
    expect(Buffer.from(bodyOf(frames[1], "output").data).toString()).toBe("still here\n");
  });

  it("Linger belongs on session 0", async () => {
    agent = await startAgent();
    const c = await connect();
    c.send(4, { case: "linger", value: { on: true } });
    const err = bodyOf(await c.next(), "error");
    expect(err.message).toContain("Linger belongs on session 0");
  });
});
