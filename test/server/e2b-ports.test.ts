// getHost(port) through msb server, driven by the real e2b 2.51 SDK: a server in the guest
// (port-server.py, Python's standard library only) answers WebSocket, kept-alive and pipelined
// requests, and bodies streamed both ways, through PORT-ID.DOMAIN on the server's own port.
import { createHash } from "node:crypto";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";

import { createServer, type RunningServer } from "../../src/index.js";
import { RELAY_MARK } from "../../src/server/e2b/guest-relay.js";

const KEY = "ports-test-key";
const PORT = 8000;
let server: RunningServer;
type E2bSandbox = InstanceType<typeof import("e2b-251")["Sandbox"]>;
let sb: E2bSandbox;

interface Answer {
  status: number;
  body: Buffer;
  reused: boolean;
}

/** A request to `port` in the sandbox (default `sb`), sent to the server's address with getHost's Host. */
function send(path: string, opts: { port?: number; method?: string; agent?: http.Agent; body?: Buffer; sandbox?: E2bSandbox } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port: server.port,
        path,
        method: opts.method ?? "GET",
        agent: opts.agent,
        headers: { host: (opts.sandbox ?? sb).getHost(opts.port ?? PORT) },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on("data", (c: Buffer) => parts.push(c));
        res.on("end", () => resolve({ status: res.statusCode!, body: Buffer.concat(parts), reused: req.reusedSocket }));
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}

/** Command lines of the guest's relays now. */
async function relays(sandbox = sb): Promise<string[]> {
  const r = await sandbox.commands.run("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done");
  return r.stdout.split("\n").filter((l) => l.includes(RELAY_MARK));
}

/** Waits (up to 10 s) for the guest to have no relay left: each goes when its client does. */
async function noRelaysLeft(sandbox = sb): Promise<void> {
  await expect.poll(() => relays(sandbox), { timeout: 10_000, interval: 250 }).toEqual([]);
}

beforeAll(async () => {
  server = await createServer({ port: 0, apiKeys: [KEY] });
  Object.assign(process.env, { E2B_API_URL: server.url, E2B_SANDBOX_URL: server.url, E2B_API_KEY: KEY, E2B_DOMAIN: "localhost" });
  const { Sandbox } = await import("e2b-251");
  sb = await Sandbox.create("local:python");
  await sb.files.write("/root/port-server.py", readFileSync(new URL("port-server.py", import.meta.url), "utf8"));
  await sb.commands.run(`python3 /root/port-server.py ${PORT}`, { background: true });
  for (let i = 0; i < 80; i++) {
    if ((await send("/")).status === 200) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error("the guest's server did not come up");
}, 180_000);
afterAll(async () => {
  await sb?.kill();
  await server?.close();
});

describe("getHost(port)", () => {
  it("carries a WebSocket: messages both ways, a large one, a close; no relay is left", async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws`, { headers: { host: sb.getHost(PORT) } });
    const got: string[] = [];
    ws.on("message", (data: Buffer) => got.push(data.length > 100 ? `${data.length} bytes` : data.toString()));
    await once(ws, "open");
    const arrived = (n: number) => expect.poll(() => got.length, { timeout: 20_000 }).toBe(n);
    ws.send("one");
    await arrived(1);
    ws.send("two");
    ws.send("three"); // two frames in flight at once
    await arrived(3);
    ws.send(Buffer.alloc(200_000, 7));
    await arrived(4);
    expect(got).toEqual(["echo:one", "echo:two", "echo:three", "200005 bytes"]);
    ws.close(1000, "done");
    const [code] = await once(ws, "close");
    expect(code).toBe(1000);
    await noRelaysLeft();

    // A client that just leaves takes its relay with it.
    const gone = new WebSocket(`ws://127.0.0.1:${server.port}/ws`, { headers: { host: sb.getHost(PORT) } });
    await once(gone, "open");
    expect(await relays()).toHaveLength(1);
    gone.terminate();
    await noRelaysLeft();
  }, 120_000);

  it("carries a client's half-close to the guest, and the answer after it back", async () => {
    const sock = net.connect(server.port, "127.0.0.1");
    sock.write(`GET /count HTTP/1.1\r\nHost: ${sb.getHost(PORT)}\r\nConnection: Upgrade\r\nUpgrade: x-until-eof\r\n\r\n`);
    sock.end("some bytes, then the end");
    let text = "";
    for await (const chunk of sock) text += chunk; // to the end: the server closes once the guest did
    expect(text).toMatch(/^HTTP\/1\.[01] 101 /);
    expect(text).toMatch(/\r\n\r\nread 24 bytes to the end: some bytes, then the$/);
    await noRelaysLeft();
  }, 60_000);

  it("keeps a connection alive: the second request reuses the client's and the guest's connection", async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await send("/", { agent });
      const second = await send("/", { agent });
      expect(first).toMatchObject({ status: 200, reused: false });
      expect(second).toMatchObject({ status: 200, reused: true });
      // The guest saw both on one connection: one relay carried them.
      expect(second.body.toString()).toBe(first.body.toString());
      expect(await relays()).toHaveLength(1);
    } finally {
      agent.destroy();
    }
    await noRelaysLeft();
  }, 60_000);

  it("answers pipelined requests in order", async () => {
    const sock = net.connect(server.port, "127.0.0.1");
    const head = (path: string) => `GET ${path} HTTP/1.1\r\nHost: ${sb.getHost(PORT)}\r\n\r\n`;
    sock.write(head("/") + head("/sent") + head("/"));
    let text = "";
    const answered = () => text.split(/HTTP\/1\.1 200 OK\r\n/).slice(1);
    for await (const chunk of sock) {
      text += chunk;
      if (answered().length === 3 && /hello from guest port \d+$/.test(text)) break;
    }
    sock.destroy();
    const bodies = answered();
    expect(bodies).toHaveLength(3);
    expect(bodies[0]).toMatch(/hello from guest port \d+$/);
    expect(bodies[1]).toMatch(/\r\n\r\n\d+$/);
    expect(bodies[2]).toMatch(/hello from guest port \d+$/);
    await noRelaysLeft();
  }, 60_000);

  it("streams bodies both ways as they come, and a slow reader holds the guest back", async () => {
    // Each piece comes back before the next is sent: neither direction waits for a whole body.
    const req = http.request({ host: "127.0.0.1", port: server.port, path: "/echo", method: "POST", headers: { host: sb.getHost(PORT) } });
    req.flushHeaders();
    const [res] = (await once(req, "response")) as [http.IncomingMessage];
    const echoed = res[Symbol.asyncIterator]();
    for (let i = 0; i < 5; i++) {
      const piece = Buffer.alloc(50_000, i);
      req.write(piece);
      let back = Buffer.alloc(0);
      while (back.length < piece.length) back = Buffer.concat([back, (await echoed.next()).value as Buffer]);
      expect(back.equals(piece)).toBe(true);
    }
    req.end();
    expect((await echoed.next()).done).toBe(true);

    // Several MiB up and down, whole.
    const up = Buffer.alloc(8 << 20);
    for (let i = 0; i < up.length; i += 4) up.writeUInt32LE(i, i);
    const sha = await send("/sha", { method: "POST", body: up });
    expect(sha.body.toString()).toBe(`${up.length} ${createHash("sha256").update(up).digest("hex")}`);
    const down = await send(`/bytes/${8 << 20}`);
    expect(down.body.length).toBe(8 << 20);
    expect(down.body.subarray(0, 512).equals(Buffer.from([...Array(512).keys()].map((i) => i % 256)))).toBe(true);

    // A client that stops reading stops the guest: it is not read ahead into this host's memory.
    const before = Number((await send("/sent")).body);
    const big = 256 << 20;
    const slow = http.get({ host: "127.0.0.1", port: server.port, path: `/bytes/${big}`, headers: { host: sb.getHost(PORT) } });
    const [answer] = (await once(slow, "response")) as [http.IncomingMessage];
    answer.pause();
    const sentNow = async () => Number((await send("/sent")).body) - before;
    let sent = await sentNow();
    for (let last = -1; sent !== last; await new Promise((r) => setTimeout(r, 1500))) [last, sent] = [sent, await sentNow()];
    expect(sent).toBeLessThan(big / 2);
    slow.destroy();
    await noRelaysLeft();
  }, 180_000);

  it("answers clearly when nothing listens, for a request and for a WebSocket", async () => {
    const none = await send("/", { port: 8001 });
    expect(none.status).toBe(502);
    expect(JSON.parse(none.body.toString()).message).toMatch(
      /nothing answered on port 8001 in sandbox \w+ .*is a server listening on 127\.0\.0\.1:8001 there\?/,
    );
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws`, { headers: { host: sb.getHost(8001) } });
    const [, res] = (await once(ws, "unexpected-response")) as [unknown, http.IncomingMessage];
    expect(res.statusCode).toBe(502);
    res.destroy();
    const gone = await new Promise<number>((resolve, reject) =>
      http
        .get({ host: "127.0.0.1", port: server.port, path: "/", headers: { host: `${PORT}-0000000000000000.localhost` } }, (r) => resolve(r.statusCode!))
        .on("error", reject),
    );
    expect(gone).toBe(502);
    await noRelaysLeft();
  }, 60_000);

  it("serves the server's own API to a request that asks to upgrade (curl --http2 on http://), body and all", async () => {
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.request(
        {
          host: "127.0.0.1",
          port: server.port,
          path: "/api/v1/rpc",
          method: "POST",
          headers: {
            authorization: `Bearer ${KEY}`,
            "content-type": "application/json",
            connection: "Upgrade, HTTP2-Settings",
            upgrade: "h2c",
            "http2-settings": "AAMAAABkAAQAoAAAAAIAAAAA",
          },
        },
        (r) => {
          let body = "";
          r.on("data", (c) => (body += c));
          r.on("end", () => resolve({ status: r.statusCode!, body }));
        },
      );
      req.on("error", reject);
      req.end(JSON.stringify({ jsonrpc: "2.0", id: 7, method: "no.such.method" }));
    });
    expect(answer.status).toBe(400); // the JSON-RPC answer to an unknown method: the body was read
    expect(JSON.parse(answer.body)).toMatchObject({ id: 7, error: { code: -32601 } });
  });
});

describe("getHost(port) in a sandbox with node but no python3", () => {
  it("relays with node: kept alive, a clear error when nothing listens, no relay left", async () => {
    const { Sandbox } = await import("e2b-251");
    const nodeSb = await Sandbox.create("local:node");
    const get = (port: number, agent?: http.Agent) => send("/", { port, agent, sandbox: nodeSb });
    try {
      // It closes a kept-alive connection after 1 s idle, as node's servers do after 5 s.
      const serve = `const s = require("http").createServer((q, a) => a.end("node saw port " + q.socket.remotePort)); s.keepAliveTimeout = 1000; s.listen(${PORT}, "127.0.0.1")`;
      await nodeSb.commands.run(`node -e '${serve}'`, { background: true });
      let first = await get(PORT);
      for (let i = 0; i < 80 && first.status !== 200; i++) {
        await new Promise((r) => setTimeout(r, 250));
        first = await get(PORT);
      }
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      const [a, b] = [await get(PORT, agent), await get(PORT, agent)];
      expect(a.body.toString()).toMatch(/^node saw port \d+$/);
      expect(b).toMatchObject({ status: 200, reused: true });
      expect(b.body.toString()).toBe(a.body.toString());
      // The guest's server closed the idle connection; the client's is still open and is answered over a new one.
      await new Promise((r) => setTimeout(r, 2500));
      const c = await get(PORT, agent);
      agent.destroy();
      expect(c).toMatchObject({ status: 200, reused: true });
      expect(c.body.toString()).not.toBe(a.body.toString());
      const none = await get(8001);
      expect(none.status).toBe(502);
      expect(JSON.parse(none.body.toString()).message).toMatch(/nothing answered on port 8001 .*ECONNREFUSED/);
      await noRelaysLeft(nodeSb);
    } finally {
      await nodeSb.kill();
    }
  }, 120_000);
});
