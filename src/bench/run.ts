// The boot-latency benchmark behind `msb bench`: N sandboxes created sequentially, at once
// (burst) or at a fixed spacing (staggered) — the modes of the public ComputeSDK sandbox
// benchmark, whose headline is create() → first command output — each timed phase by phase,
// next to a floor measured in the same run and, optionally, a user's command for comparison.
import { exec } from "node:child_process";
import { promisify } from "node:util";

import { InvalidArgumentError } from "../errors.js";
import { ImageStore } from "../images/store.js";
import { resolveImage } from "../images/sources.js";
import { CustomSandbox } from "../sandbox/kinds.js";
import { backendFor, chooseBackend, forcedAccel } from "../vm/select.js";
import type { BenchResult, RunTimeline } from "./report.js";

const sh = promisify(exec);

export type BenchMode = "sequential" | "burst" | "staggered";

export interface BenchOptions {
  mode: BenchMode;
  /** Sandboxes to create. */
  runs: number;
  /** Milliseconds between starts (staggered). Default 500. */
  spacingMs?: number;
  backend?: "auto" | "krun" | "qemu";
  /** Default "local:busybox". */
  image?: string;
  /** MiB per sandbox. Default 256. */
  memory?: number;
  /** The first command, whose output ends a run. Default: echo. */
  command?: string[];
  /** A shell command timed `runs` times beside, for comparison (another runtime, say). */
  compare?: string;
  /**
   * Start each sandbox from a memory snapshot (restore-on-create; the untimed first run makes it)
   * instead of booting it. Default false: every run boots cold.
   */
  snapshot?: boolean;
  /** Floor runs (where the backend has a floor: QEMU); 0 skips the floor. Default min(runs, 10). */
  floorRuns?: number;
  /** Called as each run ends. */
  onRun?: (index: number, run: RunTimeline) => void;
}

// One create() → first output → stop(); `backend` learns which VMM the sandbox ran on.
async function oneRun(opts: BenchOptions, backend?: { name?: string }): Promise<RunTimeline> {
  const t0 = performance.now();
  const sb = new CustomSandbox({ image: opts.image ?? "local:busybox", memory: opts.memory ?? 256, backend: opts.backend ?? "auto", snapshot: opts.snapshot ?? false });
  try {
    await sb.start();
    const tl = sb.timeline!;
    if (backend) backend.name = sb.backend;
    const [cmd, ...args] = opts.command ?? ["echo", "ready"];
    await sb.command.run(cmd!, args);
    const firstOutput = performance.now() - t0;
    const t1 = performance.now();
    await sb.stop();
    return {
      ok: true,
      hostPrep: tl.hostPrepMs,
      vmmStart: tl.vmmStartMs,
      // A restored VM did not boot: its guest timeline is its template's.
      kernelToInit: tl.snapshot?.kind === "restored" ? undefined : tl.guest.find((e) => e.name === "agent_start")?.ms,
      agentReady: tl.agentReadyMs,
      firstOutput,
      stop: performance.now() - t1,
    };
  } catch (err) {
    await sb.stop().catch(() => {});
    return { ok: false, error: (err as Error).message.split("\n")[0] };
  }
}

export async function runBench(opts: BenchOptions): Promise<BenchResult> {
  if (!Number.isInteger(opts.runs) || opts.runs < 1) throw new InvalidArgumentError(`runs must be a whole number >= 1, got ${opts.runs}`);
  if (!["sequential", "burst", "staggered"].includes(opts.mode)) {
    throw new InvalidArgumentError(`mode ${JSON.stringify(opts.mode)} is invalid: use sequential, burst or staggered`);
  }
  const spacing = opts.spacingMs ?? 500;
  const runs: RunTimeline[] = [];
  const record = (i: number, r: RunTimeline) => {
    runs[i] = r;
    opts.onRun?.(i, r);
  };
  // A first, untimed boot fills the page cache and settles the backend, as later runs will find it.
  const used: { name?: string } = {};
  const warm = await oneRun({ ...opts, command: ["true"] }, used);
  if (!warm.ok) throw new InvalidArgumentError(`the benchmark's sandbox does not boot: ${warm.error}`);
  // The floor boots the same backend, flags and devices as the sandboxes, where the backend has
  // one. In sequential mode each floor run follows a sandbox run, so both see the same conditions.
  const floor: number[] = [];
  const accel = forcedAccel();
  const decision = await chooseBackend({ backend: opts.backend ?? "auto", network: "none", ...(accel ? { accel } : {}) });
  const floorBackend = backendFor(decision);
  const floorRuns = floorBackend.floor ? (opts.floorRuns ?? (opts.mode === "burst" ? opts.runs : Math.min(opts.runs, 10))) : 0;
  const floorRun = () => floorBackend.floor!(floorConfig);
  const store = new ImageStore();
  const image = await resolveImage(store, opts.image ?? "local:busybox");
  const floorConfig = {
    name: "floor", memory: opts.memory ?? 256, cpus: 1, network: "none" as const, maxProcesses: 1024,
    rootfs: image.rootfs, rootDisk: () => store.disk(image), bootTimeout: 60,
  };
  const indices = Array.from({ length: opts.runs }, (_, i) => i);
  if (opts.mode === "sequential") {
    for (const i of indices) {
      record(i, await oneRun(opts));
      if (i < floorRuns) floor.push(await floorRun());
    }
  } else {
    await Promise.all(
      indices.map(async (i) => {
        if (opts.mode === "staggered") await new Promise((r) => setTimeout(r, i * spacing));
        record(i, await oneRun(opts));
      }),
    );
    // The floor meets the same contention as the runs: booted in bursts of as many at once.
    const width = opts.mode === "burst" ? opts.runs : 1;
    for (let i = 0; i < floorRuns; i += width) {
      floor.push(...(await Promise.all(Array.from({ length: Math.min(width, floorRuns - i) }, floorRun))));
    }
  }
  // "qemu (tcg): why" → the name for tables and pictures; the why goes with the machine notes.
  const [name, ...why] = (used.name ?? "unknown").split(": ");
  const mode = opts.snapshot ? `${opts.mode}, restored from a snapshot` : opts.mode;
  const result: BenchResult = { backend: name!, mode, runs, floor, machine: { backendReason: why.join(": ") } };
  if (opts.compare) {
    const values: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const t = performance.now();
      await sh(opts.compare);
      values.push(performance.now() - t);
    }
    result.comparison = { command: opts.compare, values };
  }
  return result;
}
