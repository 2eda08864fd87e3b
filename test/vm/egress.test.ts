// The egress proxy against real local servers and real TLS, the test standing in for the VM helper:
// a "guest" connects to the proxy, the test reports the redirect record as the helper would, and
// upstream HTTPS and HTTP servers echo what reached them. No VMs, root or QEMU.
import { once } from "node:events";
import { Agent, createServer as createHttpServer, type IncomingHttpHeaders, request, type Server } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { connect, createServer, type Server as NetServer, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { connect as tlsConnect } from "node:tls";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

import { SandboxCA } from "../../src/vm/egress/ca.js";
import { checkInjectHeaders } from "../../src/vm/egress/inject.js";
import { EgressProxy, type EgressProxyOptions, type RedirectRecord } from "../../src/vm/egress/proxy.js";
import { checkSecrets, type Secret } from "../../src/vm/egress/secrets.js";
import { checkEgressProxy } from "../../src/vm/egress/upstream.js";

interface Echo {
  line: string;
  headers: string[];
  body: number;
  /** The body's first 200 characters. */
  start: string;
  servername?: string;
}

let sandboxCA: SandboxCA;
let upstreamCA: SandboxCA;
let https: Server;
let plain: Server;
let httpsPort: number;
let plainPort: number;
const seen: Echo[] = [];
const proxies: EgressProxy[] = [];

function echo(req: import("node:http").IncomingMessage, res: import("node:http").ServerResponse) {
  let body = 0;
  let start = "";
  req.on("data", (c: Buffer) => {
    body += c.length;
    if (start.length < 200) start = (start + c.toString("latin1")).slice(0, 200);
  });
  req.on("end", () => {
    const e: Echo = { line: `${req.method} ${req.url}`, headers: req.rawHeaders, body, start };
    const sni = (req.socket as { servername?: string }).servername;
    if (sni) e.servername = sni;
    seen.push(e);
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify(e));
  });
}

const listen = async <T extends NetServer>(server: T): Promise<number> => {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return (server.address() as { port: number }).port;
};

beforeAll(async () => {
  sandboxCA = await SandboxCA.create("guest");
  // The upstream's certificates come from a CA of their own, which the proxy is told to trust.
  upstreamCA = await SandboxCA.create("upstream");
  https = createHttpsServer({ SNICallback: (name, cb) => void upstreamCA.leafContext(name).then((c) => cb(null, c), cb) }, echo);
  plain = createHttpServer(echo);
  // An upgrade answered with 101 and the Authorization it got, then an echo of the bytes.
  plain.on("upgrade", (req, socket: Duplex) => {
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\nX-Got: ${req.headers.authorization}\r\n\r\n`);
    socket.pipe(socket);
  });
  httpsPort = await listen(https);
  plainPort = await listen(plain);
});
afterAll(async () => {
  https.closeAllConnections();
  plain.closeAllConnections();
  https.close();
  plain.close();
});
afterEach(async () => {
  for (const p of proxies.splice(0)) await p.close();
  seen.length = 0;
});

async function start(opts: EgressProxyOptions = {}): Promise<EgressProxy> {
  const p = await EgressProxy.start({ ca: sandboxCA, upstreamCAs: [upstreamCA.certificatePem], upstreamPorts: { 443: httpsPort, 80: plainPort }, ...opts });
  proxies.push(p);
  return p;
}

type Dest = Omit<RedirectRecord, "localPort" | "rule" | "kind"> & Partial<Pick<RedirectRecord, "kind" | "rule">>;

/** A guest connection through the proxy: the helper's record is reported once it is accepted. */
async function guest(proxy: EgressProxy, dest: Dest, servername?: string): Promise<Duplex> {
  const raw = connect(proxy.port, "127.0.0.1");
  await once(raw, "connect");
  proxy.redirect({ kind: "intercept", rule: "", ...dest, localPort: raw.localPort! });
  if (dest.port !== 443) return raw;
  const tls = tlsConnect({ socket: raw, servername: servername ?? dest.names[0] ?? "", ca: [sandboxCA.certificatePem], ALPNProtocols: ["http/1.1"] });
  await once(tls, "secureConnect");
  return tls;
}

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
}

/** An HTTP/1.1 client kept alive on one guest connection. */
function client(socket: Duplex) {
  const agent = new (class extends Agent {
    override createConnection() {
      return socket;
    }
  })({ keepAlive: true, maxSockets: 1 });
  return (host: string, opts: { method?: string; path?: string; headers?: Record<string, string>; body?: string | string[] } = {}) =>
    new Promise<Reply>((resolve, reject) => {
      const req = request({ agent, method: opts.method ?? "GET", path: opts.path ?? "/", headers: { host, ...opts.headers } }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, text }));
      });
      req.on("error", reject);
      // An array is sent chunked: one write each.
      for (const part of Array.isArray(opts.body) ? opts.body : opts.body ? [opts.body] : []) req.write(part);
      req.end();
    });
}

const header = (e: Echo | undefined, name: string) => {
  const i = e?.headers.findIndex((h, j) => j % 2 === 0 && h.toLowerCase() === name) ?? -1;
  return i < 0 ? undefined : e!.headers[i + 1];
};

const closed = (s: Duplex) => (s.destroyed ? Promise.resolve() : once(s, "close").then(() => undefined));

const API = { address: "127.0.0.1", port: 443, names: ["api.example.com"] };
const OTHER = { address: "127.0.0.1", port: 443, names: ["other.example.com"] };

function secrets(): Secret[] {
  return checkSecrets({
    GH_TOKEN: { value: "ghp_the_real_value", hosts: ["api.example.com"], headers: ["authorization"] },
    ANY: { value: "any-header-value", hosts: ["*.example.net"] },
  });
}

describe("intercepted HTTPS", () => {
  it("sends a secret's value only to its host, only in its header, and refuses the rest", async () => {
    const s = secrets();
    const gh = s[0]!.placeholder;
    const proxy = await start({ secrets: s });
    const api = client(await guest(proxy, API));

    const ok = await api("api.example.com", { path: "/user", headers: { authorization: `Bearer ${gh}` } });
    expect(ok.status).toBe(200);
    const got = JSON.parse(ok.text) as Echo;
    expect(got.line).toBe("GET /user");
    expect(got.servername).toBe("api.example.com");
    expect(header(got, "authorization")).toBe("Bearer ghp_the_real_value");

    // Same host, a header the secret is not allowed in.
    const wrongHeader = await api("api.example.com", { headers: { "x-token": gh } });
    expect(wrongHeader.status).toBe(403);
    expect(wrongHeader.text).toBe("microsandbox: secret GH_TOKEN may not be sent in header x-token (only in authorization)\n");
    // Never in the URL.
    const inUrl = await api("api.example.com", { path: `/?token=${gh}` });
    expect(inUrl.status).toBe(403);
    expect(inUrl.text).toMatch(/secret GH_TOKEN may not be sent in the URL/);

    // Another intercepted host: its names are another host's.
    const other = client(await guest(proxy, OTHER));
    const leak = await other("other.example.com", { headers: { authorization: `Bearer ${gh}` } });
    expect(leak.status).toBe(403);
    expect(leak.text).toBe("microsandbox: secret GH_TOKEN may not be sent to other.example.com\n");
    // Without a placeholder the other host is served.
    expect((await other("other.example.com")).status).toBe(200);

    expect(proxy.stats()).toMatchObject({ secretRefusals: 3, requests: 2, intercepted: 2 });
    // The value reached the upstream exactly once, and no placeholder did.
    const all = JSON.stringify(seen);
    expect(all.split("ghp_the_real_value").length - 1).toBe(1);
    expect(all).not.toContain(gh);
  });

  it("refuses a Host that is not among the record's names, or not the TLS name", async () => {
    const proxy = await start();
    const api = client(await guest(proxy, API));
    const wrong = await api("evil.example.com");
    expect(wrong.status).toBe(403);
    expect(wrong.text).toMatch(/Host "evil.example.com" is not a name the sandbox looked up for 127.0.0.1:443: it resolved api.example.com/);
    // A name the address has, but not the one the guest's TLS asked for.
    const two = client(await guest(proxy, { ...API, names: ["api.example.com", "www.example.com"] }, "www.example.com"));
    const mismatch = await two("api.example.com");
    expect(mismatch.status).toBe(403);
    expect(mismatch.text).toMatch(/not the TLS server name "www.example.com"/);
    expect(proxy.stats().hostRefusals).toBe(2);
    expect(seen).toEqual([]);
  });

  it("keeps connections alive and passes chunked and sized bodies through untouched", async () => {
    const secretsNow = secrets();
    const proxy = await start({ secrets: secretsNow });
    const api = client(await guest(proxy, API));
    const a = JSON.parse((await api("api.example.com", { method: "POST", body: ["a".repeat(1000), "b".repeat(5000)] })).text) as Echo;
    expect(a.body).toBe(6000);
    expect(header(a, "transfer-encoding")).toBe("chunked");
    const b = JSON.parse((await api("api.example.com", { method: "PUT", body: "x".repeat(70_000), headers: { "content-length": "70000" } })).text) as Echo;
    expect(b.body).toBe(70_000);
    // A placeholder in a body is left alone: bodies are not the secret's place.
    const gh = secretsNow[0]!.placeholder;
    const c = JSON.parse((await api("api.example.com", { method: "POST", body: `{"token":"${gh}"}` })).text) as Echo;
    expect(c.start).toBe(`{"token":"${gh}"}`);
    expect(proxy.stats()).toMatchObject({ requests: 3, intercepted: 1, open: 1 });
  });

  it("answers 502 with the reason when the upstream's certificate is not trusted", async () => {
    const proxy = await start({ upstreamCAs: [] });
    const api = client(await guest(proxy, API));
    const r = await api("api.example.com");
    expect(r.status).toBe(502);
    expect(r.text).toMatch(/could not reach api.example.com at 127.0.0.1:443: .*(certificate|issuer)/i);
  });
});

describe("injected headers", () => {
  it("set a host's headers over the guest's of those names, from its exact entry else its longest suffix", async () => {
    const inject = checkInjectHeaders({
      "api.example.com": { Authorization: "Bearer exact" },
      "*.example.com": { authorization: "Bearer wide", "X-Team": "t1" },
      "*.deep.example.com": { "x-team": "t2" },
    });
    const proxy = await start({ inject });
    const api = client(await guest(proxy, API));
    const exact = JSON.parse((await api("api.example.com", { headers: { authorization: "guest's own", "x-keep": "1" } })).text) as Echo;
    expect(exact.headers.filter((_, i) => i % 2 === 0 && exact.headers[i]!.toLowerCase() === "authorization")).toHaveLength(1);
    expect(header(exact, "authorization")).toBe("Bearer exact");
    expect(header(exact, "x-team")).toBeUndefined(); // entries are not merged
    expect(header(exact, "x-keep")).toBe("1");
    const wide = JSON.parse((await client(await guest(proxy, OTHER))("other.example.com")).text) as Echo;
    expect([header(wide, "authorization"), header(wide, "x-team")]).toEqual(["Bearer wide", "t1"]);
    const deep = { address: "127.0.0.1", port: 80, names: ["a.deep.example.com"] };
    const narrow = JSON.parse((await client(await guest(proxy, deep))("a.deep.example.com")).text) as Echo;
    expect([header(narrow, "authorization"), header(narrow, "x-team")]).toEqual([undefined, "t2"]);

    proxy.update({ inject: {} });
    expect(header(JSON.parse((await api("api.example.com")).text) as Echo, "authorization")).toBeUndefined();
  });

  it("refuse what the proxy sets itself, addresses and bad values, never echoing a value", () => {
    expect(() => checkInjectHeaders({ "api.example.com": { Host: "x" } })).toThrow(/host cannot be set/);
    expect(() => checkInjectHeaders({ "10.0.0.1": { a: "x" } })).toThrow(/is an address/);
    expect(() => checkInjectHeaders({ "api.example.com": { a: "s3cr3t\r\nx: y" } })).toThrow(/line break/);
    expect(() => checkInjectHeaders({ "api.example.com": { a: "s3cr3t\r\nx: y" } })).not.toThrow(/s3cr3t/);
    expect(() => checkInjectHeaders({ "api.example.com": { a: "1", A: "2" } })).toThrow(/given twice/);
  });
});

describe("intercepted HTTP", () => {
  it("substitutes in any header when the secret names none, for hosts below its suffix", async () => {
    const s = secrets();
    const proxy = await start({ secrets: s });
    const web = client(await guest(proxy, { address: "127.0.0.1", port: 80, names: ["cdn.example.net"] }));
    const r = await web("cdn.example.net:80", { path: "/x", headers: { "x-any": `k=${s[1]!.placeholder};` } });
    expect(r.status).toBe(200);
    expect(header(JSON.parse(r.text) as Echo, "x-any")).toBe("k=any-header-value;");
  });
});

describe("upgrades", () => {
  it("are checked like requests, then carry bytes both ways", async () => {
    const s = secrets();
    const proxy = await start({ secrets: s });
    const g = await guest(proxy, { address: "127.0.0.1", port: 80, names: ["ws.example.net"] });
    let got = "";
    g.on("data", (c: Buffer) => (got += c.toString()));
    g.write(`GET /ws HTTP/1.1\r\nHost: ws.example.net\r\nUpgrade: echo\r\nConnection: Upgrade\r\nAuthorization: ${s[1]!.placeholder}\r\n\r\n`);
    while (!got.includes("\r\n\r\n")) await once(g, "data");
    expect(got).toMatch(/^HTTP\/1.1 101 /);
    expect(got).toContain("X-Got: any-header-value\r\n");
    got = "";
    g.write("ping");
    while (got !== "ping") await once(g, "data");
    g.destroy();

    const leak = await guest(proxy, { address: "127.0.0.1", port: 80, names: ["ws.example.org"] });
    let refused = "";
    leak.on("data", (c: Buffer) => (refused += c.toString()));
    leak.write(`GET /ws HTTP/1.1\r\nHost: ws.example.org\r\nUpgrade: echo\r\nConnection: Upgrade\r\nAuthorization: ${s[1]!.placeholder}\r\n\r\n`);
    await closed(leak);
    expect(refused).toMatch(/^HTTP\/1.1 403 Forbidden\r\n[\s\S]*microsandbox: secret ANY may not be sent to ws.example.org\n$/);
  });
});

describe("refused connections", () => {
  const describeRule = (t: string) => (t === "-10.0.0.0/8" ? "private address 10.0.0.0/8" : `rule ${t}`);

  it("get a 403 naming the rule, on 80 and on 443", async () => {
    const proxy = await start({ describeRule });
    const g80 = await guest(proxy, { address: "10.9.9.9", port: 80, names: [], kind: "refused", rule: "-10.0.0.0/8" });
    const r80 = await client(g80)("10.9.9.9");
    expect(r80.status).toBe(403);
    expect(r80.headers["content-type"]).toBe("text/plain; charset=utf-8");
    expect(r80.headers.connection).toBe("close");
    expect(r80.text).toBe("microsandbox: 10.9.9.9:80 is refused by the sandbox's network policy (private address 10.0.0.0/8)\n");

    const g443 = await guest(proxy, { address: "203.0.113.5", port: 443, names: ["evil.com"], kind: "refused", rule: "-d:evil.com" });
    const r443 = await client(g443)("evil.com");
    expect(r443.status).toBe(403);
    expect(r443.text).toBe("microsandbox: 203.0.113.5:443 is refused by the sandbox's network policy (rule -d:evil.com)\n");
    expect(proxy.stats().refused).toBe(2);
  });

  it("on 443 without a CA, are closed", async () => {
    const proxy = await start({ ca: undefined });
    const raw = connect(proxy.port, "127.0.0.1");
    await once(raw, "connect");
    proxy.redirect({ localPort: raw.localPort!, address: "203.0.113.5", port: 443, kind: "refused", rule: "", names: [] });
    await closed(raw);
  });
});

/** A small HTTP CONNECT proxy that records what it was asked. */
async function connectProxy() {
  const asked: string[] = [];
  const server = createHttpServer();
  server.on("connect", (req, socket: Socket, head: Buffer) => {
    asked.push(`${req.url} ${req.headers["proxy-authorization"] ?? ""}`);
    const [host, port] = [req.url!.slice(0, req.url!.lastIndexOf(":")), Number(req.url!.slice(req.url!.lastIndexOf(":") + 1))];
    const up = connect(port, host.replace(/^\[|\]$/g, ""), () => {
      socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    up.on("error", () => socket.destroy());
    socket.on("error", () => up.destroy());
    socket.on("close", () => up.destroy());
  });
  const port = await listen(server);
  return { asked, port, close: () => (server.closeAllConnections(), server.close()) };
}

/** A small SOCKS5 server (no authentication, CONNECT only, IPv4 and names) that records what it was asked. */
async function socksServer() {
  const asked: string[] = [];
  const conns = new Set<Socket>();
  const server = createServer((s) => {
    conns.add(s);
    s.on("close", () => conns.delete(s));
    s.on("error", () => {});
    let buf = Buffer.alloc(0);
    let stage = 0;
    s.on("data", function onData(chunk: Buffer) {
      buf = Buffer.concat([buf, chunk]);
      if (stage === 0 && buf.length >= 2 && buf.length >= 2 + buf[1]!) {
        buf = buf.subarray(2 + buf[1]!);
        s.write(Buffer.from([5, 0]));
        stage = 1;
      }
      if (stage === 1 && buf.length >= 10 && buf[3] === 1) {
        const host = [...buf.subarray(4, 8)].join(".");
        const port = buf.readUInt16BE(8);
        asked.push(`${host}:${port}`);
        s.off("data", onData);
        const rest = buf.subarray(10);
        const up = connect(port, host, () => {
          s.write(Buffer.from([5, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
          if (rest.length) up.write(rest);
          up.pipe(s);
          s.pipe(up);
        });
        up.on("error", () => s.destroy());
        s.on("close", () => up.destroy());
      }
    });
  });
  const port = await listen(server);
  return {
    asked,
    port,
    close: () => {
      for (const c of conns) c.destroy();
      server.close();
    },
  };
}

describe("tunnelled connections", () => {
  it("go through an HTTP CONNECT proxy, and intercepted requests do too", async () => {
    const up = await connectProxy();
    try {
      const proxy = await start({ egressProxy: checkEgressProxy(`http://me:pw@127.0.0.1:${up.port}`) });
      const g = await guest(proxy, { address: "127.0.0.1", port: plainPort, names: [], kind: "tunnel" });
      const r = await client(g)("anything.example");
      expect(JSON.parse(r.text)).toMatchObject({ line: "GET /" });
      expect(up.asked).toEqual([`127.0.0.1:${plainPort} Basic ${Buffer.from("me:pw").toString("base64")}`]);
      // Intercepted: the proxy's upstream leg goes through the user's proxy as well.
      expect((await client(await guest(proxy, API))("api.example.com")).status).toBe(200);
      expect(up.asked[1]).toMatch(new RegExp(`^127.0.0.1:${httpsPort} `));
      expect(proxy.stats().tunnelled).toBe(1);
    } finally {
      up.close();
    }
  });

  it("go through a SOCKS5 server", async () => {
    const up = await socksServer();
    try {
      const proxy = await start({ egressProxy: checkEgressProxy(`socks5://127.0.0.1:${up.port}`) });
      const g = await guest(proxy, { address: "127.0.0.1", port: plainPort, names: [], kind: "tunnel" });
      const r = await client(g)("anything.example", { path: "/socks" });
      expect(JSON.parse(r.text)).toMatchObject({ line: "GET /socks" });
      expect(up.asked).toEqual([`127.0.0.1:${plainPort}`]);
    } finally {
      up.close();
    }
  });

  it("fail closed when the proxy is down or absent", async () => {
    // A port that was just free: nothing listens on it.
    const gone = createServer();
    const port = await listen(gone);
    gone.close();
    for (const opts of [{ egressProxy: checkEgressProxy(`http://127.0.0.1:${port}`) }, { egressProxy: checkEgressProxy(`socks5://127.0.0.1:${port}`) }, {}]) {
      const proxy = await start(opts);
      const g = await guest(proxy, { address: "127.0.0.1", port: plainPort, names: [], kind: "tunnel" });
      let got = "";
      g.on("data", (c: Buffer) => (got += c.toString()));
      g.on("error", () => {});
      g.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
      await closed(g);
      expect(got).toBe("");
    }
    expect(seen).toEqual([]);
  });
});

describe("live changes and bounds", () => {
  it("update() changes substitution for new requests", async () => {
    const s = secrets();
    const proxy = await start({ secrets: s });
    const api = client(await guest(proxy, API));
    const auth = { authorization: `token ${s[0]!.placeholder}` };
    expect(header(JSON.parse((await api("api.example.com", { headers: auth })).text) as Echo, "authorization")).toBe("token ghp_the_real_value");

    proxy.update({ secrets: checkSecrets({ GH_TOKEN: { value: "rotated", hosts: ["api.example.com"] } }, s) });
    expect(header(JSON.parse((await api("api.example.com", { headers: auth })).text) as Echo, "authorization")).toBe("token rotated");

    proxy.update({ secrets: checkSecrets({ GH_TOKEN: { value: "rotated", hosts: ["elsewhere.example.com"] } }, s) });
    expect((await api("api.example.com", { headers: auth })).status).toBe(403);
  });

  it("takes a record that comes before its connection, and closes a connection whose record never comes", async () => {
    const proxy = await start({ recordWait: 200 });
    // A free local port, reported first, then connected from.
    const probe = createServer();
    const localPort = await listen(probe);
    probe.close();
    proxy.redirect({ ...API, port: 80, kind: "intercept", rule: "", localPort });
    const early = connect({ port: proxy.port, host: "127.0.0.1", localPort, localAddress: "127.0.0.1" });
    await once(early, "connect");
    expect((await client(early)("api.example.com")).status).toBe(200);

    const orphan = connect(proxy.port, "127.0.0.1");
    await once(orphan, "connect");
    expect(proxy.stats().waiting).toBe(1);
    await closed(orphan);
    expect(proxy.stats()).toMatchObject({ waiting: 0, unmatched: 1 });
  });

  it("close() ends every connection, timer and server", async () => {
    const before = process.getActiveResourcesInfo();
    const proxy = await start({ recordWait: 60_000 });
    const g = await guest(proxy, API);
    // An open upstream leg (kept alive in the proxy's agent) and a refusal waiting for its head.
    expect((await client(g)("api.example.com")).status).toBe(200);
    const r = await guest(proxy, { address: "10.1.1.1", port: 80, names: [], kind: "refused" });
    const waiting = connect(proxy.port, "127.0.0.1");
    await once(waiting, "connect");
    await proxy.close();
    await Promise.all([closed(g), closed(waiting), closed(r)]);
    expect(proxy.stats()).toMatchObject({ open: 0, waiting: 0, records: 0 });
    const refused = connect(proxy.port, "127.0.0.1");
    await expect(once(refused, "connect")).rejects.toThrow(/ECONNREFUSED/);
    await new Promise((resolve) => setImmediate(resolve));
    // Nothing more than before it started (earlier tests' upstream legs may have ended since).
    const count = (list: string[]) => {
      const m: Record<string, number> = {};
      for (const k of list) m[k] = (m[k] ?? 0) + 1;
      return m;
    };
    const now = count(process.getActiveResourcesInfo());
    const was = count(before);
    for (const [kind, n] of Object.entries(now)) expect(n, kind).toBeLessThanOrEqual(was[kind] ?? 0);
  });
});

describe("what a guest may not smuggle past the checks", () => {
  // Raw bytes on a guest connection to api.example.com:80, and what came back.
  async function raw(proxy: EgressProxy, bytes: string): Promise<string> {
    const g = await guest(proxy, { ...API, port: 80 });
    let got = "";
    g.on("data", (c: Buffer) => (got += c.toString()));
    g.write(bytes);
    await Promise.race([closed(g), new Promise((r) => setTimeout(r, 1500))]);
    g.destroy();
    return got;
  }

  it("refuses a target naming another authority, and a second Host", async () => {
    const s = secrets();
    const proxy = await start({ secrets: s });
    const auth = `Authorization: token ${s[0]!.placeholder}\r\n`;
    const absolute = await raw(proxy, `GET http://attacker.example/x HTTP/1.1\r\nHost: api.example.com\r\n${auth}\r\n`);
    expect(absolute).toMatch(/^HTTP\/1\.1 403[\s\S]*only origin-form request targets/);
    const twoHosts = await raw(proxy, `GET / HTTP/1.1\r\nHost: api.example.com\r\nHost: attacker.example\r\n${auth}\r\n`);
    expect(twoHosts).toMatch(/^HTTP\/1\.1 (400|403)/);
    expect(seen).toEqual([]);
  });

  it("keeps a body framed: Connection cannot remove Content-Length, and a chunked body stays chunked", async () => {
    const proxy = await start();
    const smuggled = "GET /smuggled HTTP/1.1\r\nHost: attacker.example\r\n\r\n";
    await raw(proxy, `GET / HTTP/1.1\r\nHost: api.example.com\r\nConnection: content-length\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`);
    await raw(
      proxy,
      `GET / HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`,
    );
    expect(seen.map((e) => e.line)).toEqual(["GET /", "GET /"]);
    expect(seen.map((e) => e.body)).toEqual([smuggled.length, smuggled.length]);
  });

  it("takes connections only from 127.0.0.1, where the VM helper connects from", async () => {
    const proxy = await start({ recordWait: 60_000 });
    const other = connect({ port: proxy.port, host: "127.0.0.1", localAddress: "127.0.0.2" });
    other.on("error", () => {});
    // Closed at once, not held for a record for a minute.
    const ended = await Promise.race([closed(other).then(() => "closed"), new Promise((r) => setTimeout(() => r("held"), 1000))]);
    expect(ended).toBe("closed");
    expect(proxy.stats().waiting).toBe(0);
    other.destroy();
  });
});
