// SandboxPool: keeps K sandboxes of one class and configuration booted, so acquire() hands one
// out in milliseconds instead of a boot. A sandbox is handed out once and never comes back: when
// its user is done it is stopped, and the pool boots a fresh one in the background, within a
// memory budget.
import { debuglog } from "node:util";

import { InvalidArgumentError, SandboxNotRunningError } from "../errors.js";
import { checkKeys, keysOf } from "../keys.js";
import { SANDBOX_OPTION_KEYS, type SandboxOptions } from "./options.js";
import type { Sandbox } from "./sandbox.js";

const debug = debuglog("microsandbox");
const REFILL_DELAY_MS = 250;

export interface PoolOptions extends Omit<SandboxOptions, "name"> {
  /** Sandboxes kept booted and ready. */
  size: number;
  /**
   * MiB the pool's background VMs (ready and booting) may take together. Default size × memory.
   * A caller waiting in acquire() with nothing ready still gets a boot, one at a time.
   */
  memoryBudget?: number;
}

const POOL_OPTION_KEYS = [
  ...SANDBOX_OPTION_KEYS.filter((k) => k !== "name"),
  ...keysOf<Pick<PoolOptions, "size" | "memoryBudget">>({ size: true, memoryBudget: true }),
];

export interface PoolStats {
  ready: number;
  booting: number;
  /** Handed out and not yet released. */
  inUse: number;
  /** Boots started since the pool was made. */
  boots: number;
  /** Boots that failed (a waiting acquire() gets the error; the rest goes to debug output). */
  failures: number;
}

export class SandboxPool<T extends Sandbox> {
  private readonly ready: T[] = [];
  private readonly booting = new Set<Promise<void>>();
  /** Refills scheduled after hand-outs, not yet run. */
  private readonly delayed = new Map<NodeJS.Timeout, { done: Promise<void>; resolve: () => void }>();
  private readonly inUse = new Set<T>();
  private readonly waiters: { resolve: (sb: T) => void; reject: (err: Error) => void }[] = [];
  private boots = 0;
  private failures = 0;
  private closed = false;
  private readonly memory: number;
  private readonly budget: number;

  constructor(
    private readonly Kind: new (opts?: SandboxOptions) => T,
    private readonly opts: PoolOptions,
  ) {
    checkKeys("pool option", opts, POOL_OPTION_KEYS);
    if (!Number.isInteger(opts.size) || opts.size < 1) throw new InvalidArgumentError(`pool size must be a whole number >= 1, got ${opts.size}`);
    this.memory = opts.memory ?? 512;
    this.budget = opts.memoryBudget ?? opts.size * this.memory;
    if (!(this.budget >= this.memory)) {
      throw new InvalidArgumentError(`memoryBudget ${opts.memoryBudget} MiB is below one sandbox's ${this.memory} MiB`);
    }
    new Kind(this.sandboxOptions()); // validates the options now, before anything boots
    this.refill();
  }

  get stats(): PoolStats {
    return { ready: this.ready.length, booting: this.booting.size, inUse: this.inUse.size, boots: this.boots, failures: this.failures };
  }

  /**
   * Resolves once the pool holds `size` ready sandboxes (or as many as the budget allows),
   * including the replacements of sandboxes just handed out, whose boots start a moment later.
   */
  async warm(): Promise<void> {
    while (this.delayed.size || this.booting.size) {
      for (const timer of this.delayed.keys()) timer.ref(); // someone is waiting for it now
      await Promise.race([...[...this.delayed.values()].map((d) => d.done), ...this.booting]);
    }
  }

  /** A booted sandbox: a ready one at once, else the next to finish booting. */
  async acquire(): Promise<T> {
    if (this.closed) throw new SandboxNotRunningError("the sandbox pool is closed");
    const sb = this.ready.shift();
    if (sb) {
      this.inUse.add(sb);
      sb.armLifetime(); // maxDuration and idleTimeout count from the hand-out
      // The replacement boots a moment later: a boot takes every core it can get, and the
      // caller's first commands should not have to share them with it.
      this.refillSoon();
      return sb;
    }
    // Nothing ready: make sure a boot is under way for this caller, then wait for one.
    const got = new Promise<T>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.refill(true);
    return got;
  }

  /** Ends a sandbox from acquire(): it is stopped, never reused, and the pool refills. */
  async release(sb: T): Promise<void> {
    this.inUse.delete(sb);
    try {
      await sb.stop();
    } finally {
      this.refill();
    }
  }

  /** Stops every sandbox the pool holds or is booting; handed-out ones stay their users'. */
  async close(): Promise<void> {
    this.closed = true;
    for (const [timer, { resolve }] of this.delayed) {
      clearTimeout(timer);
      resolve();
    }
    this.delayed.clear();
    for (const w of this.waiters.splice(0)) w.reject(new SandboxNotRunningError("the sandbox pool was closed"));
    while (this.booting.size) await Promise.allSettled(this.booting);
    await Promise.all(this.ready.splice(0).map((sb) => sb.stop()));
  }

  private sandboxOptions(): SandboxOptions {
    const { size: _size, memoryBudget: _budget, ...rest } = this.opts;
    return rest;
  }

  // A refill REFILL_DELAY_MS from now, which warm() waits for. Unref'd until someone waits: it
  // does not keep the process alive by itself.
  private refillSoon(): void {
    let resolve!: () => void;
    const done = new Promise<void>((r) => (resolve = r));
    const timer = setTimeout(() => {
      this.delayed.delete(timer);
      this.refill();
      resolve();
    }, REFILL_DELAY_MS);
    timer.unref();
    this.delayed.set(timer, { done, resolve });
  }

  // Boots sandboxes until `size` are ready or booting, within the budget. `demand` lets one boot
  // past the budget when a caller is waiting and nothing else is booting.
  private refill(demand = false): void {
    if (this.closed) return;
    const owned = () => this.ready.length + this.booting.size;
    const fits = () => (owned() + 1) * this.memory <= this.budget;
    while ((owned() < this.opts.size + this.waiters.length && fits()) || (demand && this.booting.size === 0)) {
      demand = false;
      this.bootOne();
    }
  }

  private bootOne(): void {
    this.boots++;
    const sb = new this.Kind(this.sandboxOptions());
    sb.holdLifetime();
    const boot = sb
      .start()
      .then(() => sb.prewarm())
      .then(
        async () => {
          if (this.closed) return sb.stop().catch((err: unknown) => debug("pool: stopping a late boot failed: %s", (err as Error).message));
          const waiter = this.waiters.shift();
          if (waiter) {
            this.inUse.add(sb);
            sb.armLifetime();
            waiter.resolve(sb);
          } else {
            this.ready.push(sb);
          }
        },
        (err: unknown) => {
          this.failures++;
          debug("pool boot failed: %s", (err as Error).message);
          // A caller waiting on this boot gets its error rather than an endless retry.
          this.waiters.shift()?.reject(err as Error);
        },
      );
    const tracked = boot.finally(() => {
      this.booting.delete(tracked);
      if (this.waiters.length) this.refill(true); // the next waiting caller's boot
    });
    this.booting.add(tracked);
  }
}
