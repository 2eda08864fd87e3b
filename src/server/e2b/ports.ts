// getHost(port): PORT-ID.DOMAIN, reached through this server with that Host header, carried to
// the guest's 127.0.0.1:PORT over guest relay connections (guest-relay.ts).
//
// Plain requests go one by one, each routed by its own Host: an HTTP client pools connections by
// the address it dials, not by the Host header, so one client connection may carry requests for
// the server's API and for several ports in turn. This server's parser frames each request and
// the guest connection's parser (node's HTTP client) frames each response; bodies stream through
// with backpressure both ways, never whole in memory. Each client connection keeps one guest
// connection per port, reused while both sides keep alive, and ends it when the client leaves;
// pipelined requests wait their turn on it, in order.
//
// An Upgrade request (WebSocket) takes the client's connection: its head goes to the guest as it
// came, and from then on bytes flow both ways untouched until either side ends.
import { Agent, type IncomingMessage, request, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";

import { InvalidArgumentError } from "../../errors.js";
import { PortUnreachableError } from "../errors.js";
import { closeGently, sendError, sendRawError } from "../http.js";
import { GuestConnection } from "./guest-relay.js";
import type { E2bSandboxes } from "./shared.js";

/** The sandbox id and guest port a Host header names (PORT-ID.DOMAIN), if it names one. */
export function portHost(host: string | undefined): { port: number; id: string } | undefined {
  const m = /^(\d{1,5})-([0-9a-f]{16})\./.exec(host ?? "");
  return m ? { port: Number(m[1]), id: m[2]! } : undefined;
}

/** The request's head as it came: request line, headers (less those in `drop`), blank line. */
export function requestHead(req: IncomingMessage, drop: ReadonlySet<string> = new Set()): Buffer {
  const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (!drop.has(req.rawHeaders[i]!.toLowerCase())) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
  }
  return Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1");
}

// Headers about one hop's connection, not the message: each hop sets its own.
const HOP = new Set(["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"]);

/** `raw` headers (name, value, ...) less the hop-by-hop ones and those Connection names. */
function endToEnd(raw: string[], connection: string | undefined): string[] {
  const named = new Set((connection ?? "").split(",").map((t) => t.trim().toLowerCase()));
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (!HOP.has(k) && !named.has(k)) out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/** A client connection's guest connections to one port: one at a time, kept alive between requests. */
class GuestAgent extends Agent {
  constructor(private readonly open: () => GuestConnection) {
    super({ keepAlive: true, maxSockets: 1 });
  }
  override createConnection(): Socket {
    return this.open() as unknown as Socket;
  }
  // Agent's own versions set TCP options and ref counts a guest connection does not have.
  override keepSocketAlive(): boolean {
    return true;
  }
  override reuseSocket(): void {}
}

/**
 * The getHost relay; `wake(id)` first resumes sandbox `id` if it is paused and its lifecycle says
 * traffic resumes it (autoResume), as E2B's traffic does.
 */
export function portProxy(sandboxes: E2bSandboxes, wake: (id: string) => Promise<void>) {
  const agents = new WeakMap<Socket, Map<string, GuestAgent>>();

  function target(port: number, id: string) {
    if (!(port >= 1 && port <= 65535)) throw new InvalidArgumentError(`port ${port} is invalid: give 1 to 65535`);
    const found = sandboxes.running(id);
    if (!found) throw new PortUnreachableError(`sandbox ${id} is not running`);
    return () => new GuestConnection(found.m.sandbox, port, id);
  }

  /** The client connection's agent for `key`; its guest connections go when the client does. */
  function agentFor(client: Socket, key: string, open: () => GuestConnection): GuestAgent {
    let mine = agents.get(client);
    if (!mine) {
      const made = new Map<string, GuestAgent>();
      agents.set(client, made);
      client.once("close", () => {
        for (const a of made.values()) a.destroy();
      });
      mine = made;
    }
    const agent = mine.get(key) ?? new GuestAgent(open);
    mine.set(key, agent);
    return agent;
  }

  /** Relays one request to `port` in sandbox `id` and its response back. */
  async function relay(req: IncomingMessage, res: ServerResponse, port: number, id: string): Promise<void> {
    await wake(id);
    const agent = agentFor(req.socket, `${id}:${port}`, target(port, id));
    const headers = endToEnd(req.rawHeaders, req.headers.connection);
    // Node frames the body again: chunked as it came chunked, else by its Content-Length.
    if (req.headers["transfer-encoding"]) headers.push("Transfer-Encoding", "chunked");
    const out = request({ agent, method: req.method, path: req.url, headers, setHost: false });
    res.once("close", () => {
      if (!res.writableFinished) out.destroy(); // the client left first
    });
    out.on("error", (err) => {
      if (res.headersSent) return void res.destroy();
      // The client is still sending a body nobody reads: its connection cannot carry another request.
      if (!req.complete) res.setHeader("connection", "close");
      sendError(res, err instanceof PortUnreachableError ? err : new PortUnreachableError(`port ${port} in sandbox ${id}: ${err.message}`));
    });
    out.once("response", (answer) => {
      res.writeHead(answer.statusCode!, answer.statusMessage, endToEnd(answer.rawHeaders, answer.headers.connection));
      res.flushHeaders();
      answer.pipe(res);
      answer.once("close", () => {
        if (!answer.complete) res.destroy(); // the guest side broke off mid-answer
      });
    });
    // The head goes at once: a client may wait for the answer's head before it sends its body.
    out.flushHeaders();
    req.pipe(out);
  }

  /** Carries an Upgrade request's connection to `port` in sandbox `id`, byte for byte, both ways. */
  async function upgrade(req: IncomingMessage, client: Duplex, head: Buffer, port: number, id: string): Promise<void> {
    let guest: GuestConnection;
    try {
      await wake(id);
      if (client.destroyed) return; // the client left while the sandbox resumed
      guest = target(port, id)();
    } catch (err) {
      sendRawError(client, err);
      return;
    }
    guest.write(requestHead(req));
    if (head.length) guest.write(head);
    client.pipe(guest); // the client's end shuts down the relay's sending side
    guest.pipe(client, { end: false });
    // The relay exits when the guest server ends its side: nothing more can reach it.
    guest.once("end", () => closeGently(client));
    guest.on("error", (err) => (guest.received ? client.destroy() : sendRawError(client, err)));
    client.on("error", () => guest.destroy());
    client.once("close", () => guest.destroy());
  }

  return { relay, upgrade };
}
