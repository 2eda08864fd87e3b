// The server's sandboxes, whichever protocol made them: who owns each (an API key's namespace),
// its name and metadata, its lifetime, and the limits on how many run and how much memory they
// take together. A create past a limit is a ServerFullError (429 with Retry-After).
import { randomBytes } from "node:crypto";

import type { Sandbox } from "../sandbox/sandbox.js";
import type { VolumeSpec } from "../sandbox/volumes.js";
import type { InjectHeadersOption } from "../vm/machine.js";
import type { NetworkPolicy } from "../vm/netpolicy.js";
import { SANDBOX_KINDS, type SandboxKind } from "./catalog.js";
import { SERVER_DEFAULTS } from "./defaults.js";
import { NotFoundError, ServerClosingError, ServerFullError } from "./errors.js";
import { removePausedRecord, serverName, writePausedRecord } from "./paused.js";

export interface Managed {
  /** The server's id for it (also its Sandbox name). */
  id: string;
  /** The protocol that made it: each finds its own by name. */
  protocol: "microsandbox" | "e2b";
  owner: string;
  /** The Microsandbox protocol's namespace and name; E2B sandboxes: "e2b" and their template. */
  namespace: string;
  name: string;
  sandbox: Sandbox;
  /** The class it was made as, from the catalog: whether it has an interpreter, and which. */
  kind: SandboxKind;
  memory: number;
  /** What the client asked for: an E2B template id, a Microsandbox image name. */
  template: string;
  metadata: Record<string, string>;
  startedAt: Date;
  /** E2B: when it dies unless extended (ms since the epoch). */
  endAt?: number;
  timer?: NodeJS.Timeout;
  /** What its timeout does instead of killing it (E2B's lifecycle onTimeout "pause"). */
  onTimeout?: () => Promise<void>;
  /** Paused: its VM is saved and stopped, and it holds no room in the limits (but maxPaused). */
  paused?: boolean;
  /** What else goes when it is killed (a paused sandbox's saved state). */
  discard?: () => void;
  /** Its protocol's own state, for the next server on this cache (ServerRecord.extra). */
  extra?: () => unknown;
  /** Resolves when no pause or resume of it is under way (close() decides what to do with it after). */
  settled?: () => Promise<void>;
}

/**
 * What a server keeps of each sandbox in the state file of its outliving VM (the Sandbox
 * option outlive), for the next server on this cache to adopt it by.
 */
export interface ServerRecord {
  server: 1;
  id: string;
  protocol: Managed["protocol"];
  owner: string;
  namespace: string;
  name: string;
  kind: SandboxKind;
  memory: number;
  template: string;
  metadata: Record<string, string>;
  startedAt: string;
  endAt?: number;
  extra?: unknown;
}

interface SpecBase {
  protocol: Managed["protocol"];
  owner: string;
  namespace: string;
  name: string;
  /** The class it is made as. */
  kind: SandboxKind;
  /** What the client asked for (an E2B template id, a Microsandbox image name). */
  template: string;
  memory?: number;
  cpus?: number;
  env?: Record<string, string>;
  workdir?: string;
  /** Library volumes to mount (E2B's volumeMounts, each checked to be the owner's). */
  volumes?: VolumeSpec[];
  metadata?: Record<string, string>;
  /** Seconds to live (E2B's timeout); undefined: until stopped. */
  timeout?: number;
  /** The sandbox's network options; without `network`, it has none. */
  network?: NetworkPolicy;
  injectHeaders?: InjectHeadersOption;
  egressProxy?: string;
}

/**
 * A sandbox to create: booted from `image` (the catalog's answer for what the client asked for),
 * or brought up by `start` under the name it is given (a fork, a snapshot), within the same limits.
 */
export type CreateSpec = SpecBase & ({ image: string; start?: never } | { start: (name: string) => Promise<Sandbox>; image?: never });

export interface Limits {
  maxSandboxes: number;
  memoryBudgetMiB: number;
  maxPaused: number;
}

export class SandboxTable {
  private readonly all = new Map<string, Managed>();
  private reservedMiB = 0;
  private reserved = 0;
  private closed = false;

  /** `outlive`: its sandboxes' VMs run on when this server ends, for the next one to adopt. */
  constructor(
    private readonly limits: Limits,
    private readonly outlive = false,
  ) {}

  // Room for one more running sandbox of `memory` MiB, else ServerFullError. Paused ones take none.
  private admit(memory: number): void {
    if (this.closed) throw new ServerClosingError("the server is shutting down: start sandboxes on another");
    const running = [...this.all.values()].filter((m) => !m.paused);
    const used = running.reduce((n, m) => n + m.memory, 0) + this.reservedMiB;
    if (running.length + this.reserved >= this.limits.maxSandboxes) {
      throw new ServerFullError(`the server runs its limit of ${this.limits.maxSandboxes} sandboxes: retry later, or stop one`);
    }
    if (used + memory > this.limits.memoryBudgetMiB) {
      throw new ServerFullError(
        `${memory} MiB more would pass the server's memory budget (${used} of ${this.limits.memoryBudgetMiB} MiB in use): retry later, or ask for less`,
      );
    }
  }

  /**
   * Pauses `m` by `pause()` (its VM saved and stopped): from then on it holds no room, within
   * maxPaused. The caller persists it once its protocol's state says paused too.
   */
  async pause(m: Managed, pause: () => Promise<void>): Promise<void> {
    if (this.closed) throw new ServerClosingError(`the server is shutting down: sandbox ${m.id} goes to the next server as it is`);
    const paused = [...this.all.values()].filter((p) => p.paused).length;
    if (paused >= this.limits.maxPaused) {
      throw new ServerFullError(`the server keeps its limit of ${this.limits.maxPaused} paused sandboxes: kill or resume one first`);
    }
    await pause();
    // Killed meanwhile (its timeout, a close): the caller removes what the pause saved.
    if (this.all.get(m.id) !== m) throw new NotFoundError(`sandbox ${m.id} was killed while it paused`);
    m.paused = true;
  }

  /**
   * Holds room for one more VM of `memory` MiB (a sandbox being made, or a template build's VM)
   * until the returned release, else ServerFullError.
   */
  reserve(memory: number): () => void {
    this.admit(memory);
    this.reserved++;
    this.reservedMiB += memory;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.reserved--;
      this.reservedMiB -= memory;
    };
  }

  /** Resumes the paused `m` by `resume()` (which gives it its new sandbox), in the room a create would take. */
  async resume(m: Managed, resume: () => Promise<void>): Promise<void> {
    const release = this.reserve(m.memory);
    try {
      await resume();
      delete m.paused;
      // The resumed VM's state file first, then no paused record: a crash between leaves both,
      // and the next server adopts the running one and drops the record.
      this.persist(m);
      removePausedRecord(m.id);
    } finally {
      release();
    }
  }

  async create(spec: CreateSpec): Promise<Managed> {
    const memory = spec.memory ?? SERVER_DEFAULTS.sandboxMemoryMiB;
    const release = this.reserve(memory);
    const id = `${randomBytes(8).toString("hex")}`;
    try {
      const name = serverName(id);
      const sandbox: Sandbox = spec.start
        ? await spec.start(name)
        : await SANDBOX_KINDS[spec.kind].create({
            name,
            image: spec.image,
            memory,
            ...(spec.cpus !== undefined ? { cpus: spec.cpus } : {}),
            ...(spec.env ? { env: spec.env } : {}),
            ...(spec.workdir ? { workdir: spec.workdir } : {}),
            ...(spec.volumes?.length ? { volumes: spec.volumes } : {}),
            ...(spec.network ? { network: spec.network } : {}),
            ...(spec.injectHeaders ? { injectHeaders: spec.injectHeaders } : {}),
            ...(spec.egressProxy ? { egressProxy: spec.egressProxy } : {}),
            // A volume's lease is this process's: a sandbox with volumes ends with the server.
            ...(this.outlive && !spec.volumes?.length ? { outlive: true } : {}),
            labels: { "msb.server/owner": spec.owner, "msb.server/namespace": spec.namespace, "msb.server/name": spec.name },
          });
      const m: Managed = {
        id,
        protocol: spec.protocol,
        owner: spec.owner,
        namespace: spec.namespace,
        name: spec.name,
        sandbox,
        kind: spec.kind,
        memory,
        template: spec.template,
        metadata: spec.metadata ?? {},
        startedAt: new Date(),
      };
      this.all.set(id, m);
      if (spec.timeout !== undefined) this.setTimeout(m, spec.timeout);
      else this.persist(m);
      if (this.closed) await this.kill(m);
      return m;
    } finally {
      release();
    }
  }

  /** Dies `seconds` from now (E2B's timeout), unless extended again. */
  setTimeout(m: Managed, seconds: number): void {
    this.setEndAt(m, Date.now() + seconds * 1000);
  }

  /** Dies at `endAt` (ms since the epoch), unless extended again. */
  setEndAt(m: Managed, endAt: number): void {
    clearTimeout(m.timer);
    m.endAt = endAt;
    // A timeout's pause that fails kills it, unless the server is closing (close decides then).
    const expire = () => void (m.onTimeout ? m.onTimeout().catch(() => (this.closed ? undefined : this.kill(m))) : this.kill(m));
    m.timer = setTimeout(expire, Math.max(0, endAt - Date.now()));
    m.timer.unref();
    this.persist(m);
  }

  /**
   * Records `m` as it is now for the next server on this cache: a running one in its outliving
   * VM's state file, a paused one in the server's own record beside its saved state.
   */
  persist(m: Managed, letGo = false): void {
    if (this.all.get(m.id) !== m) return; // killed, or let go of: nothing of it is this server's to record
    const record = this.record(m);
    if (m.paused) writePausedRecord({ ...record, paused: m.sandbox.name }, letGo);
    else m.sandbox.setAdoptionData(record);
  }

  private record(m: Managed): ServerRecord {
    const extra = m.extra?.();
    return {
      server: 1,
      id: m.id,
      protocol: m.protocol,
      owner: m.owner,
      namespace: m.namespace,
      name: m.name,
      kind: m.kind,
      memory: m.memory,
      template: m.template,
      metadata: m.metadata,
      startedAt: m.startedAt.toISOString(),
      ...(m.endAt !== undefined ? { endAt: m.endAt } : {}),
      ...(extra !== undefined ? { extra } : {}),
    };
  }

  /** @internal Holds `m`, a sandbox a previous server left (takeover.ts), beside those this one made. */
  insert(m: Managed): void {
    this.all.set(m.id, m);
  }

  /** How many more paused sandboxes this server may hold (maxPaused). */
  pausedRoom(): number {
    return this.limits.maxPaused - [...this.all.values()].filter((m) => m.paused).length;
  }

  /** The caller's sandbox `id`, or NotFoundError (another key's sandboxes do not exist for it). */
  get(owner: string, id: string): Managed {
    const m = this.all.get(id);
    if (!m || m.owner !== owner) throw new NotFoundError(`sandbox ${JSON.stringify(id)} not found: msb ps lists this key's sandboxes`);
    return m;
  }

  /** Any owner's sandbox `id` (the E2B data plane, where the sandbox's own token is the check). */
  byId(id: string): Managed | undefined {
    return this.all.get(id);
  }

  /** A Microsandbox-protocol sandbox by its namespace and name. */
  find(owner: string, namespace: string, name: string): Managed | undefined {
    return [...this.all.values()].find((m) => m.protocol === "microsandbox" && m.owner === owner && m.namespace === namespace && m.name === name);
  }

  /** Every owner's sandboxes (a presigned URL names none: its signature does). */
  everyone(): Managed[] {
    return [...this.all.values()];
  }

  list(owner: string): Managed[] {
    return [...this.all.values()].filter((m) => m.owner === owner);
  }

  async kill(m: Managed): Promise<void> {
    clearTimeout(m.timer);
    this.all.delete(m.id);
    if (m.paused) removePausedRecord(m.id);
    await m.sandbox.stop();
    m.discard?.();
  }

  /**
   * Stops every sandbox, but with `letGo` (default: `outlive`) lets those that can run on, and the
   * paused ones, go to the next server (each recorded for it; ones with volumes are stopped), once
   * a pause or resume under way has ended; creates from now on are refused. Resolves with how
   * many were let go.
   */
  async close(letGo = this.outlive): Promise<number> {
    this.closed = true;
    let kept = 0;
    await Promise.allSettled(
      [...this.all.values()].map(async (m) => {
        clearTimeout(m.timer);
        await m.settled?.();
        if (this.all.get(m.id) !== m) return; // killed meanwhile
        if (letGo && m.paused) {
          this.persist(m, true);
          this.all.delete(m.id);
          kept++;
          return;
        }
        if (letGo && m.sandbox.outlives) {
          clearTimeout(m.timer);
          this.persist(m);
          // A pause under way ends the VM it was saving: that one is killed below, its state with it.
          if (await m.sandbox.detach()) {
            this.all.delete(m.id);
            kept++;
            return;
          }
        }
        await this.kill(m);
      }),
    );
    return kept;
  }
}
