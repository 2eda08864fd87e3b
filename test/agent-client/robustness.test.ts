// Bad input on both sides: garbage sent to the real agent, and misbehaving "agents" (plain
// servers speaking broken protocol) against the client.
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

import { AgentClient } from "../../src/agent-client/client.js";
import { encodeFrame, lengthPrefixed, MAX_FRAME_BYTES, PROTOCOL_VERSION } from "../../src/agent-client/protocol.js";
import { AgentConnectionError, AgentProtocolError, TimeoutError } from "../../src/errors.js";
import type { Rlimit_Resource } from "../../src/gen/agent_pb.js";
import { bodyOf, guestFrame, type RunningAgent, rawConnection, startAgent } from "./helpers.js";

let agent: RunningAgent;

beforeAll(async () => {
  agent = await startAgent();
});

afterAll(async () => {
  await agent?.stop();
});

// A raw connection to the agent: send bytes, read decoded frames (a frame must come).
async function raw() {
  const c = await rawConnection(agent.socket);
  return { ...c, next: async () => (await c.next(10_000))! };
}

const frameOf = lengthPrefixed;

async function agentStillServes(): Promise<void> {
  const client = await agent.connect();
  expect((await client.exec(["echo", "alive"])).stdout.toString()).toBe("alive\n");
  client.close();
}

describe("the agent survives garbage", () => {
  it("answers an undecodable frame with a PROTOCOL error and keeps the connection", async () => {
    const c = await raw();
    c.socket.write(frameOf(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f])));
    const err = await c.next();
    expect(err).toMatchObject({ session: 0, body: { case: "error" } });
    expect(bodyOf(err, "error").kind).toBe(1); // PROTOCOL
    c.socket.write(encodeFrame(7, { case: "exec", value: { argv: ["/bin/echo", "after garbage"] } }));
    expect((await c.next()).body.case).toBe("started");
    expect(bodyOf(await c.next(), "output").data.toString()).toBe("after garbage\n");
    c.socket.destroy();
  });

  it("answers an oversized frame length, then hangs up", async () => {
    const c = await raw();
    const head = Buffer.alloc(4);
    head.writeUInt32BE(MAX_FRAME_BYTES + 1);
    c.socket.write(head);
    const err = await c.next();
    expect(bodyOf(err, "error").message).toContain("exceeds the limit");
    await c.closed;
    await agentStillServes();
  });

  it("rejects requests that make no sense", async () => {
    const c = await raw();
    c.socket.write(encodeFrame(0, { case: "exec", value: { argv: ["true"] } }));
    expect(bodyOf(await c.next(), "error").message).toContain("non-zero session id");
    c.socket.write(encodeFrame(3, { case: "exec", value: { argv: [] } }));
    expect(bodyOf(await c.next(), "error")).toMatchObject({ kind: 2, message: expect.stringContaining("argv is empty") });
    c.socket.write(encodeFrame(4, { case: "exec", value: { argv: ["/bin/sleep", "5"] } }));
    expect((await c.next()).body.case).toBe("started");
    c.socket.write(encodeFrame(4, { case: "exec", value: { argv: ["true"] } }));
    expect(bodyOf(await c.next(), "error").message).toContain("already open");
    c.socket.write(encodeFrame(5, { case: "stat", value: { path: "relative" } }));
    expect(bodyOf(await c.next(), "error").message).toContain("not absolute");
    c.socket.write(encodeFrame(6, { case: "exec", value: { argv: ["true"], rlimits: [{ resource: 99 as Rlimit_Resource, soft: 1n, hard: 1n }] } }));
    expect(bodyOf(await c.next(), "error").message).toContain("unknown rlimit");
    // The host always sends PATH (the client's default): without one a bare name is not found.
    c.socket.write(encodeFrame(7, { case: "exec", value: { argv: ["true"] } }));
    expect(bodyOf(await c.next(), "error")).toMatchObject({ kind: 3, errnum: 2 }); // EXEC_FAILED, ENOENT
    c.socket.destroy();
  });

  it("survives random bytes on many connections and kills the processes of a vanished host", async () => {
    for (let i = 0; i < 20; i++) {
      const s = createConnection(agent.socket);
      await once(s, "connect");
      s.write(randomBytes(1 + Math.floor(Math.random() * 70_000)));
      s.destroy();
    }
    const c = await raw();
    c.socket.write(encodeFrame(1, { case: "exec", value: { argv: ["/bin/sleep", "60"] } }));
    const started = await c.next();
    c.socket.destroy();
    const pid = bodyOf(started, "started").pid;
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        break;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(() => process.kill(pid, 0)).toThrow();
    await agentStillServes();
  });
});

describe("the client survives a misbehaving agent", () => {
  let server: Server | undefined;
  const sockPath = path.join(tmpdir(), `msb-fake-agent-${process.pid}.sock`);
  afterEach(() => server?.close());

  async function fakeAgent(onConnection: (s: Socket) => void): Promise<void> {
    server = createServer((s) => {
      s.on("error", () => {}); // the client hanging up on a fake agent is expected
      onConnection(s);
    });
    server.listen(sockPath);
    await once(server, "listening");
  }

  const hello = (version = PROTOCOL_VERSION) => guestFrame(0, { case: "hello", value: { protocolVersion: version, agentVersion: "fake" } });

  it("times out when the agent never says hello", async () => {
    await fakeAgent(() => {});
    const err = await AgentClient.connect(sockPath, { timeout: 0.3 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
  });

  it("refuses another protocol version with advice", async () => {
    await fakeAgent((s) => s.write(hello(9)));
    const err = await AgentClient.connect(sockPath).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentProtocolError);
    expect((err as Error).message).toMatch(/protocol version 9.*use the agent of this package.s version: its platform package/);
  });

  it("closes on an oversized frame from the guest and fails pending calls", async () => {
    await fakeAgent((s) => {
      s.write(hello());
      s.once("data", () => s.write(Buffer.from([0x7f, 0xff, 0xff, 0xff])));
    });
    const client = await AgentClient.connect(sockPath);
    const err = await client.exec(["true"]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentProtocolError);
    expect((err as Error).message).toContain("limit");
    expect(client.closed).toBe(true);
  });

  it("rejects output beyond the credit window", async () => {
    await fakeAgent((s) => {
      s.write(hello());
      s.once("data", () => {
        // Output frames for session 1 well past the 1 MiB window, with no credit granted.
        const out = guestFrame(1, { case: "output", value: { stream: 0, data: Buffer.alloc(65535) } });
        for (let i = 0; i < 20; i++) s.write(out);
      });
    });
    const client = await AgentClient.connect(sockPath);
    const proc = client.spawn(["true"], { window: 65535 * 2 });
    const err = await proc.exit.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentProtocolError);
    expect((err as Error).message).toContain("credit");
  });

  it("fails every pending call promptly when the agent dies", async () => {
    const victim = await startAgent();
    const client = await victim.connect();
    const pending = [client.exec(["sleep", "30"]), client.exec(["sleep", "30"]), client.stat("/")];
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    victim.proc.kill("SIGKILL");
    const results = await Promise.allSettled(pending);
    expect(Date.now() - t0).toBeLessThan(2000);
    for (const r of results.slice(0, 2)) {
      expect(r.status).toBe("rejected");
      expect((r as PromiseRejectedResult).reason).toBeInstanceOf(AgentConnectionError);
    }
    await expect(client.exec(["true"])).rejects.toBeInstanceOf(AgentConnectionError);
    await victim.stop();
  });

  // Each hostile agent next to a sound one in the same process: the hostile case ends in a typed
  // error (or its junk is dropped), the host's memory stays bounded, and the neighbour serves on.
  describe("a hostile agent beside a sound one", () => {
    const rssMiB = () => process.memoryUsage().rss / 2 ** 20;
    const outputFor = (session: number, bytes = 65535) => guestFrame(session, { case: "output", value: { stream: 0, data: Buffer.alloc(bytes, 0x41) } });

    async function beside(hostile: (s: Socket) => void, attack: (client: AgentClient) => Promise<unknown>): Promise<unknown> {
      await fakeAgent(hostile);
      const neighbour = await agent.connect();
      const before = rssMiB();
      const client = await AgentClient.connect(sockPath);
      let outcome: unknown;
      try {
        outcome = await attack(client).catch((e: unknown) => e);
      } finally {
        client.close();
      }
      expect(rssMiB() - before).toBeLessThan(96);
      expect((await neighbour.exec(["echo", "fine"])).stdout.toString()).toBe("fine\n");
      neighbour.close();
      return outcome;
    }

    // 10 bytes of a frame that says it has 1000.
    const halfFrame = () => {
      const head = Buffer.alloc(4);
      head.writeUInt32BE(1000);
      return Buffer.concat([head, Buffer.alloc(10)]);
    };

    it("a frame whose length lies, then a hang-up: pending calls fail with AgentConnectionError", async () => {
      const err = await beside(
        (s) => {
          s.write(hello());
          s.once("data", () => s.end(halfFrame()));
        },
        (c) => c.exec(["true"]),
      );
      expect(err).toBeInstanceOf(AgentConnectionError);
    });

    it("a half-frame, then silence: a command with a timeout fails with TimeoutError from the host's side", async () => {
      const err = await beside(
        (s) => {
          s.write(hello());
          s.once("data", () => s.write(halfFrame()));
        },
        (c) => c.exec(["sleep", "60"], { timeout: 0.2 }),
      );
      expect(err).toBeInstanceOf(TimeoutError);
      expect((err as Error).message).toMatch(/sleep did not end within its timeout of 0.2 s.*not answering/);
    });

    it("200 MB of output for sessions nobody opened, and a reused session: dropped, the real answer kept", async () => {
      const result = await beside(
        (s) => {
          s.write(hello());
          s.once("data", async () => {
            // Written as fast as the client takes it: the attacker's own buffers are not the client's.
            for (let i = 0; i < 3200; i++) if (!s.write(outputFor(1000 + (i % 7)))) await once(s, "drain");
            s.write(guestFrame(1, { case: "started", value: { pid: 42 } }));
            s.write(guestFrame(1, { case: "started", value: { pid: 43 } }));
            s.write(guestFrame(1, { case: "output", value: { stream: 0, data: Buffer.from("real\n") } }));
            s.write(guestFrame(1, { case: "exit", value: { code: 3 } }));
            // The session is over: more for it is junk.
            for (let i = 0; i < 100; i++) s.write(outputFor(1));
            s.write(guestFrame(1, { case: "exit", value: { code: 4 } }));
          });
        },
        (c) => c.exec(["anything"]),
      );
      expect(result).toMatchObject({ exitCode: 3 });
      expect((result as { stdout: Buffer }).stdout.toString()).toBe("real\n");
    });

    it("a flood of credit and a hello with absurd values: accepted within the frame limit, nothing grows", async () => {
      const boot = Array.from({ length: 20_000 }, (_, i) => ({ name: `e${i}`, tNs: 2n ** 64n - 1n }));
      const result = await beside(
        (s) => {
          s.write(
            guestFrame(0, {
              case: "hello",
              value: { protocolVersion: PROTOCOL_VERSION, agentVersion: "v".repeat(100_000), pid: 4294967295, generation: 2n ** 64n - 1n, boot },
            }),
          );
          s.once("data", async () => {
            s.write(guestFrame(1, { case: "started", value: { pid: 42 } }));
            const credit = guestFrame(1, { case: "credit", value: { bytes: 4294967295 } });
            for (let i = 0; i < 100_000; i++) if (!s.write(credit)) await once(s, "drain");
            s.write(guestFrame(1, { case: "exit", value: { code: 0 } }));
          });
        },
        async (c) => {
          expect(c.hello.boot.length).toBe(20_000);
          return c.exec(["cat"], { stdin: "x" });
        },
      );
      expect(result).toMatchObject({ exitCode: 0 });
    });
  });
});
