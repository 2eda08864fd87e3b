// The host-side egress proxy: the VM helper connects some guest TCP connections (to port 80 or
// 443) here instead of their destination and reports each as a RedirectRecord. Intercepted
// connections are parsed as HTTP/1.1 (TLS terminated with the sandbox CA's leaf) so secrets'
// placeholders become values for their hosts only, and injected headers are set; refused ones get a readable 403; tunnelled ones
// go through the user's proxy. Upstream is always the destination the guest asked for, by address.
import {
  createServer as createHttpServer,
  Agent as HttpAgent,
  request as httpRequest,
  type IncomingMessage,
  type RequestOptions,
  type Server,
  type ServerResponse,
} from "node:http";
import { createServer, isIPv6, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import { rootCertificates, TLSSocket, connect as tlsConnect } from "node:tls";
import { debuglog } from "node:util";

import { isHostname, type SandboxCA } from "./ca.js";
import { type InjectHeadersOption, injectionFor } from "./inject.js";
import { hostMatches, PLACEHOLDER_PREFIX, type Secret } from "./secrets.js";
import { dial, type EgressProxyUrl } from "./upstream.js";

const debug = debuglog("microsandbox:egress");

/** What the VM helper reports for each connection it redirected here (proto/vmm.proto's Redirect). */
export interface RedirectRecord {
  /** The redirected connection's source port, as this proxy sees it (the accepted socket's remotePort). */
  localPort: number;
  /** The destination the guest asked for. */
  address: string;
  port: number;
  kind: "intercept" | "refused" | "tunnel";
  /** The refusing rule's token, for "refused". */
  rule: string;
  /** The DNS names the helper saw resolve to `address`, newest first. */
  names: readonly string[];
}

export interface EgressProxyOptions {
  /** The checked secrets (checkSecrets). */
  secrets?: readonly Secret[];
  /** Headers set on requests to their hosts (checkInjectHeaders). */
  inject?: InjectHeadersOption;
  /** Terminates TLS for intercepted and refused connections to 443; without it those are closed. */
  ca?: SandboxCA;
  /** Words for a refusing rule token ("-10.0.0.0/8", "-d:evil.com", ""), for the 403's body. */
  describeRule?: (token: string) => string;
  /** The user's proxy (checkEgressProxy): tunnelled connections and intercepted requests go through it. */
  egressProxy?: EgressProxyUrl;
  /** How long an accepted connection waits for its record, ms (2000). */
  recordWait?: number;
  /** @internal Extra CA certificates trusted upstream, next to Node's own: for tests. */
  upstreamCAs?: readonly string[];
  /** @internal Where intercepted connections to port 80 or 443 really go: tests' servers listen on free ports. */
  upstreamPorts?: Readonly<Record<number, number>>;
}

export interface EgressStats {
  /** Connections open now, and waiting for their record. */
  open: number;
  waiting: number;
  /** Records not yet matched by a connection. */
  records: number;
  /** Connections closed because no record came. */
  unmatched: number;
  intercepted: number;
  refused: number;
  tunnelled: number;
  /** HTTP requests forwarded, and refused for a Host not among the names or not the TLS name. */
  requests: number;
  hostRefusals: number;
  /** Requests refused because a secret's placeholder was bound for a host or place it may not go. */
  secretRefusals: number;
}

/** The default words for a rule token: the token itself, or that no rule admits the destination. */
export const defaultDescribeRule = (token: string): string => (token === "" ? "no rule admits it" : `rule ${token}`);

const MAX_WAITING = 256;
// Open guest connections per sandbox: past it the host refuses more rather than run out of descriptors.
const MAX_CONNECTIONS = 1024;
const MAX_RECORDS = 4096;
// A record older than this is stale: its connection never came, and the port may be reused.
const RECORD_TTL = 30_000;
const HANDSHAKE_TIMEOUT = 10_000;
const CONNECT_TIMEOUT = 10_000;
const IDLE_TIMEOUT = 120_000;
// The accepted socket itself: longer, since a tunnel carries whatever protocol it carries.
const TUNNEL_IDLE_TIMEOUT = 600_000;
// A refused connection: how much of the request head is read, and for how long, before the 403.
const REFUSAL_HEAD = 16 * 1024;
const REFUSAL_WAIT = 3_000;
const REFUSAL_LINGER = 2_000;
// Per connection, not forwarded: RFC 9110's hop-by-hop fields, and a proxy's.
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"]);

interface Connection {
  record: RedirectRecord;
  /** The guest's TLS server name, for connections to 443. */
  servername: string | undefined;
  tls: boolean;
  /** What to destroy to close it: the accepted socket and the TLS socket over it. */
  sockets: Duplex[];
}

interface UpstreamOptions {
  host: string;
  port: number;
  tls: boolean;
  servername: string;
}

const hostPort = (host: string, port: number) => (isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`);
const canonicalName = (name: string) => name.toLowerCase().replace(/\.$/, "");

/** The Host header's name, lowercase, without port or trailing dot. */
function hostName(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const name = header.startsWith("[") ? header.slice(1, header.indexOf("]")) : header.replace(/:\d*$/, "");
  return name ? canonicalName(name) : undefined;
}

export class EgressProxy {
  private readonly server = createServer((socket) => this.accept(socket));
  // Never listens: intercepted connections are handed to it, plain or after TLS.
  private readonly http: Server;
  private readonly agent: HttpAgent;
  private readonly waiting = new Map<number, { socket: Socket; timer: NodeJS.Timeout }>();
  private readonly records = new Map<number, { record: RedirectRecord; at: number }>();
  private readonly open = new Map<Socket, Connection>();
  private readonly connections = new WeakMap<Duplex, Connection>();
  // Every socket this proxy made or accepted, so close() leaves none behind.
  private readonly sockets = new Set<Duplex>();
  private readonly counts = { unmatched: 0, intercepted: 0, refused: 0, tunnelled: 0, requests: 0, hostRefusals: 0, secretRefusals: 0 };
  private secrets: readonly Secret[];
  private inject: InjectHeadersOption;
  private ca: SandboxCA | undefined;
  private describeRule: (token: string) => string;
  private closed = false;

  private constructor(private readonly opts: EgressProxyOptions) {
    this.ca = opts.ca;
    this.secrets = opts.secrets ?? [];
    this.inject = opts.inject ?? {};
    this.describeRule = opts.describeRule ?? defaultDescribeRule;
    this.http = createHttpServer({ keepAliveTimeout: 60_000 }, (req, res) => this.onRequest(req, res));
    this.http.setTimeout(IDLE_TIMEOUT);
    this.http.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
    const proxy = this;
    // Upstream connections are kept alive and reused per destination address, port and TLS name.
    this.agent = new (class extends HttpAgent {
      override getName(o: UpstreamOptions) {
        return `${o.host}:${o.port}:${o.tls ? o.servername : ""}`;
      }
      // Node's Agent calls this with the request's options and takes the socket through `cb`.
      override createConnection(o: UpstreamOptions, cb: (err: Error | null, socket?: Duplex) => void): undefined {
        proxy.connectUpstream(o).then((s) => cb(null, s), cb);
      }
    })({ keepAlive: true, maxSockets: 32, maxFreeSockets: 8, timeout: IDLE_TIMEOUT, scheduling: "lifo" });
  }

  /** Listens on 127.0.0.1, on a free port unless `port` is given. */
  static async start(opts: EgressProxyOptions = {}, port = 0): Promise<EgressProxy> {
    const proxy = new EgressProxy(opts);
    proxy.server.maxConnections = MAX_CONNECTIONS;
    await new Promise<void>((resolve, reject) => {
      proxy.server.once("error", reject);
      proxy.server.listen(port, "127.0.0.1", () => (proxy.server.off("error", reject), resolve()));
    });
    return proxy;
  }

  /** The port the VM helper connects redirected connections to. */
  get port(): number {
    const address = this.server.address();
    return typeof address === "object" && address ? address.port : 0;
  }

  /** A record from the VM helper; it may come before or after its connection is accepted. */
  redirect(record: RedirectRecord): void {
    if (this.closed) return;
    const r: RedirectRecord = { ...record, names: record.names.map(canonicalName) };
    const waiting = this.waiting.get(r.localPort);
    if (waiting) {
      clearTimeout(waiting.timer);
      this.waiting.delete(r.localPort);
      this.dispatch(waiting.socket, r);
      return;
    }
    this.records.delete(r.localPort);
    this.records.set(r.localPort, { record: r, at: Date.now() });
    if (this.records.size > MAX_RECORDS) this.records.delete(this.records.keys().next().value!);
  }

  /**
   * Replaces the secrets, the injected headers, the rules' words, and gives a CA (the first secrets of a running
   * sandbox); requests from now on use them. Open connections a new policy refuses are shut by
   * the VM helper, which knows where each was going.
   */
  update(opts: { secrets?: readonly Secret[]; inject?: InjectHeadersOption; describeRule?: (token: string) => string; ca?: SandboxCA }): void {
    if (opts.secrets) this.secrets = opts.secrets;
    if (opts.inject) this.inject = opts.inject;
    if (opts.describeRule) this.describeRule = opts.describeRule;
    if (opts.ca) this.ca = opts.ca;
  }

  stats(): EgressStats {
    return { open: this.open.size, waiting: this.waiting.size, records: this.records.size, ...this.counts };
  }

  /** Stops listening and closes every connection, upstream ones included. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const { timer } of this.waiting.values()) clearTimeout(timer);
    this.waiting.clear();
    this.records.clear();
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    this.open.clear();
    this.agent.destroy();
    await done;
  }

  private track<T extends Duplex>(socket: T): T {
    if (this.closed) {
      socket.destroy();
      return socket;
    }
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
    // Errors end the connection ('close' follows); they are the peers' business, not a crash.
    socket.on("error", (err) => debug("socket: %s", err.message));
    return socket;
  }

  private accept(socket: Socket): void {
    this.track(socket);
    const port = socket.remotePort;
    // The VM helper connects from 127.0.0.1: with that fixed, a port names one connection, and a
    // local process connecting from another loopback address cannot stand in for a guest's.
    if (this.closed || port === undefined || socket.remoteAddress !== "127.0.0.1" || this.waiting.has(port)) return void socket.destroy();
    const found = this.records.get(port);
    this.records.delete(port);
    if (found && Date.now() - found.at < RECORD_TTL) {
      this.dispatch(socket, found.record);
      return;
    }
    if (this.waiting.size >= MAX_WAITING) {
      this.counts.unmatched++;
      return void socket.destroy();
    }
    const timer = setTimeout(() => {
      this.waiting.delete(port);
      this.counts.unmatched++;
      debug("no record for port %d within %d ms", port, this.opts.recordWait ?? 2000);
      socket.destroy();
    }, this.opts.recordWait ?? 2000);
    this.waiting.set(port, { socket, timer });
    socket.once("close", () => {
      if (this.waiting.get(port)?.socket === socket) clearTimeout(timer), this.waiting.delete(port);
    });
  }

  private dispatch(socket: Socket, record: RedirectRecord): void {
    const tls = record.port === 443;
    const conn: Connection = { record, servername: undefined, tls, sockets: [socket] };
    this.open.set(socket, conn);
    socket.once("close", () => this.open.delete(socket));
    socket.setTimeout(TUNNEL_IDLE_TIMEOUT, () => socket.destroy());
    if (record.kind === "tunnel") {
      this.tunnel(socket, record);
      return;
    }
    if (record.kind === "refused") this.counts.refused++;
    else this.counts.intercepted++;
    const serve = (s: Duplex) => {
      this.connections.set(s, conn);
      if (record.kind === "refused") this.refuse(s, record);
      else this.http.emit("connection", s);
    };
    if (!tls) {
      serve(socket);
      return;
    }
    if (!this.ca) return void socket.destroy();
    this.terminateTls(socket, conn).then(serve, (err: Error) => (debug("TLS from the guest: %s", err.message), socket.destroy()));
  }

  /** The guest's TLS, ended here with a leaf for its server name (or the address, without one). */
  private async terminateTls(socket: Socket, conn: Connection): Promise<TLSSocket> {
    const ca = this.ca!;
    const fallback = await ca.leafContext(conn.record.address);
    const tls = this.track(
      new TLSSocket(socket, {
        isServer: true,
        secureContext: fallback,
        ALPNProtocols: ["http/1.1"],
        SNICallback: (name, cb) => {
          const n = canonicalName(name);
          if (!isHostname(n)) return cb(null, fallback);
          ca.leafContext(n).then((c) => cb(null, c), cb);
        },
      }),
    );
    conn.sockets.push(tls);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the guest's TLS handshake took too long")), HANDSHAKE_TIMEOUT);
      tls.once("secure", () => (clearTimeout(timer), resolve()));
      tls.once("close", () => (clearTimeout(timer), reject(new Error("closed during the TLS handshake"))));
    });
    conn.servername = typeof tls.servername === "string" ? canonicalName(tls.servername) : undefined;
    return tls;
  }

  /** A 403 naming the rule, once the request head is in (or 16 KiB, or a few seconds). */
  private refuse(socket: Duplex, record: RedirectRecord): void {
    let words: string;
    try {
      words = this.describeRule(record.rule);
    } catch {
      words = defaultDescribeRule(record.rule);
    }
    const text = `microsandbox: ${hostPort(record.address, record.port)} is refused by the sandbox's network policy (${words})`;
    let head = "";
    let replied = false;
    const reply = () => {
      if (replied) return;
      replied = true;
      clearTimeout(wait);
      socket.end(rawResponse("403 Forbidden", text));
      // Whatever the guest still sends is read and dropped, so its kernel sees no reset before the answer.
      const linger = setTimeout(() => socket.destroy(), REFUSAL_LINGER);
      socket.once("close", () => clearTimeout(linger));
    };
    const wait = setTimeout(reply, REFUSAL_WAIT);
    socket.once("close", () => clearTimeout(wait));
    socket.on("data", (chunk: Buffer) => {
      if (replied) return;
      head += chunk.toString("latin1");
      if (head.includes("\r\n\r\n") || head.length >= REFUSAL_HEAD) reply();
    });
    socket.once("end", reply);
  }

  private tunnel(socket: Socket, record: RedirectRecord): void {
    this.counts.tunnelled++;
    const proxy = this.opts.egressProxy;
    // Tunnelling without a proxy would be a direct connection: fail closed.
    if (!proxy) return void socket.destroy();
    socket.pause();
    dial(record.address, record.port, proxy, CONNECT_TIMEOUT).then(
      (up) => {
        this.track(up);
        if (socket.destroyed) return void up.destroy();
        this.open.get(socket)?.sockets.push(up);
        up.once("close", () => socket.destroy());
        socket.once("close", () => up.destroy());
        socket.pipe(up);
        up.pipe(socket);
        socket.resume();
      },
      (err: Error) => (debug("tunnel to %s: %s", hostPort(record.address, record.port), err.message), socket.destroy()),
    );
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const conn = this.connections.get(req.socket);
    if (!conn) return void res.destroy();
    const checked = this.check(req, conn, false);
    if (typeof checked === "string") {
      this.deny(res, checked);
      return;
    }
    this.counts.requests++;
    const { record } = conn;
    const up = httpRequest({
      host: record.address,
      port: record.port,
      method: req.method,
      path: req.url,
      headers: checked.headers,
      setHost: false,
      agent: this.agent,
      // For the agent: how to reach it and which name to verify.
      tls: conn.tls,
      servername: checked.host,
    } as RequestOptions);
    up.on("response", (ures) => {
      res.writeHead(ures.statusCode ?? 502, ures.statusMessage, withoutHopByHop(ures.rawHeaders, false));
      ures.pipe(res);
      ures.once("error", () => res.destroy());
    });
    up.on("error", (err) => {
      debug("upstream %s: %s", hostPort(record.address, record.port), err.message);
      if (res.headersSent) return void res.destroy();
      const body = `microsandbox: could not reach ${checked.host} at ${hostPort(record.address, record.port)}: ${err.message}\n`;
      res.writeHead(502, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body) }).end(body);
    });
    // The guest gone before the answer ended: so is the upstream request.
    res.once("close", () => res.writableFinished || up.destroy());
    req.pipe(up);
  }

  /** WebSocket and other upgrades: checked like a request, then bytes both ways. */
  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const conn = this.connections.get(req.socket);
    if (!conn) return void socket.destroy();
    const checked = this.check(req, conn, true);
    if (typeof checked === "string") {
      socket.end(rawResponse("403 Forbidden", checked));
      return;
    }
    this.counts.requests++;
    const { record } = conn;
    this.connectUpstream({ host: record.address, port: record.port, tls: conn.tls, servername: checked.host }).then(
      (up) => {
        if (socket.destroyed) return void up.destroy();
        conn.sockets.push(up);
        let text = `${req.method} ${req.url} HTTP/1.1\r\n`;
        for (let i = 0; i < checked.headers.length; i += 2) text += `${checked.headers[i]}: ${checked.headers[i + 1]}\r\n`;
        up.write(`${text}\r\n`, "latin1");
        if (head.length) up.write(head);
        up.once("close", () => socket.destroy());
        socket.once("close", () => up.destroy());
        socket.pipe(up);
        up.pipe(socket);
      },
      (err: Error) => {
        socket.end(rawResponse("502 Bad Gateway", `microsandbox: could not reach ${checked.host} at ${hostPort(record.address, record.port)}: ${err.message}`));
      },
    );
  }

  /**
   * The request's Host against the record's names and the TLS name, then the secrets: the headers
   * to send upstream with placeholders replaced and the host's injected headers set (the guest's
   * own of those names dropped, unread), or why the request is refused.
   */
  private check(req: IncomingMessage, conn: Connection, upgrade: boolean): { host: string; headers: string[] } | string {
    const { record } = conn;
    // One Host, and a target in origin form ("/path"): a target naming another authority, or a
    // second Host, could route the request (and a secret in it) to a host other than the one checked.
    if (!(req.url ?? "").startsWith("/") && req.url !== "*") return "microsandbox: only origin-form request targets (/path) are forwarded";
    if (req.rawHeaders.filter((_, i) => i % 2 === 0 && req.rawHeaders[i]!.toLowerCase() === "host").length !== 1) {
      return "microsandbox: a request needs exactly one Host header";
    }
    const host = hostName(req.headers.host);
    const where = hostPort(record.address, record.port);
    if (!host || !record.names.includes(host)) {
      this.counts.hostRefusals++;
      const names = record.names.length ? `: it resolved ${record.names.join(", ")}` : ": it resolved no name to it";
      return `microsandbox: Host ${JSON.stringify(req.headers.host ?? "")} is not a name the sandbox looked up for ${where}${names}`;
    }
    if (conn.tls && host !== conn.servername) {
      this.counts.hostRefusals++;
      return `microsandbox: Host ${JSON.stringify(host)} is not the TLS server name ${JSON.stringify(conn.servername ?? "(none)")} of this connection`;
    }
    const secretRefusal = (text: string) => (this.counts.secretRefusals++, `microsandbox: ${text}`);
    const secrets = this.secrets;
    const url = req.url ?? "";
    if (url.includes(PLACEHOLDER_PREFIX)) {
      for (const s of secrets) {
        if (url.includes(s.placeholder)) return secretRefusal(`secret ${s.name} may not be sent in the URL: send it in a header`);
      }
    }
    const injected = injectionFor(host, this.inject);
    const headers = withoutHopByHop(req.rawHeaders, upgrade, injected);
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!;
      let value = headers[i + 1]!;
      if (!value.includes(PLACEHOLDER_PREFIX) && !name.includes(PLACEHOLDER_PREFIX)) continue;
      const lower = name.toLowerCase();
      for (const s of secrets) {
        if (name.includes(s.placeholder)) return secretRefusal(`secret ${s.name} may not be sent as a header name`);
        if (!value.includes(s.placeholder)) continue;
        if (!hostMatches(host, s.hosts)) return secretRefusal(`secret ${s.name} may not be sent to ${host}`);
        if (s.headers && !s.headers.includes(lower)) {
          return secretRefusal(`secret ${s.name} may not be sent in header ${lower} (only in ${s.headers.join(", ")})`);
        }
        value = value.split(s.placeholder).join(s.value);
      }
      headers[i + 1] = value;
    }
    // A chunked body was unframed with Transfer-Encoding (hop-by-hop): frame it again upstream, or
    // Node would write it raw after a GET, where the next bytes read as another request.
    if (req.headers["transfer-encoding"] !== undefined && !upgrade) headers.push("Transfer-Encoding", "chunked");
    for (const [name, value] of Object.entries(injected ?? {})) headers.push(name, value);
    return { host, headers };
  }

  private deny(res: ServerResponse, text: string): void {
    const body = `${text}\n`;
    res.writeHead(403, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body) }).end(body);
  }

  /** A connection to the destination (through the user's proxy if set), TLS-verified for 443. */
  private async connectUpstream(o: UpstreamOptions): Promise<Duplex> {
    const port = this.opts.upstreamPorts?.[o.port] ?? o.port;
    const raw = this.track(await dial(o.host, port, this.opts.egressProxy, CONNECT_TIMEOUT));
    if (!o.tls) return raw;
    const extra = this.opts.upstreamCAs;
    const tls = this.track(
      tlsConnect({
        socket: raw as Socket,
        servername: o.servername,
        ALPNProtocols: ["http/1.1"],
        ...(extra?.length && { ca: [...rootCertificates, ...extra] }),
      }),
    );
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => tls.destroy(new Error(`the TLS handshake with ${o.servername} took too long`)), HANDSHAKE_TIMEOUT);
      tls.once("secureConnect", () => (clearTimeout(timer), tls.off("error", reject), resolve()));
      tls.once("error", (err) => (clearTimeout(timer), reject(err)));
    });
    return tls;
  }
}

/** A whole HTTP/1.1 response with a text body, for sockets no http.Server answers on. */
function rawResponse(status: string, text: string): string {
  const body = `${text}\n`;
  return `HTTP/1.1 ${status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

/**
 * `raw` (rawHeaders form) without hop-by-hop fields, nor those its Connection header names, nor
 * those `replaced` sets; an upgrade keeps Connection and Upgrade.
 */
function withoutHopByHop(raw: readonly string[], upgrade: boolean, replaced?: Record<string, string>): string[] {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === "connection") for (const n of raw[i + 1]!.split(",")) named.add(n.trim().toLowerCase());
  }
  // What frames the message, and where it goes, are never the Connection header's to remove.
  for (const kept of ["content-length", "host"]) named.delete(kept);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const keep = upgrade && (name === "connection" || name === "upgrade");
    if (!keep && (HOP_BY_HOP.has(name) || (named.has(name) && !upgrade))) continue;
    if (replaced && Object.hasOwn(replaced, name)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}
