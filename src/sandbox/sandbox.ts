// The sandbox: a VM booted (or restored, or copied) from an image, with commands and files;
// create() = new + start(); stop() or `await using` ends the VM. The kinds are in kinds.ts.
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { debuglog } from "node:util";

import type { AgentClient, GuestMetrics } from "../agent-client/client.js";
import type { ExitStatus } from "../agent-client/process.js";

import { ImageError, InvalidArgumentError, ResourceError, type SandboxExpiredError, SandboxNotRunningError, SnapshotUnsupportedError } from "../errors.js";
import { resolveImage } from "../images/sources.js";
import { type ImageConfig, ImageStore, type ResolvedImage } from "../images/store.js";
import { checkKeys, keysOf } from "../keys.js";
import { ownStamp } from "../liveness.js";
import {
  adoptMachine,
  type BackendInfo,
  type BootTimeline,
  type Capability,
  type Confinement,
  checkEgressProxy,
  checkInjectHeaders,
  checkSecrets,
  egressEnv,
  type InjectHeadersOption,
  type KeptSession,
  type Machine,
  type MachinePlan,
  type MachineSpec,
  planMachine,
  restoreMachine,
  type SecretsOption,
  secretsOption,
} from "../vm/machine.js";
import { checkNetwork, checkPorts, type NetworkPolicy, type PortForward } from "../vm/netpolicy.js";
import { type CommandOptions, SandboxCommands } from "./commands.js";
import { SandboxFiles } from "./files.js";
import { restoreFiles, saveFiles } from "./files-only.js";
import { Lifetime } from "./lifetime.js";
import { CommandTap, type LogEntry, type LogOptions, SandboxLog } from "./logs.js";
import { type CpuMark, cpuMark, type SandboxMetrics, sandboxMetrics } from "./metrics.js";
import {
  checkCpus,
  checkMemory,
  checkName,
  checkSeconds,
  envRecord,
  guestEnv,
  type ResolvedOptions,
  resolveOptions,
  type SandboxOptions,
  START_OPTION_KEYS,
  type StartOptions,
} from "./options.js";
import { discardOrphan, listOrphans, type OrphanSandbox, type OutliveState, writeOutliveState } from "./outlive.js";
import { newPausedDir, readPaused, withPausedLock, writePaused } from "./paused.js";
import type { SandboxPool } from "./pool.js";
import { registry, type SandboxInfo } from "./registry.js";
import { checkMounted, leaseVolumes, type VolumeLease, volumeFile } from "./volumes.js";

const LOG_KEYS = keysOf<LogOptions>({ tail: true, sources: true });

// The runtime dirs of outliving VMs this process holds: not orphans.
const attachedDirs = new Set<string>();

/** What fork() takes: the copy's name (default: this one's and random hex) and the host ports it publishes. */
export interface ForkOptions {
  name?: string;
  ports?: PortForward[];
}

const FORK_KEYS = keysOf<ForkOptions>({ name: true, ports: true });

/** What resume() takes: `as`, the name of a new sandbox started from the saved state, which then stays. */
export interface ResumeOptions {
  as?: string;
}

const RESUME_KEYS = keysOf<ResumeOptions>({ as: true });

/** What pause() takes: `keepMemory: false` keeps only the files, and resume() boots afresh over them. */
export interface PauseOptions {
  keepMemory?: boolean;
}

const PAUSE_KEYS = keysOf<PauseOptions>({ keepMemory: true });
const UPDATE_NETWORK_KEYS = keysOf<{ secrets?: SecretsOption; injectHeaders?: InjectHeadersOption }>({ secrets: true, injectHeaders: true });

const debug = debuglog("microsandbox");

/** "qemu (tcg): why", for logs and messages. */
export const describeBackend = (b: BackendInfo): string => `${b.name}${b.accel ? ` (${b.accel})` : ""}: ${b.reason}`;

export abstract class Sandbox implements AsyncDisposable {
  /** Shell commands: run() and the streaming spawn(). */
  readonly command = new SandboxCommands(this);
  /** Files in the sandbox, and copies between host and guest. */
  readonly fs = new SandboxFiles(() => this.agent());
  protected opts: ResolvedOptions;
  private vm: Machine | undefined;
  // The running VM's image, by content: a paused sandbox resumes only on the same.
  private imageId = "";
  private starting: Promise<void> | undefined;
  private imageConfig: ImageConfig = { env: [] };
  private bootTimeline: BootTimeline | undefined;
  /** Stable and unique: "sb-" and 12 random hex digits. */
  readonly id = `sb-${randomBytes(6).toString("hex")}`;
  private startedAt: Date | undefined;
  private lifetime: Lifetime | undefined;
  // A pool holds a sandbox's lifetime until it hands it out.
  private lifetimeHeld = false;
  private expiredBy: SandboxExpiredError | undefined;
  private readonly listed = { info: () => this.info() };
  private log: SandboxLog | undefined;
  private volumes: VolumeLease | undefined;
  private adoptionData: unknown;

  constructor(opts: SandboxOptions = {}, defaultImage?: string) {
    this.opts = resolveOptions(opts, defaultImage);
  }

  /** This process's sandboxes that are starting or running. */
  static list(): SandboxInfo[] {
    return [...registry].map((l) => l.info());
  }

  private info(): SandboxInfo {
    return {
      id: this.id,
      name: this.name,
      kind: this.constructor.name,
      image: this.opts.image,
      labels: { ...this.opts.labels },
      status: this.vm ? "running" : "starting",
      ...(this.vm ? { pid: this.vm.pid } : {}),
      startedAt: this.startedAt ?? new Date(),
    };
  }

  get labels(): Readonly<Record<string, string>> {
    return this.opts.labels;
  }

  /**
   * What the sandbox's commands printed and what happened to it (started, exits, a lifetime
   * limit, stopped), and the guest console, oldest first: the last `tail` entries (default 100).
   * Kept in the cache after the sandbox stopped, at most ~1 MiB a sandbox, for the newest 200.
   */
  logs(opts: LogOptions = {}): LogEntry[] {
    checkKeys("logs option", opts, LOG_KEYS);
    return this.log?.read(opts, this.vm?.consoleLog) ?? [];
  }

  /** @internal Where a command's output and end go in the log (nowhere before the first start). */
  logTap(command: string): Pick<CommandTap, "output" | "end"> {
    return this.log ? new CommandTap(this.log, command) : { output() {}, end() {} };
  }

  /** Counts as activity: the idleTimeout clock starts again. */
  touch(): void {
    this.lifetime?.touch();
  }

  private cpuMark: CpuMark;

  /** CPU, memory, disk, network, processes and uptime now; CPU percent since the last call. */
  async metrics(): Promise<SandboxMetrics> {
    const g = await this.agent().metrics();
    const m = sandboxMetrics(g, this.cpuMark, this.opts.memory, this.vm?.pid);
    this.cpuMark = cpuMark(g);
    return m;
  }

  /** A sample every `intervalMs` (default 1000, at least 100) until the sandbox stops or the loop breaks. */
  async *metricsStream(intervalMs = 1000): AsyncGenerator<SandboxMetrics> {
    if (!Number.isFinite(intervalMs) || intervalMs < 100) throw new InvalidArgumentError(`intervalMs ${intervalMs} is invalid: give at least 100 ms`);
    let mark: CpuMark;
    for (;;) {
      let g: GuestMetrics;
      try {
        g = await this.agent().metrics();
      } catch (err) {
        if (err instanceof SandboxNotRunningError || !this.isRunning) return;
        throw err;
      }
      const m = sandboxMetrics(g, mark, this.opts.memory, this.vm?.pid);
      mark = cpuMark(g);
      yield m;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }

  /** Creates and starts a sandbox; with `pool`, takes an already booted one from it. */
  static async create<T extends Sandbox>(this: new (opts?: SandboxOptions) => T, opts: SandboxOptions & { pool?: SandboxPool<T> } = {}): Promise<T> {
    const { pool, ...options } = opts;
    if (pool) return pool.acquire();
    const sandbox = new this(options);
    await sandbox.start();
    return sandbox;
  }

  get name(): string {
    return this.opts.name;
  }

  get isRunning(): boolean {
    return this.vm !== undefined;
  }

  /** The VMM running this sandbox, and why it was chosen: `{ name: "qemu", accel: "tcg", arch, reason }`. */
  get backend(): BackendInfo | undefined {
    return this.vm?.info;
  }

  /** What confines this sandbox's VMM on the host (namespaces, uid, seccomp, how its network is held); undefined until it runs. */
  get confinement(): Confinement | undefined {
    return this.vm?.confinement;
  }

  /** Requests refused because a secret's placeholder was bound for a host, header or URL it may not go to. */
  get secretRefusals(): number {
    return this.vm?.secretRefusals() ?? 0;
  }

  /** Connections the network policy refused while the VM ran (0 when nothing holds it). */
  get networkRefusals(): number {
    return this.vm?.networkRefusals() ?? 0;
  }

  /** Process id of the running VM's VMM (QEMU). */
  get pid(): number | undefined {
    return this.vm?.pid;
  }

  /** Boot phases of the running VM, in ms from the start of start() (host prep includes the image). */
  get timeline(): BootTimeline | undefined {
    return this.bootTimeline;
  }

  /** Boots the VM. memory (MiB), cpus and timeout (seconds to boot) override the constructor's. */
  async start(opts: StartOptions = {}): Promise<void> {
    checkKeys("start option", opts, START_OPTION_KEYS);
    if (this.vm) return;
    if (opts.memory !== undefined) this.opts.memory = checkMemory(opts.memory);
    if (opts.cpus !== undefined) this.opts.cpus = checkCpus(opts.cpus);
    if (opts.timeout !== undefined) this.opts.timeout = checkSeconds("timeout", opts.timeout);
    this.starting ??= this.tracked(() => this.boot()).finally(() => (this.starting = undefined));
    return this.starting;
  }

  // Lists this sandbox while `bring` brings it up, and after if it succeeded; arms its lifetime.
  private async tracked(bring: () => Promise<void>): Promise<void> {
    this.startedAt = new Date();
    this.expiredBy = undefined;
    this.log ??= new SandboxLog(this.name, this.id);
    registry.add(this.listed);
    try {
      await bring();
    } catch (err) {
      registry.delete(this.listed);
      this.log.add("event", `failed to start: ${(err as Error).message}`);
      throw err;
    }
    this.log.add("event", `running on ${describeBackend(this.vm!.info)}`);
    if (!this.lifetimeHeld) this.armLifetime();
    this.recordChanged();
  }

  /** @internal A pool starts the lifetime limits when it hands the sandbox out. */
  holdLifetime(): void {
    this.lifetimeHeld = true;
  }

  /** @internal Starts the lifetime limits (maxDuration, idleTimeout) now. */
  armLifetime(): void {
    this.lifetimeHeld = false;
    const { maxDuration, idleTimeout } = this.opts;
    if (maxDuration === undefined && idleTimeout === undefined) return;
    this.lifetime?.end();
    this.lifetime = new Lifetime(
      this.name,
      { maxDuration, idleTimeout },
      () => this.busy(),
      (err) => this.expire(err),
    );
  }

  // Work under way: any open request but an interpreter idling between cells.
  private busy(): boolean {
    const agent = this.vm?.agent;
    return !!agent && !agent.closed && agent.activeSessions > this.idleSessions();
  }

  /** Sessions that stay open without work under way (an interpreter between cells). */
  protected idleSessions(): number {
    return 0;
  }

  // A lifetime limit fired: pending calls fail with `err`, later ones too, and the VM stops.
  private expire(err: SandboxExpiredError): void {
    debug("%s", err.message);
    this.log?.add("event", err.message);
    this.expiredBy = err;
    this.vm?.agent.close(err);
    void this.stop().catch((e: unknown) => debug("stopping expired sandbox %s: %s", this.name, (e as Error).message));
  }

  // What this sandbox asks of its VM.
  private machineSpec(): MachineSpec {
    const o = this.opts;
    return {
      name: o.name,
      memory: o.memory,
      cpus: Math.ceil(o.cpus),
      network: o.network,
      ports: o.ports,
      maxProcesses: o.maxProcesses,
      bootTimeout: o.timeout,
      volumes: o.volumes.map((v) => ({ file: volumeFile(v.name), path: v.path, readOnly: v.readOnly })),
      backend: o.backend,
      confinement: o.confinement,
      secrets: o.secrets,
      injectHeaders: o.injectHeaders,
      ...(o.egressProxy ? { egressProxy: checkEgressProxy(o.egressProxy) } : {}),
      ...(this.log ? { consoleKeep: this.log.console } : {}),
      ...(o.kernel ? { kernel: o.kernel } : {}),
      ...(o.outlive ? { outlive: true } : {}),
    };
  }

  private async boot(): Promise<void> {
    const t0 = performance.now();
    // What the VM is made of before the image: a missing kernel or agent must not cost a pull.
    const plan = await planMachine(this.machineSpec());
    const { store, image } = await this.bootImage();
    const imagePrepMs = performance.now() - t0;
    const volumes = this.opts.volumes;
    // Processes (and a template's interpreter) take their environment from the image config.
    this.imageConfig = image.config;
    this.volumes = volumes.length ? await leaseVolumes(volumes, { name: this.name, id: this.id }) : undefined;
    // A memory snapshot would hold the page cache of a volume as it was, not as it is.
    const snapshots = this.opts.snapshot && !volumes.length;
    let booted: Awaited<ReturnType<MachinePlan["boot"]>> | undefined;
    try {
      booted = await plan.boot(
        { id: image.id, rootfs: image.rootfs, disk: () => store.disk(image) },
        snapshots ? this.templatePrewarm(image.config) : undefined,
      );
      await checkMounted(booted.machine.agent, volumes);
      // Like container runtimes, make the image's WorkingDir when the image lacks it.
      if (image.config.workingDir) await booted.machine.agent.mkdir(image.config.workingDir, { parents: true });
    } catch (err) {
      await booted?.machine.stop();
      await this.volumes?.release();
      this.volumes = undefined;
      throw err;
    }
    this.attach(booted.machine, image.id, image.config, imagePrepMs);
    if (booted.snapshot) this.bootTimeline!.snapshot = booted.snapshot;
    this.adopt(booted.kept);
  }

  /** The image to boot and the store that holds it: opts.image, pulled if need be. */
  protected async bootImage(): Promise<{ store: ImageStore; image: ResolvedImage }> {
    const store = new ImageStore();
    return {
      store,
      image: await resolveImage(store, this.opts.image, { pull: this.opts.pull, ...(this.opts.registry ? { registry: this.opts.registry } : {}) }),
    };
  }

  /**
   * What a snapshot's template runs before it is saved, and a name for it in the snapshot's key:
   * the shell once, so its files sit in the guest's page cache in every clone.
   */
  protected templatePrewarm(image: ImageConfig): { prewarmName: string; prewarm(agent: AgentClient): Promise<KeptSession[]> } {
    return {
      prewarmName: "shell",
      prewarm: async (agent) => {
        // As on every boot: the image's WorkingDir exists before anything runs in it.
        if (image.workingDir) await agent.mkdir(image.workingDir, { parents: true });
        // Best effort: an image without a shell is still an image.
        await agent.exec(["sh", "-c", "true"], { timeout: 60 }).catch(() => {});
        return [];
      },
    };
  }

  // Makes `vm` this sandbox's running VM; its timeline starts `beforeMs` earlier (image prep).
  private attach(vm: Machine, imageId: string, imageConfig: ImageConfig, beforeMs = 0): void {
    const tl = vm.timeline;
    this.bootTimeline = {
      ...tl,
      hostPrepMs: beforeMs + tl.hostPrepMs,
      vmmStartMs: beforeMs + tl.vmmStartMs,
      agentReadyMs: beforeMs + tl.agentReadyMs,
    };
    this.vm = vm;
    this.imageId = imageId;
    this.imageConfig = imageConfig;
    const dir = vm.record()?.vm.dir;
    if (dir) attachedDirs.add(dir);
    debug("sandbox %s running on %s", this.name, describeBackend(vm.info));
  }

  // The running VM, when its backend can `capability` ("fork", "pause") and nothing keeps it from it.
  private saveable(capability: Capability, what: string): Machine {
    const vm = this.vm;
    if (!vm || vm.agent.closed) throw new SandboxNotRunningError(`sandbox ${this.name} is not running: nothing to ${what}`);
    if (this.opts.volumes.length) {
      throw new SnapshotUnsupportedError(`sandbox ${this.name} has volumes, which a saved VM cannot take along consistently: it cannot ${what}`);
    }
    if (!vm.capabilities.has(capability)) {
      throw new SnapshotUnsupportedError(`sandbox ${this.name} runs on ${describeBackend(vm.info)}, which cannot ${what} a VM: use backend "qemu"`);
    }
    return vm;
  }

  // This sandbox's options, for a copy of it (credentials stay in memory).
  private copyOptions(name: string): SandboxOptions & { name: string; image: string } {
    const { registry: _registry, secrets, ...rest } = this.opts;
    return { ...rest, name, secrets: secretsOption(secrets), ...(rest.workdir === undefined ? { workdir: undefined } : {}) };
  }

  /**
   * Changes what this running sandbox may reach, as `network` does at create, with `secrets`
   * its secrets (a secret kept by name keeps its placeholder; commands started from now on see
   * the new ones) and with `injectHeaders` its injected headers (each left out is kept): new connections see the change once this resolves, and open connections to a
   * destination it refuses are closed. Forks and a resumed sandbox keep it. A sandbox created
   * with network "none" has no network device and cannot gain one (NetworkError).
   */
  async updateNetwork(policy: NetworkPolicy, opts: { secrets?: SecretsOption; injectHeaders?: InjectHeadersOption } = {}): Promise<void> {
    checkKeys("updateNetwork option", opts, UPDATE_NETWORK_KEYS);
    const network = checkNetwork(policy);
    const secrets = opts.secrets === undefined ? this.opts.secrets : checkSecrets(opts.secrets, this.opts.secrets);
    const injectHeaders = opts.injectHeaders === undefined ? this.opts.injectHeaders : checkInjectHeaders(opts.injectHeaders);
    const clash = secrets.find((s) => this.opts.env[s.name] !== undefined);
    if (clash) throw new InvalidArgumentError(`secrets.${clash.name} is also in the sandbox's env: drop one of them`);
    this.agent();
    const { closed } = await this.vm!.updateNetwork({ network, secrets, injectHeaders });
    this.opts.network = network;
    this.opts.secrets = secrets;
    this.opts.injectHeaders = injectHeaders;
    this.recordChanged();
    this.log?.add("event", `network policy changed${closed ? `; ${closed} open connection${closed === 1 ? "" : "s"} it refuses closed` : ""}`);
  }

  /**
   * A new sandbox with this one's memory, processes and files as they are at this instant; this
   * one runs on. The copy gets its own randomness, clock and identity (hostname = its name). With
   * Python and Node sandboxes the interpreter of run() comes along, with its state. The copy
   * publishes `ports` of its own, none by default: this one keeps its host ports. QEMU only.
   */
  async fork(opts: ForkOptions = {}): Promise<this> {
    checkKeys("fork option", opts, FORK_KEYS);
    return this.oneSaveAtATime(() => this.forkNow(opts));
  }

  // Saves of one VM (forks, a pause) and its stop happen one after another: each pauses the VM
  // and lets it go on, and two interleaved would let one save a running VM.
  private saves: Promise<unknown> = Promise.resolve();
  private oneSaveAtATime<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.saves.then(fn);
    this.saves = run.catch(() => {});
    return run;
  }

  private async forkNow(opts: ForkOptions): Promise<this> {
    const vm = this.saveable("fork", "fork");
    const name = opts.name ?? `${this.name.slice(0, 50)}-${randomBytes(4).toString("hex")}`;
    const ports = checkPorts(opts.ports, this.opts.network);
    const child = new (this.constructor as new (o: SandboxOptions) => this)({ ...this.copyOptions(name), ports });
    const keep = this.keptSessions();
    child.log = new SandboxLog(name, child.id);
    const copy = await vm.copy(
      { name, ports, consoleKeep: child.log.console },
      keep.map((k) => k.session),
    );
    child.attach(copy, this.imageId, this.imageConfig);
    child.adopt(keep);
    child.startedAt = new Date();
    registry.add(child.listed);
    child.log.add("event", `running on ${describeBackend(copy.info)}`);
    child.armLifetime();
    return child;
  }

  /**
   * Saves this sandbox to disk (memory, processes, files) and stops it; `resume(name)` on the same
   * class brings it back, in this process or another, with the commands spawned with `keep` still
   * running (command.resumed()); other processes end. Returns the directory it is kept in. QEMU
   * only. With `keepMemory: false` only its files are kept (the writable layer and /tmp, carried
   * by the image's tar and sh), on any backend: resume() boots it afresh over them, with no
   * process or interpreter state.
   */
  async pause(opts: PauseOptions = {}): Promise<string> {
    checkKeys("pause option", opts, PAUSE_KEYS);
    if (opts.keepMemory !== undefined && typeof opts.keepMemory !== "boolean")
      throw new InvalidArgumentError(`keepMemory ${JSON.stringify(opts.keepMemory)} is invalid: give true or false`);
    return this.oneSaveAtATime(async () => {
      const dir = opts.keepMemory === false ? await this.saveFilesNow() : await this.saveNow(this.name, false);
      await this.halt();
      return dir;
    });
  }

  private async saveFilesNow(): Promise<string> {
    const agent = this.agent();
    return withPausedLock(this.name, async () => {
      const dir = newPausedDir(this.name);
      try {
        await saveFiles(agent, dir, this.opts.memory);
        writePaused(dir, { kind: this.constructor.name, options: this.copyOptions(this.name), imageId: this.imageId, keep: [], commands: [], filesOnly: true });
      } catch (err) {
        rmSync(dir, { recursive: true, force: true });
        throw err;
      }
      return dir;
    });
  }

  /**
   * Saves a copy of this sandbox as it is now (memory, processes, files) under `name`, as pause()
   * would, and runs on: a snapshot. `resume(name, { as })` starts sandboxes from it, as many as
   * wanted; `resume(name)` brings it back once. Returns the directory it is kept in. QEMU only.
   */
  async save(name: string): Promise<string> {
    checkName(name);
    return this.oneSaveAtATime(() => this.saveNow(name, true));
  }

  private async saveNow(name: string, keepRunning: boolean): Promise<string> {
    const vm = this.saveable("pause", keepRunning ? "save" : "pause");
    return withPausedLock(name, async () => {
      const dir = newPausedDir(name);
      try {
        // paused.json goes last, once the machine is saved: a save cut short leaves no sandbox
        // that looks paused. Saved, the VM ends (unless kept running); a save that fails leaves it
        // running as it was.
        // Commands spawned with `keep` are listed once the agent is suspended, so none ends unseen
        // in between; a save's copies would have no one reading them.
        const keep = this.keptSessions();
        const record = () =>
          writePaused(dir, {
            kind: this.constructor.name,
            options: this.copyOptions(name),
            imageId: this.imageId,
            keep,
            commands: keepRunning ? [] : this.command.keptNow(),
          });
        await vm.save(dir, record, { keepRunning });
      } catch (err) {
        rmSync(dir, { recursive: true, force: true });
        throw err;
      }
      return dir;
    });
  }

  /**
   * Brings back the sandbox `name` that pause() or save() saved (booted afresh over its files after
   * pause({ keepMemory: false })); its saved state is removed once it runs. With `as`, starts a new sandbox of that name from it instead and leaves the saved
   * state in place, to start more. Two processes resuming one name take turns: the second finds
   * nothing paused (or, with `as`, starts its own copy).
   */
  static async resume<T extends Sandbox>(this: new (opts?: SandboxOptions) => T, name: string, opts: ResumeOptions = {}): Promise<T> {
    checkKeys("resume option", opts, RESUME_KEYS);
    if (opts.as !== undefined) checkName(opts.as);
    return withPausedLock(name, async () => {
      // biome-ignore lint/complexity/noThisInStatic: `this` is the subclass resume() is called on; its name must match the kind pause() saved
      const { dir, meta } = readPaused(name, this.name);
      const sandbox = new this(opts.as === undefined ? meta.options : { ...meta.options, name: opts.as });
      await sandbox.tracked(() => (meta.filesOnly ? sandbox.bootOver(dir) : sandbox.resumeFrom(dir, meta)));
      if (opts.as === undefined) rmSync(dir, { recursive: true, force: true });
      return sandbox;
    });
  }

  // Boots this sandbox afresh and puts back the files a files-only pause kept in `dir`; a sandbox
  // that fails to take them back is stopped.
  private async bootOver(dir: string): Promise<void> {
    await this.boot();
    try {
      await restoreFiles(this.vm!.agent, dir);
    } catch (err) {
      await this.halt();
      throw err;
    }
  }

  // Restores the paused VM in `dir` into this sandbox.
  private async resumeFrom(dir: string, meta: ReturnType<typeof readPaused>["meta"]): Promise<void> {
    const store = new ImageStore();
    const image = await resolveImage(store, meta.options.image, { pull: "never" });
    if (image.id !== meta.imageId) {
      throw new ImageError(
        `sandbox ${this.name} was paused on image ${meta.options.image} with id ${meta.imageId}, which is no longer stored (now ${image.id})`,
      );
    }
    const vm = await restoreMachine(
      dir,
      this.machineSpec(),
      { id: image.id, rootfs: image.rootfs, disk: () => store.disk(image) },
      [...meta.keep, ...meta.commands].map((k) => k.session),
    );
    this.attach(vm, image.id, image.config);
    this.adopt(meta.keep);
    this.command.adopt(meta.commands);
  }

  /**
   * Sets what Sandbox.orphans() gives back with this outliving sandbox (option outlive) once this
   * process has let go of it: JSON, such as a server's own record of it. Kept in its state file.
   */
  setAdoptionData(data: unknown): void {
    this.adoptionData = data;
    this.recordChanged();
  }

  /**
   * @internal Writes an outliving sandbox's state file anew: what another process adopts it by,
   * as it is now (its kept processes, network, the caller's data). A no-op for other sandboxes.
   */
  recordChanged(held = true): void {
    const machine = this.vm?.record();
    if (!machine) return;
    try {
      writeOutliveState({
        kind: this.constructor.name,
        options: this.copyOptions(this.name),
        imageId: this.imageId,
        machine,
        keep: this.keptSessions(),
        commands: this.command.keptNow(),
        ...(this.adoptionData !== undefined ? { data: this.adoptionData } : {}),
        ...(held ? { host: ownStamp() } : {}),
      });
    } catch (err) {
      debug("recording sandbox %s for adoption: %s", this.name, (err as Error).message);
    }
  }

  /**
   * Lets go of this outliving sandbox (option outlive): its VM runs on with its processes held,
   * for Sandbox.adopt() in this or another process; this object no longer has it.
   */
  detach(): void {
    const vm = this.vm;
    if (!vm) return;
    if (!vm.record()) throw new InvalidArgumentError(`sandbox ${this.name} was not created with outlive: true: stop() it instead`);
    this.recordChanged(false);
    this.lifetime?.end();
    this.lifetime = undefined;
    registry.delete(this.listed);
    this.vm = undefined;
    // Let go of before the interpreters are dropped: their processes are the next host's.
    vm.detach();
    this.onStop();
    attachedDirs.delete(vm.record()!.vm.dir);
    this.log?.add("event", "let go of: it runs on for another host");
    this.log?.flush();
  }

  /** Whether this sandbox's VM would run on without this process (option outlive, and running). */
  get outlives(): boolean {
    return !!this.vm?.record();
  }

  /** Stops an orphan (from Sandbox.orphans()) instead of adopting it: its VM ends, its runtime dir goes. */
  static discard(orphan: OrphanSandbox): void {
    discardOrphan(orphan);
  }

  /** This user's outliving sandboxes that no process holds (option outlive): Sandbox.adopt() takes one over. */
  static orphans(): OrphanSandbox[] {
    return listOrphans(attachedDirs);
  }

  /**
   * Takes over the outliving sandbox `orphan` (from Sandbox.orphans()), on the class that created
   * it: its interpreter, files and processes carry on, and command.resumed() hands back those
   * spawned with `keep`. One that cannot be taken over is stopped (never left running unowned)
   * and the error says why.
   */
  static async adopt<T extends Sandbox>(this: new (opts?: SandboxOptions) => T, orphan: OrphanSandbox): Promise<T> {
    const state = orphan?.state;
    if (!state?.machine) throw new InvalidArgumentError("adopt() takes an entry of Sandbox.orphans()");
    // biome-ignore lint/complexity/noThisInStatic: `this` is the subclass adopt() is called on; it must be the kind that started it
    if (state.kind !== this.name) throw new InvalidArgumentError(`sandbox ${orphan.name} was started as a ${state.kind}: adopt it with ${state.kind}.adopt()`);
    const sandbox = new this(state.options);
    try {
      await sandbox.tracked(() => sandbox.adoptFrom(state));
    } catch (err) {
      discardOrphan(orphan);
      throw err;
    }
    sandbox.adoptionData = state.data;
    sandbox.recordChanged();
    return sandbox;
  }

  // Takes over the running VM of `state` into this sandbox.
  private async adoptFrom(state: OutliveState): Promise<void> {
    const store = new ImageStore();
    const image = await resolveImage(store, state.options.image, { pull: "never" });
    if (image.id !== state.imageId) {
      throw new ImageError(`sandbox ${this.name} runs image ${state.options.image} with id ${state.imageId}, which is no longer stored (now ${image.id})`);
    }
    const vm = await adoptMachine(
      state.machine,
      { id: image.id, rootfs: image.rootfs, disk: () => store.disk(image) },
      [...state.keep, ...state.commands].map((k) => k.session),
    );
    this.attach(vm, image.id, image.config);
    this.adopt(state.keep);
    this.command.adopt(state.commands);
  }

  /** Processes a copy of this sandbox keeps running (the interpreter of run()). */
  protected keptSessions(): KeptSession[] {
    return [];
  }

  /** Takes over the kept processes in a copy. */
  protected adopt(_kept: KeptSession[]): void {}

  /** Stops the VM: the agent shuts the guest down, then the VMM is made sure to be gone. */
  async stop(): Promise<void> {
    await this.saves;
    await this.halt();
  }

  // stop() without waiting for saves (a pause ends with it).
  private async halt(): Promise<void> {
    await this.starting?.catch(() => {});
    const vm = this.vm;
    this.lifetime?.end();
    this.lifetime = undefined;
    registry.delete(this.listed);
    if (!vm) return;
    this.vm = undefined;
    this.onStop();
    const dir = vm.record()?.vm.dir;
    await vm.stop();
    if (dir) attachedDirs.delete(dir);
    await this.volumes?.release();
    this.volumes = undefined;
    this.log?.add("event", "stopped");
    this.log?.flush();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  /** Lets subclasses drop per-VM state (interpreters). */
  protected onStop(): void {}

  /**
   * @internal Readies a booted sandbox for its first use, as a warm pool does before handing it
   * out: the guest reads the shell and C library from its disk now, not during the first command.
   */
  async prewarm(): Promise<void> {
    await this.agent()
      .exec(["sh", "-c", "true"], this.processOptions({}, undefined))
      .catch(() => {});
  }

  /** @internal The agent of the running VM. */
  agent(): AgentClient {
    if (this.expiredBy) throw this.expiredBy;
    this.lifetime?.touch();
    if (!this.vm) throw new SandboxNotRunningError(`sandbox ${this.name} is not running: call start() (or create()) first`);
    if (this.vm.agent.closed) throw new SandboxNotRunningError(`sandbox ${this.name} has stopped: its VM is gone`);
    return this.vm.agent;
  }

  /** @internal Options for a process in this sandbox: the image config, then the sandbox's, then the call's. */
  processOptions(opts: CommandOptions, timeout: number | undefined) {
    const [user, group] = (this.imageConfig.user ?? "").split(":");
    return {
      env: guestEnv(envRecord(this.imageConfig.env), egressEnv(this.opts.secrets, this.opts.injectHeaders), this.opts.env, opts.env),
      cwd: opts.cwd ?? this.workdir(),
      ...(user ? { user } : {}),
      ...(group && /^\d+$/.test(group) ? { gid: Number(group) } : {}),
      ...(timeout !== undefined ? { timeout } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    };
  }

  /** @internal The working directory: the sandbox's, the image's, or "/". */
  workdir(): string {
    return this.opts.workdir ?? this.imageConfig.workingDir ?? "/";
  }

  /** @internal The image's Entrypoint + Cmd. */
  defaultCommand(): string[] {
    const argv = [...(this.imageConfig.entrypoint ?? []), ...(this.imageConfig.cmd ?? [])];
    if (!argv.length) throw new InvalidArgumentError(`image ${this.opts.image} has no Entrypoint or Cmd: name a command`);
    return argv;
  }

  /**
   * @internal A ResourceError when the counters of a finished process tree (its own cgroup in the
   * guest) show the OOM killer took one of its processes or its forks hit the process limit.
   */
  exhausted(what: string, counters: ExitStatus["guestCounters"]): ResourceError | undefined {
    if (counters.oomKills > 0) {
      return new ResourceError(
        `${what} ran out of memory: the guest killed it to stay within the sandbox's ${this.opts.memory} MiB. ` +
          "Start the sandbox with more memory (memory: MiB) or use less.",
      );
    }
    if (counters.pidsLimitHits > 0) {
      return new ResourceError(
        `${what} hit the sandbox's process limit (${this.opts.maxProcesses}): forks failed. Raise it with maxProcesses, or run fewer processes at once.`,
      );
    }
    return undefined;
  }
}
