// The sandbox: a VM booted (or restored, or copied) from an image, with commands and files;
// create() = new + start(); stop() or `await using` ends the VM. Its core, one VM's life, is
// SandboxBase (base.ts); here are what copies it (fork, pause, save, resume), what lets it outlive
// this process (outlive, detach, orphans, adopt, discard) and its network policy, which both carry.
// The kinds are in kinds.ts.
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import path from "node:path";
import { debuglog } from "node:util";

import { ImageError, InvalidArgumentError, SandboxNotRunningError, SnapshotUnsupportedError } from "../errors.js";
import { resolveImage } from "../images/sources.js";
import { ImageStore } from "../images/store.js";
import { checkKeys, keysOf } from "../keys.js";
import { ownStamp } from "../liveness.js";
import {
  adoptMachine,
  type Capability,
  checkInjectHeaders,
  checkSecrets,
  type InjectHeadersOption,
  type Machine,
  restoreMachine,
  type SecretsOption,
  secretsOption,
} from "../vm/machine.js";
import { checkNetwork, checkPorts, type NetworkPolicy, type PortForward } from "../vm/netpolicy.js";
import { describeBackend, SandboxBase } from "./base.js";
import { restoreFiles, saveFiles } from "./files-only.js";
import { SandboxLog } from "./logs.js";
import { checkName, type SandboxOptions } from "./options.js";
import { attachedDirs, claimOrphan, discardOrphan, listOrphans, type OrphanSandbox, type OutliveState, writeOutliveState } from "./outlive.js";
import { newPausedDir, readPaused, withPausedLock, writePaused } from "./paused.js";
import type { SandboxPool } from "./pool.js";
import { registry } from "./registry.js";

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

export abstract class Sandbox extends SandboxBase {
  private adoptionData: unknown;

  /** Creates and starts a sandbox; with `pool`, takes an already booted one from it. */
  static async create<T extends Sandbox>(this: new (opts?: SandboxOptions) => T, opts: SandboxOptions & { pool?: SandboxPool<T> } = {}): Promise<T> {
    const { pool, ...options } = opts;
    if (pool) return pool.acquire();
    const sandbox = new this(options);
    await sandbox.start();
    return sandbox;
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
    child.recordChanged(); // a fork of an outliving sandbox outlives this process too
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
    const vm = this.vm;
    const machine = vm?.record();
    if (!vm || !machine) return;
    try {
      writeOutliveState({
        kind: this.constructor.name,
        options: this.copyOptions(this.name),
        imageId: this.imageId,
        imageConfig: this.imageConfig,
        machine,
        keep: this.keptSessions(),
        commands: this.command.keptNow(),
        ...(this.adoptionData !== undefined ? { data: this.adoptionData } : {}),
        ...(held ? { host: ownStamp() } : {}),
      });
      // Recorded where a next host finds it: only now may it outlive this process.
      vm.hold();
    } catch (err) {
      debug("recording sandbox %s for adoption: %s", this.name, (err as Error).message);
    }
  }

  /**
   * Lets go of this outliving sandbox (option outlive), once a fork, pause or save under way has
   * ended: its VM runs on with its processes held, for Sandbox.adopt() in this or another process;
   * this object no longer has it. False when there was no VM to let go of (stopped, or paused by
   * the save that was under way).
   */
  async detach(): Promise<boolean> {
    await this.savesDone();
    const vm = this.vm;
    if (!vm) return false;
    if (!vm.record()) throw new InvalidArgumentError(`sandbox ${this.name} was not created with outlive: true: stop() it instead`);
    this.recordChanged(false);
    // Let go of before the interpreters are dropped: their processes are the next host's.
    this.letGo((held) => held.detach());
    attachedDirs.delete(vm.record()!.vm.dir);
    this.log?.add("event", "let go of: it runs on for another host");
    this.log?.flush();
    return true;
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
    return listOrphans();
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
    const release = claimOrphan(orphan);
    const sandbox = new this(state.options);
    // Before anything records it again: its record keeps the caller's data throughout.
    sandbox.adoptionData = state.data;
    try {
      await sandbox.tracked(() => sandbox.adoptFrom(state));
    } catch (err) {
      discardOrphan(orphan);
      throw err;
    } finally {
      release();
    }
    return sandbox;
  }

  // Takes over the running VM of `state` into this sandbox. The VM needs nothing of its image:
  // a tag that moved since, or an image removed, does not stop it (a fork would need the disk).
  private async adoptFrom(state: OutliveState): Promise<void> {
    const store = new ImageStore();
    const image = { ref: state.options.image, id: state.imageId, rootfs: path.join(store.imageDir(state.imageId), "rootfs"), config: state.imageConfig };
    const vm = await adoptMachine(
      state.machine,
      { id: image.id, rootfs: image.rootfs, disk: () => store.disk(image) },
      [...state.keep, ...state.commands].map((k) => k.session),
    );
    this.attach(vm, image.id, image.config);
    this.adopt(state.keep);
    this.command.adopt(state.commands);
  }
}
