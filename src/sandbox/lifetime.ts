// A running sandbox's lifetime limits: maxDuration (seconds from when it runs) and idleTimeout
// (seconds with nothing under way in it). Activity is read off the agent connection: any open
// session but an idle interpreter's is work under way, so a long command keeps its sandbox
// alive without any call to touch(). Timers are unref'd: a limit never keeps the process alive.
import { SandboxExpiredError } from "../errors.js";

export interface LifetimeLimits {
  maxDuration?: number | undefined;
  idleTimeout?: number | undefined;
}

export class Lifetime {
  private readonly started = performance.now();
  private lastActive = performance.now();
  private readonly timers: NodeJS.Timeout[] = [];

  /**
   * Arms `limits` for `name`; `busy()` says whether work is under way; `expire` gets the error
   * naming the limit that fired, once.
   */
  constructor(
    private readonly name: string,
    private readonly limits: LifetimeLimits,
    private readonly busy: () => boolean,
    private readonly expire: (err: SandboxExpiredError) => void,
  ) {
    const { maxDuration, idleTimeout } = limits;
    if (maxDuration !== undefined) this.timers.push(setTimeout(() => this.fire("maxDuration"), maxDuration * 1000));
    if (idleTimeout !== undefined) {
      // Checked at a quarter of the limit (at most every second): expiry lands within that of it.
      this.timers.push(setInterval(() => this.check(idleTimeout), Math.min(1000, (idleTimeout * 1000) / 4)));
    }
    for (const t of this.timers) t.unref();
  }

  /** Counts as activity now: the idle clock starts again. */
  touch(): void {
    this.lastActive = performance.now();
  }

  /** Seconds left before maxDuration, if set. */
  remaining(): number | undefined {
    const { maxDuration } = this.limits;
    return maxDuration === undefined ? undefined : Math.max(0, maxDuration - (performance.now() - this.started) / 1000);
  }

  /** Disarms every limit (the sandbox stopped). */
  end(): void {
    for (const t of this.timers.splice(0)) clearTimeout(t);
  }

  private check(idleTimeout: number): void {
    if (this.busy()) this.touch();
    else if (performance.now() - this.lastActive >= idleTimeout * 1000) this.fire("idleTimeout");
  }

  private fire(limit: "maxDuration" | "idleTimeout"): void {
    this.end();
    const what =
      limit === "maxDuration" ? `ran for its maxDuration of ${this.limits.maxDuration} s` : `was idle for its idleTimeout of ${this.limits.idleTimeout} s`;
    this.expire(new SandboxExpiredError(`sandbox ${this.name} ${what} and was stopped`, limit));
  }
}
