// One connection to a guest agent: the socket, frame I/O, the handshake, and the table of open
// sessions that incoming frames are routed to. The public surface is AgentClient (client.ts).
import type { Duplex } from "node:stream";
import { debuglog } from "node:util";

import { AgentConnectionError, AgentProtocolError, abortError, TimeoutError } from "../errors.js";
import { encodeFrame, FrameDecoder, type GuestFrame, MAX_SESSIONS, PROTOCOL_VERSION, toNumber } from "./protocol.js";

const debug = debuglog("microsandbox");

/** Receives the frames of one session; `fail` ends it when the connection dies. */
export interface SessionSink {
  frame(f: GuestFrame): void;
  fail(err: Error): void;
}

export interface AgentHello {
  protocolVersion: number;
  agentVersion: string;
  /** Guest boot milestones, in nanoseconds since the guest kernel started. */
  boot: { name: string; ns: number }[];
  pid: number;
  /** 0 after a boot; after a resume, the generation it carried (a restored copy's own). */
  generation: number;
}

export class Channel {
  private readonly sessions = new Map<number, SessionSink>();
  private readonly decoder = new FrameDecoder();
  private nextId = 1;
  private helloWaiter: { resolve(h: AgentHello): void; reject(e: Error): void } | undefined;
  private suspendWaiter: { resolve(): void; reject(e: Error): void } | undefined;
  private drainWaiters: (() => void)[] = [];
  error: Error | undefined;

  constructor(private readonly socket: Duplex) {
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("drain", () => this.wakeDrain());
    socket.on("error", (err) => this.fail(new AgentConnectionError(`agent connection failed: ${err.message}`, { cause: err })));
    socket.on("close", () => this.fail(new AgentConnectionError("the agent closed the connection")));
  }

  /**
   * Waits for the guest's Hello and checks the protocol version: the first frame of a connection,
   * or the answer to a Resume.
   */
  handshake(timeoutSeconds: number, signal?: AbortSignal): Promise<AgentHello> {
    return new Promise<AgentHello>((resolve, reject) => {
      if (this.error) return reject(this.error);
      const timer = setTimeout(() => {
        const err = new TimeoutError(`the agent sent no hello within ${timeoutSeconds} s`);
        this.close(err);
      }, timeoutSeconds * 1000);
      const onAbort = () => this.close(abortError(signal!));
      signal?.addEventListener("abort", onAbort, { once: true });
      const settle = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.helloWaiter = undefined;
      };
      this.helloWaiter = {
        resolve: (h) => (settle(), resolve(h)),
        reject: (e) => (settle(), reject(e)),
      };
    });
  }

  /** Waits for the Suspended that answers a Suspend; on timeout the connection is closed. */
  suspended(timeoutSeconds: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.error) return reject(this.error);
      const timer = setTimeout(() => this.close(new TimeoutError(`the agent did not suspend within ${timeoutSeconds} s`)), timeoutSeconds * 1000);
      const settle = () => (clearTimeout(timer), (this.suspendWaiter = undefined));
      this.suspendWaiter = { resolve: () => (settle(), resolve()), reject: (e) => (settle(), reject(e)) };
    });
  }

  /** Registers a session and returns its id. */
  open(sink: SessionSink): number {
    if (this.error) throw this.error;
    if (this.sessions.size >= MAX_SESSIONS) {
      throw new AgentConnectionError(`too many open sessions on one connection (limit ${MAX_SESSIONS})`);
    }
    while (this.sessions.has(this.nextId)) this.advance();
    const id = this.nextId;
    this.advance();
    this.sessions.set(id, sink);
    return id;
  }

  /** Registers a session the agent already has (kept across a restore) under its own id. */
  adopt(id: number, sink: SessionSink): void {
    if (this.error) throw this.error;
    if (this.sessions.has(id)) throw new AgentConnectionError(`session ${id} is open already`);
    this.sessions.set(id, sink);
  }

  private advance(): void {
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
  }

  /** Forgets a session: later frames for it are dropped. */
  release(id: number): void {
    this.sessions.delete(id);
  }

  /** Sends one frame; false when the socket's buffer is full (await drain() before bulk data). */
  send(message: Record<string, unknown>): boolean {
    if (this.error) throw this.error;
    return this.socket.write(encodeFrame(message));
  }

  drain(): Promise<void> {
    if (!this.socket.writableNeedDrain || this.error) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  private wakeDrain(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const w of waiters) w();
  }

  /** Ends the connection; every open session fails with `err`. */
  close(err: Error = new AgentConnectionError("the agent connection was closed")): void {
    this.fail(err);
    this.socket.destroy();
  }

  get closed(): boolean {
    return this.error !== undefined;
  }

  private fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    debug("agent channel closed: %s", err.message);
    this.helloWaiter?.reject(err);
    this.suspendWaiter?.reject(err);
    const sinks = [...this.sessions.values()];
    this.sessions.clear();
    for (const s of sinks) s.fail(err);
    this.wakeDrain();
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    try {
      for (const f of this.decoder.push(chunk)) {
        if (this.error) return;
        this.route(f);
      }
    } catch (err) {
      this.close(err instanceof AgentProtocolError ? err : new AgentProtocolError(String(err), { cause: err }));
    }
  }

  private route(f: GuestFrame): void {
    if (f.session === 0) {
      if (f.body === "hello" && f.hello) return this.onHello(f.hello);
      if (f.body === "suspended" && this.suspendWaiter) return this.suspendWaiter.resolve();
      if (f.body === "error" && f.error) {
        // A connection-level error means the agent could not parse something we sent: a bug here.
        throw new AgentProtocolError(`the agent rejected a frame: ${f.error.message}`);
      }
      throw new AgentProtocolError(`unexpected ${f.body || "empty"} frame on session 0`);
    }
    if (this.helloWaiter) throw new AgentProtocolError("the agent sent a session frame before its hello");
    // Frames for sessions that were released (cancelled, aborted) are expected and dropped.
    this.sessions.get(f.session)?.frame(f);
  }

  private onHello(h: NonNullable<GuestFrame["hello"]>): void {
    if (!this.helloWaiter) throw new AgentProtocolError("the agent sent a second hello");
    if (h.protocolVersion !== PROTOCOL_VERSION) {
      throw new AgentProtocolError(
        `the guest agent speaks protocol version ${h.protocolVersion}, this host speaks ${PROTOCOL_VERSION}: ` +
          "rebuild the agent with this package (npm rebuild microsandbox)",
      );
    }
    const hello: AgentHello = {
      protocolVersion: h.protocolVersion,
      agentVersion: h.agentVersion,
      boot: h.boot.map((e) => ({ name: e.name, ns: toNumber(e.tNs) })),
      pid: h.pid,
      generation: toNumber(h.generation),
    };
    debug("agent hello: version %s pid %d", hello.agentVersion, hello.pid);
    this.helloWaiter.resolve(hello);
  }
}
