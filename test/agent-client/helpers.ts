// Test helpers: a real agent process listening on a unix socket in a temporary directory.
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { create, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { AgentClient } from "../../src/agent-client/client.js";

import { encodeFrame, FrameDecoder, type GuestBody, type GuestFrame, type HostBody, lengthPrefixed } from "../../src/agent-client/protocol.js";
import { GuestMessageSchema } from "../../src/gen/agent_pb.js";
import { agentBinaryPath } from "../../src/vm/guest.js";

export interface RunningAgent {
  socket: string;
  dir: string;
  proc: ChildProcess;
  connect(): Promise<AgentClient>;
  stop(): Promise<void>;
}

export async function startAgent(): Promise<RunningAgent> {
  const dir = mkdtempSync(path.join(tmpdir(), "msb-agent-test-"));
  const socket = path.join(dir, "agent.sock");
  const proc = spawn(agentBinaryPath(), ["--listen", `unix:${socket}`], { stdio: ["ignore", "inherit", "inherit"] });
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  for (let i = 0; !existsSync(socket); i++) {
    if (i > 500 || proc.exitCode !== null) throw new Error("the agent did not start listening");
    await new Promise((r) => setTimeout(r, 10));
  }
  return {
    socket,
    dir,
    proc,
    connect: () => AgentClient.connect(socket),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Waits up to 2 s for process group `pgid` to be gone; returns the members still there. */
export async function groupGone(pgid: number): Promise<number[]> {
  let left = processGroupMembers(pgid);
  for (let i = 0; i < 100 && left.length; i++) {
    await new Promise((r) => setTimeout(r, 20));
    left = processGroupMembers(pgid);
  }
  return left;
}

/** Processes whose process group is `pgid` (read from /proc). */
export function processGroupMembers(pgid: number): number[] {
  const members: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // Fields after the ")" of the command name: state ppid pgrp ...
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[2]) === pgid) members.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return members;
}

export interface RawConnection {
  socket: Socket;
  send(session: number, body: HostBody): void;
  /** The next decoded frame, or undefined when none came within `ms`. */
  next(ms?: number): Promise<GuestFrame | undefined>;
  closed: Promise<unknown>;
}

/** A raw connection to an agent, past its first Hello: send frames, read decoded frames. */
export async function rawConnection(socketPath: string): Promise<RawConnection> {
  const socket = createConnection(socketPath);
  const decoder = new FrameDecoder();
  const frames: GuestFrame[] = [];
  let wake: (() => void) | undefined;
  socket.on("data", (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) frames.push(f);
    wake?.();
  });
  const closed = once(socket, "close");
  await once(socket, "connect");
  const next = async (ms = 5000) => {
    const deadline = Date.now() + ms;
    while (!frames.length && Date.now() < deadline) {
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, deadline - Date.now());
      });
    }
    return frames.shift();
  };
  const hello = await next();
  if (hello?.body.case !== "hello") throw new Error(`the agent's first frame was ${hello?.body.case ?? "nothing"}, not a hello`);
  return { socket, send: (session, body) => socket.write(encodeFrame(session, body)), next, closed };
}

/** A guest frame, as a fake agent sends it: `guestFrame(1, { case: "started", value: { pid: 42 } })`. */
export function guestFrame(session: number, body: MessageInitShape<typeof GuestMessageSchema>["body"]): Buffer {
  return lengthPrefixed(toBinary(GuestMessageSchema, create(GuestMessageSchema, { session, body })));
}

/** The body of `f`, which must be a frame of kind `c`. */
export function bodyOf<C extends NonNullable<GuestFrame["body"]["case"]>>(f: GuestFrame | undefined, c: C): GuestBody<C> {
  if (f?.body.case !== c) throw new Error(`expected a ${c} frame, got ${f ? (f.body.case ?? "an empty") : "no"} frame`);
  return f.body.value as GuestBody<C>;
}
