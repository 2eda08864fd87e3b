// What the parts of the E2B API share: the protocol's constants, each sandbox's E2B state (its
// access token, processes, pause and code contexts), and how a request finds its sandbox: by the
// caller's key on the control plane, by E2b-Sandbox-Id and the sandbox's own token on the data
// plane.
import { timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";

import type { Interpreter } from "../../sandbox/kinds.js";
import type { Keys } from "../auth.js";
import { ConflictError, NotFoundError, UnauthorizedError } from "../errors.js";
import type { Managed, SandboxTable } from "../sandboxes.js";
import type { ContextRecords } from "./interpreter.js";
import type { E2bNetwork } from "./network.js";
import { ProcessTable } from "./processes.js";

/** The envd version reported: it turns on the SDK features served here (octet-stream uploads, recursive watches, stdin close). */
export const ENVD_VERSION = "0.5.7";
export const ENVD_PORT = "49983";
export const INTERPRETER_PORT = "49999";

/** A code interpreter context: an interpreter of its own, in `language` (as the client named it), started in `cwd`. */
export interface CodeContext {
  language: string;
  cwd: string;
  interpreter: Interpreter;
}

/** What happens when a sandbox's timeout passes (E2B's SandboxLifecycle), and for how long it lives again when resumed. */
export interface Lifecycle {
  onTimeout: "kill" | "pause";
  /** A data-plane request to it while paused resumes it (instead of 409). */
  autoResume: boolean;
  /** Its timeout's pause keeps its memory (else only its files: autoPauseMemory false). */
  keepMemory: boolean;
  /** Seconds it lives from a resume that named none. */
  timeoutS: number;
}

export interface E2bState {
  /** The envd access token its create returned: every data-plane call must carry it. */
  token: string;
  lifecycle: Lifecycle;
  processes: ProcessTable;
  /** Set while paused: the name its saved state is resumed by, and whether it kept the memory. */
  paused?: { name: string; memory: boolean };
  /** A pause or resume under way: one at a time, and calls that arrive meanwhile wait for it. */
  transition?: Promise<void>;
  contexts: Map<string, CodeContext>;
  /** The volumes create mounted, as E2B names them (getInfo's volumeMounts). */
  volumeMounts?: { name: string; path: string }[];
  /** Its E2B network configuration as last set. */
  network: E2bNetwork;
  /** The interpreter of /execute with a language and no context, by language, when it is not the sandbox's own run(). */
  defaults: Map<string, Interpreter>;
  /** A paused sandbox adopted from a previous server: its contexts as recorded, until its resume links them (linkContexts). */
  carried?: ContextRecords;
}

/** A sandbox the E2B API made, with its state. */
export interface E2bSandbox {
  m: Managed;
  s: E2bState;
}

/** The read-only view of request headers that node:http and Connect handlers both give. */
export interface HeaderSource {
  get(name: string): string | null;
}

export const headersOf = (req: IncomingMessage): HeaderSource => ({ get: (n) => (typeof req.headers[n] === "string" ? req.headers[n] : null) });

/** The server's sandboxes as the E2B API sees them: those it made, each with its E2B state. */
export class E2bSandboxes {
  private readonly states = new WeakMap<Managed, E2bState>();

  constructor(
    readonly table: SandboxTable,
    private readonly keys: Keys,
  ) {}

  /** The caller's owner id, from X-API-KEY. */
  owner(req: IncomingMessage): string {
    return this.keys.owner(req, ["x-api-key"]);
  }

  /** Gives `m` (just created, on `network`, to live by `lifecycle`) its E2B state. */
  add(m: Managed, token: string, network: E2bNetwork, lifecycle: Lifecycle): E2bState {
    const s: E2bState = { token, network, lifecycle, processes: new ProcessTable(), contexts: new Map(), defaults: new Map() };
    this.states.set(m, s);
    m.settled = () => settled(s);
    return s;
  }

  /** The caller's sandbox `id`, made by the E2B API, or NotFoundError. */
  owned(req: IncomingMessage, id: string): E2bSandbox {
    const m = this.table.get(this.owner(req), id);
    const s = this.states.get(m);
    if (!s) throw new NotFoundError(`sandbox ${JSON.stringify(id)} was not made by the E2B API: msb ps lists it, msb kill stops it`);
    return { m, s };
  }

  /** The caller's sandboxes that the E2B API made. */
  list(req: IncomingMessage): E2bSandbox[] {
    return this.made(this.table.list(this.owner(req)));
  }

  /** Every owner's sandboxes that the E2B API made (a presigned URL names none: its signature does). */
  everyone(): E2bSandbox[] {
    return this.made(this.table.everyone());
  }

  /** Any owner's sandbox `id`, paused or not (the getHost relay, where the sandbox id is the address). */
  byId(id: string): E2bSandbox | undefined {
    const m = this.table.byId(id);
    const s = m && this.states.get(m);
    return m && s ? { m, s } : undefined;
  }

  /** Any owner's running sandbox `id` (the getHost relay, where the sandbox id is the address). */
  running(id: string): E2bSandbox | undefined {
    const sb = this.byId(id);
    return sb && !sb.s.paused ? sb : undefined;
  }

  /** The data-plane request's running sandbox (E2b-Sandbox-Id), allowed by its token. */
  forRequest(headers: HeaderSource): E2bSandbox {
    const sb = this.allowed(headers);
    if (sb.s.paused) throw new ConflictError(`sandbox ${sb.m.id} is paused: connect to it first`);
    return sb;
  }

  /** The data-plane request's sandbox (E2b-Sandbox-Id), running or paused, allowed by its token. */
  allowed(headers: HeaderSource): E2bSandbox {
    const id = headers.get("e2b-sandbox-id") ?? "";
    const m = this.table.byId(id);
    const s = m && this.states.get(m);
    if (!m || !s) throw new NotFoundError(`sandbox ${JSON.stringify(id)} not found`);
    // envd calls carry X-Access-Token; the code interpreter's some only the traffic token, the same one here.
    const token = Buffer.from(headers.get("x-access-token") ?? headers.get("e2b-traffic-access-token") ?? "");
    const want = Buffer.from(s.token);
    if (token.length !== want.length || !timingSafeEqual(token, want))
      throw new UnauthorizedError("the access token of this sandbox is missing or wrong: send the envdAccessToken its create returned, as X-Access-Token");
    return { m, s };
  }

  private made(all: Managed[]): E2bSandbox[] {
    return all.flatMap((m) => {
      const s = this.states.get(m);
      return s ? [{ m, s }] : [];
    });
  }
}

/** Waits for the sandbox's pause or resume under way, if any, to end (either way). */
export async function settled(s: E2bState): Promise<void> {
  while (s.transition) await s.transition.catch(() => {});
}

/** Runs a pause or resume of the sandbox as its one transition under way. */
export function transition(s: E2bState, change: () => Promise<void>): Promise<void> {
  const run: Promise<void> = change().finally(() => {
    if (s.transition === run) delete s.transition;
  });
  s.transition = run;
  return run;
}
