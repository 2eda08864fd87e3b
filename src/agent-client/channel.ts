// One connection to a guest agent: the socket, frame I/O, the handshake, and the table of open
// sessions that incoming frames are routed to. The public surface is AgentClient (client.ts).
import type { Duplex } from "node:stream";
import { debuglog } from "node:util";

import { AgentConnectionError, AgentError, AgentProtocolError, abortError, InvalidArgumentError, TimeoutError } from "../errors.js";
import {
  encodeFrame,
  errorKindName,
  FrameDecoder,
  type GuestBody,
  type GuestFrame,
  type HostBody,
  MAX_SESSIONS,
  MAX_WINDOW_BYTES,
  PROTOCOL_VERSION,
} from "./protocol.js";

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
  /** 0 after a boot; after a resume that made the VM a copy, that resume's generation. */
  generation: number;
}

interface HelloWaiter {
  resolve(h: AgentHello): void;
  reject(e: Error): void;
  /** The connection's first hello: no session frame may come before it. */
  opening: boolean;
  /**
   * A lingering VM's port taken up again: what comes before the hello was written for the lost
   * host (the VMM kept it while no host was there), and is dropped.
   */
  leftovers?: boolean;
  /** Answering a Resume: the sessions it keeps, and whether frames were held before it was sent. */
  resume?: { keep: ReadonlySet<number>; heldBefore: boolean };
}

/** Frames of a session a Resume kept, waiting for adopt(). */
interface Parked {
  frames: GuestFrame[];
  outputBytes: number;
  ended: boolean;
}

export class Channel {
  private readonly sessions = new Map<number, SessionSink>();
  private readonly parked = new Map<number, Parked>();
  private readonly decoder = new FrameDecoder();
  private nextId = 1;
  private generation = 0;
  private helloWaiter: HelloWaiter | undefined;
  private suspendWaiter: { resolve(): void; reject(e: Error): void; promise: Promise<void> } | undefined;
  // From a Suspend (or a Resume) until the Hello answering the Resume, frames are held here, with
  // the sessions open when holding began: a VM is saved with no host byte in flight, and a copy's
  // conversation starts at its Hello.
  private held: { frames: { session: number; frame: Buffer }[]; sessions: Set<number> } | undefined;
  private drainWaiters: (() => void)[] = [];
  error: Error | undefined;

  constructor(private readonly socket: Duplex) {
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("drain", () => this.wakeDrain());
    socket.on("error", (err) => this.fail(new AgentConnectionError(`agent connection failed: ${err.message}`, { cause: err })));
    socket.on("close", () => this.fail(new AgentConnectionError("the agent closed the connection")));
  }

  /**
   * Waits for the guest's first Hello and checks the protocol version. With `leftovers`, frames
   * before it (a lost host's, on a lingering VM's port) are dropped instead of refused.
   */
  handshake(timeoutSeconds: number, signal?: AbortSignal, leftovers = false): Promise<AgentHello> {
    return this.awaitHello(timeoutSeconds, signal, { opening: true, leftovers });
  }

  private awaitHello(
    timeoutSeconds: number,
    signal: AbortSignal | undefined,
    kind: Pick<HelloWaiter, "opening" | "resume" | "leftovers">,
  ): Promise<AgentHello> {
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
        ...kind,
        resolve: (h) => (settle(), resolve(h)),
        reject: (e) => (settle(), reject(e)),
      };
    });
  }

  /**
   * Sends Suspend and waits for Suspended; on timeout the connection is closed. From the Suspend on,
   * what the host sends is held until a resume is answered.
   */
  suspend(timeoutSeconds: number): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    if (this.helloWaiter) return Promise.reject(new InvalidArgumentError("a resume is waiting for the agent's hello"));
    if (this.suspendWaiter) return this.suspendWaiter.promise;
    let settled!: { resolve(): void; reject(e: Error): void };
    const promise = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.close(new TimeoutError(`the agent did not suspend within ${timeoutSeconds} s`)), timeoutSeconds * 1000);
      const settle = () => {
        clearTimeout(timer);
        this.suspendWaiter = undefined;
      };
      settled = { resolve: () => (settle(), resolve()), reject: (e) => (settle(), reject(e)) };
    });
    this.suspendWaiter = { ...settled, promise };
    this.hold();
    this.socket.write(encodeFrame(0, { case: "suspend", value: {} }));
    return promise;
  }

  /**
   * Sends a Resume (written even while holding) and resolves with the Hello answering it. A new
   * generation (or `opening`: a new connection to a restored VM) ends every session open before
   * holding began: the agent killed those not in `keep`, and the kept ones carry on with fresh
   * credit for whoever adopt()s them. An Error the agent answers instead rejects with AgentError.
   */
  resume(message: HostBody, keep: readonly number[], timeoutSeconds: number, opts: { opening?: boolean; signal?: AbortSignal } = {}): Promise<AgentHello> {
    if (this.helloWaiter) return Promise.reject(new InvalidArgumentError("a resume is already waiting for the agent's hello"));
    const heldBefore = this.held !== undefined;
    const answer = this.awaitHello(timeoutSeconds, opts.signal, { opening: !!opts.opening, resume: { keep: new Set(keep), heldBefore } });
    if (!this.error) {
      this.hold();
      this.socket.write(encodeFrame(0, message));
    }
    return answer;
  }

  private hold(): void {
    this.held ??= { frames: [], sessions: new Set(this.sessions.keys()) };
  }

  // Writes what was held, but not the frames of sessions a restore ended (`ended`).
  private unhold(ended?: ReadonlySet<number>): void {
    const held = this.held;
    this.held = undefined;
    for (const { session, frame } of held?.frames ?? []) if (!ended?.has(session)) this.socket.write(frame);
  }

  /** Registers a session and returns its id. */
  open(sink: SessionSink): number {
    if (this.error) throw this.error;
    if (this.sessions.size >= MAX_SESSIONS) {
      throw new AgentConnectionError(`too many open sessions on one connection (limit ${MAX_SESSIONS})`);
    }
    // Ids of kept sessions belong to them, in the agent, until adopted or ended.
    while (this.sessions.has(this.nextId) || this.parked.has(this.nextId) || this.helloWaiter?.resume?.keep.has(this.nextId)) this.advance();
    const id = this.nextId;
    this.advance();
    this.sessions.set(id, sink);
    return id;
  }

  /**
   * Registers the sink of a session the last resume kept, under its own id, and hands it what the
   * agent sent for it since.
   */
  adopt(id: number, sink: SessionSink): void {
    if (this.error) throw this.error;
    const parked = this.parked.get(id);
    if (!parked) throw new InvalidArgumentError(`session ${id} was not kept by a resume of this connection, or was adopted already`);
    this.parked.delete(id);
    this.sessions.set(id, sink);
    try {
      for (const f of parked.frames) if (this.sessions.get(id) === sink) sink.frame(f);
    } catch (err) {
      this.close(err as Error);
    }
  }

  private advance(): void {
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
  }

  /** Forgets a session: later frames for it are dropped. */
  release(id: number): void {
    this.sessions.delete(id);
  }

  /**
   * Sends one frame; false when the socket's buffer is full (await drain() before bulk data).
   * `now`: written even while frames are held (Shutdown: the VM is not saved after all).
   */
  send(session: number, body: HostBody, now = false): boolean {
    if (this.error) throw this.error;
    const frame = encodeFrame(session, body);
    if (!this.held || now) return this.socket.write(frame);
    this.held.frames.push({ session, frame });
    return true;
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
  /** Sessions open now (kept ones of a restore not yet adopted are not counted). */
  get openSessions(): number {
    return this.sessions.size;
  }

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
    this.held = undefined;
    this.parked.clear();
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
    if (this.helloWaiter?.leftovers && !(f.session === 0 && f.body.case === "hello")) return;
    if (f.session === 0) {
      const b = f.body;
      if (b.case === "hello") {
        this.onHello(b.value);
        return;
      }
      if (b.case === "suspended" && this.suspendWaiter) {
        this.suspendWaiter.resolve();
        return;
      }
      if (b.case === "error") {
        if (this.helloWaiter?.resume) {
          this.refused(this.helloWaiter, b.value);
          return;
        }
        // A connection-level error means the agent could not parse something we sent: a bug here.
        throw new AgentProtocolError(`the agent rejected a frame: ${b.value.message}`);
      }
      throw new AgentProtocolError(`unexpected ${b.case ?? "empty"} frame on session 0`);
    }
    if (this.helloWaiter?.opening) throw new AgentProtocolError("the agent sent a session frame before its hello");
    const sink = this.sessions.get(f.session);
    if (sink) {
      sink.frame(f);
      return;
    }
    const parked = this.parked.get(f.session);
    // Frames for sessions that were released (cancelled, aborted) are expected and dropped.
    if (parked) this.park(f.session, parked, f);
  }

  // Until adopted, a kept session may send at most a window of output and its terminal frame.
  private park(id: number, parked: Parked, f: GuestFrame): void {
    if (f.body.case === "output") parked.outputBytes += f.body.value.data.length;
    if (parked.ended || parked.outputBytes > MAX_WINDOW_BYTES) {
      throw new AgentProtocolError(`the agent sent more for kept session ${id} than its credit and one terminal frame`);
    }
    parked.ended = f.body.case !== "output";
    parked.frames.push(f);
  }

  // The agent refused a Resume (out of bounds): that call fails, the connection goes on, and frames
  // are held still if the agent is still suspended.
  private refused(waiter: HelloWaiter, e: GuestBody<"error">): void {
    const kind = errorKindName(e.kind);
    if (!waiter.resume!.heldBefore) this.unhold();
    waiter.reject(new AgentError(`the agent refused the resume (${kind}): ${e.message}`, kind));
  }

  private onHello(h: GuestBody<"hello">): void {
    const waiter = this.helloWaiter;
    if (!waiter) throw new AgentProtocolError("the agent sent a second hello");
    if (h.protocolVersion !== PROTOCOL_VERSION) {
      throw new AgentProtocolError(
        `the guest agent speaks protocol version ${h.protocolVersion}, this host speaks ${PROTOCOL_VERSION}: ` +
          "use the agent of this package's version: its platform package (@microsandbox/OS-CPU) at the same version, " +
          "or in a checkout make -C native/agent; MSB_AGENT_PATH, if set, names another",
      );
    }
    const hello: AgentHello = {
      protocolVersion: h.protocolVersion,
      agentVersion: h.agentVersion,
      boot: h.boot.map((e) => ({ name: e.name, ns: Number(e.tNs) })),
      pid: h.pid,
      generation: Number(h.generation),
    };
    debug("agent hello: version %s pid %d generation %d", hello.agentVersion, hello.pid, hello.generation);
    // Done here, before the frames that follow the Hello are routed: they belong to the new state.
    if (waiter.resume) {
      if (waiter.opening || hello.generation !== this.generation) this.restart(waiter.resume.keep, hello.generation);
      else this.unhold();
    }
    this.generation = hello.generation;
    waiter.resolve(hello);
  }

  // The VM is a copy under a new host: the sessions this connection had when it began holding end
  // (the agent killed those not kept, and kept ones carry on with fresh credit for whoever adopts
  // them), with what was held for them; what was held for sessions opened since goes out now.
  private restart(keep: ReadonlySet<number>, generation: number): void {
    const before = this.held?.sessions ?? new Set<number>();
    for (const id of before) {
      const sink = this.sessions.get(id);
      if (!sink) continue;
      this.sessions.delete(id);
      sink.fail(
        new AgentError(
          keep.has(id)
            ? `session ${id} carries on in the restored copy (generation ${generation}) for whoever adopts it`
            : `session ${id} was ended: the VM was restored as a copy (generation ${generation}) that did not keep it`,
          "RESTORED",
        ),
      );
    }
    for (const id of keep) this.parked.set(id, { frames: [], outputBytes: 0, ended: false });
    this.unhold(before);
  }
}
