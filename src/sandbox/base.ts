// The core of a sandbox, one VM's life: options, start (a boot, or a restored or adopted VM
// attached), lifetime limits, stop; the agent and what processes in it run with; its logs and
// metrics. Sandbox (sandbox.ts) adds copies (fork, pause, save, resume), outliving this process
// (detach, orphans, adopt) and network changes on top; kept apart to keep each file readable.
import { randomBytes } from "node:crypto";
import { debuglog } from "node:util";

import type { AgentClient, GuestMetrics } from "../agent-client/client.js";
import type { ExitStatus } from "../agent-client/process.js";

import { InvalidArgumentError, ResourceError, type SandboxExpiredError, SandboxNotRunningError } from "../errors.js";
import { resolveImage } from "../images/sources.js";
import { type ImageConfig, ImageStore, type ResolvedImage } from "../images/store.js";
import { checkKeys, keysOf } from "../keys.js";
import {
  type BackendInfo,
  type BootTimeline,
  type Confinement,
  egressEnv,
  type KeptSession,
  type Machine,
  type MachinePlan,
  type MachineSpec,
  planMachine,
} from "../vm/machine.js";
import { type CommandOptions, SandboxCommands } from "./commands.js";
import { SandboxFiles } from "./files.js";
import { Lifetime } from "./lifetime.js";
import { CommandTap, type LogEntry, type LogOptions, SandboxLog } from "./logs.js";
import { type CpuMark, cpuMark, type SandboxMetrics, sandboxMetrics } from "./metrics.js";
import {
  checkCpus,
  checkMemory,
  checkSeconds,
  envRecord,
  guestEnv,
  machineSpecOf,
  type ResolvedOptions,
  resolveOptions,
  type SandboxOptions,
  START_OPTION_KEYS,
  type StartOptions,
} from "./options.js";
import { attachedDirs } from "./outlive.js";
import { registry, type SandboxInfo } from "./registry.js";
import { checkMounted, leaseVolumes, type VolumeLease } from "./volumes.js";

const LOG_KEYS = keysOf<LogOptions>({ tail: true, sources: true });

const debug = debuglog("microsandbox");

/** "qemu (tcg): why", for logs and messages. */
export const describeBackend = (b: BackendInfo): string => `${b.name}${b.accel ? ` (${b.accel})` : ""}: ${b.reason}`;

/** The core of every Sandbox: its VM's life, and what runs in it. */
export abstract class SandboxBase implements AsyncDisposable {
  /** Shell commands: run() and the streaming spawn(). */
  readonly command = new SandboxCommands(this);
  /** Files in the sandbox, and copies between host and guest. */
  readonly fs = new SandboxFiles(() => this.agent());
  protected opts: ResolvedOptions;
  /** @internal */ protected vm: Machine | undefined;
  /** @internal The running VM's image, by content: a paused sandbox resumes only on the same. */
  protected imageId = "";
  private starting: Promise<void> | undefined;
  /** @internal */ protected imageConfig: ImageConfig = { env: [] };
  private bootTimeline: BootTimeline | undefined;
  /** Stable and unique: "sb-" and 12 random hex digits. */
  readonly id = `sb-${randomBytes(6).toString("hex")}`;
  /** @internal */ protected startedAt: Date | undefined;
  private lifetime: Lifetime | undefined;
  // A pool holds a sandbox's lifetime until it hands it out.
  private lifetimeHeld = false;
  private expiredBy: SandboxExpiredError | undefined;
  /** @internal What the registry lists this sandbox by. */
  protected readonly listed = { info: () => this.info() };
  /** @internal */ protected log: SandboxLog | undefined;
  private volumes: VolumeLease | undefined;

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

  /** @internal Lists this sandbox while `bring` brings it up, and after if it succeeded; arms its lifetime. */
  protected async tracked(bring: () => Promise<void>): Promise<void> {
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

  /** @internal What this sandbox asks of its VM. */
  protected machineSpec(): MachineSpec {
    return machineSpecOf(this.opts, this.log?.console);
  }

  /** @internal Boots a VM from the image for this sandbox. */
  protected async boot(): Promise<void> {
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

  /** @internal Makes `vm` this sandbox's running VM; its timeline starts `beforeMs` earlier (image prep). */
  protected attach(vm: Machine, imageId: string, imageConfig: ImageConfig, beforeMs = 0): void {
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

  /** @internal Writes an outliving sandbox's state file anew (sandbox.ts); a no-op for other sandboxes. */
  abstract recordChanged(held?: boolean): void;

  /** Processes a copy of this sandbox keeps running (the interpreter of run()). */
  protected keptSessions(): KeptSession[] {
    return [];
  }

  /** Takes over the kept processes in a copy. */
  protected adopt(_kept: KeptSession[]): void {}

  // Saves of one VM (forks, a pause: sandbox.ts) and its stop happen one after another: each
  // pauses the VM and lets it go on, and two interleaved would let one save a running VM.
  private saves: Promise<unknown> = Promise.resolve();
  /** @internal Resolves once the saves (fork, pause, save) under way have ended. */
  protected savesDone(): Promise<unknown> {
    return this.saves;
  }

  /** @internal Runs `fn` after the saves before it, and before a stop() called after it. */
  protected oneSaveAtATime<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.saves.then(fn);
    this.saves = run.catch(() => {});
    return run;
  }

  /** Stops the VM: the agent shuts the guest down, then the VMM is made sure to be gone. */
  async stop(): Promise<void> {
    await this.saves;
    await this.halt();
  }

  /** @internal stop() without waiting for saves (a pause ends with it). */
  protected async halt(): Promise<void> {
    await this.starting?.catch(() => {});
    const vm = this.letGo();
    if (!vm) return;
    const dir = vm.record()?.vm.dir;
    await vm.stop();
    if (dir) attachedDirs.delete(dir);
    await this.volumes?.release();
    this.volumes = undefined;
    this.log?.add("event", "stopped");
    this.log?.flush();
  }

  /**
   * @internal Ends the lifetime limits and the listing; the VM, if any, is this sandbox's no more.
   * `release` runs on it before the interpreters are dropped (which ends their processes).
   */
  protected letGo(release?: (vm: Machine) => void): Machine | undefined {
    const vm = this.vm;
    this.lifetime?.end();
    this.lifetime = undefined;
    registry.delete(this.listed);
    if (!vm) return undefined;
    this.vm = undefined;
    release?.(vm);
    this.onStop();
    return vm;
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
