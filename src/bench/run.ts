// The boot-latency benchmark behind `msb bench`: N sandboxes created sequentially, at once
// (burst) or at a fixed spacing (staggered) — the modes of the public ComputeSDK sandbox
// benchmark, whose headline is create() → first command output — each timed phase by phase,
// next to a floor measured in the same run and, optionally, a user's command for comparison.
// Given several kernels, each gets its runs and floor in the same run, interleaved.
import { exec } from "node:child_process";
import { promisify } from "node:util";

import { InvalidArgumentError } from "../errors.js";
import { resolveImage } from "../images/sources.js";
import { ImageStore } from "../images/store.js";
import { checkKeys, keysOf } from "../keys.js";
import { CustomSandbox } from "../sandbox/kinds.js";
import { type BackendInfo, planMachine } from "../vm/machine.js";
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
  /**
   * Guest kernels to compare (QEMU): each gets `runs` sandboxes and its own floor, interleaved
   * run by run (sequential) or batch by batch, so all meet the same machine. Default: the default kernel.
   */
  kernels?: string[];
  /** Called as each run ends. */
  onRun?: (index: number, run: RunTimeline) => void;
}

// One create() → first output → stop(); `backend` learns which VMM the sandbox ran on.
async function oneRun(opts: BenchOptions, kernel: string | undefined, backend?: { info?: BackendInfo }): Promise<RunTimeline> {
  const t0 = performance.now();
  const sb = new CustomSandbox({
    image: opts.image ?? "local:busybox",
    memory: opts.memory ?? 256,
    backend: opts.backend ?? "auto",
    snapshot: opts.snapshot ?? false,
    ...(kernel ? { kernel } : {}),
  });
  try {
    await sb.start();
    const tl = sb.timeline!;
    if (backend) backend.info = sb.backend;
    const [cmd, ...args] = opts.command ?? ["echo", "ready"];
    await sb.command.run(cmd!, args);
    const firstOutput = performance.now() - t0;
    const t1 = performance.now();
    await sb.stop();
    return {
      ok: true,
      hostPrep: tl.hostPrepMs,
      vmmStart: tl.vmmStartMs,
      kernelToInit: tl.kernelMs,
      agentReady: tl.agentReadyMs,
      firstOutput,
      stop: performance.now() - t1,
    };
  } catch (err) {
    await sb.stop().catch(() => {});
    return { ok: false, error: (err as Error).message.split("\n")[0] };
  }
}

/** Runs the benchmark with the default kernel, or the one kernel `opts.kernels` names. */
export async function runBench(opts: BenchOptions): Promise<BenchResult> {
  if ((opts.kernels?.length ?? 0) > 1) throw new InvalidArgumentError("runBench takes at most one kernel: compare several with runBenchKernels");
  return (await runBenchKernels(opts))[0]!;
}

/** Runs the benchmark once per kernel in `opts.kernels` (or the default one), interleaved; one result each, in that order. */
const BENCH_KEYS = keysOf<BenchOptions>({
  mode: true,
  runs: true,
  spacingMs: true,
  backend: true,
  image: true,
  memory: true,
  command: true,
  compare: true,
  snapshot: true,
  floorRuns: true,
  kernels: true,
  onRun: true,
});

export async function runBenchKernels(opts: BenchOptions): Promise<BenchResult[]> {
  checkKeys("bench option", opts, BENCH_KEYS);
  if (!Number.isInteger(opts.runs) || opts.runs < 1) throw new InvalidArgumentError(`runs must be a whole number >= 1, got ${opts.runs}`);
  if (!["sequential", "burst", "staggered"].includes(opts.mode)) {
    throw new InvalidArgumentError(`mode ${JSON.stringify(opts.mode)} is invalid: use sequential, burst or staggered`);
  }
  const kernels: (string | undefined)[] = opts.kernels?.length ? opts.kernels : [undefined];
  if (opts.kernels?.length && opts.backend === "krun") throw new InvalidArgumentError("kernels are compared on QEMU: libkrun boots its own (libkrunfw's)");
  const spacing = opts.spacingMs ?? 500;
  const runs: RunTimeline[][] = kernels.map(() => []);
  const floors: number[][] = kernels.map(() => []);
  let done = 0;
  const record = (k: number, i: number, r: RunTimeline) => {
    runs[k]![i] = r;
    opts.onRun?.(done++, r);
  };
  // A first, untimed boot per kernel fills the page cache and settles the backend, as later runs will find it.
  const used: { info?: BackendInfo } = {};
  for (const kernel of kernels) {
    const warm = await oneRun({ ...opts, command: ["true"] }, kernel, used);
    if (!warm.ok) throw new InvalidArgumentError(`the benchmark's sandbox does not boot${kernel ? ` on kernel ${kernel}` : ""}: ${warm.error}`);
  }
  // The floor boots the same backend, kernel, flags and devices as the sandboxes, where the backend
  // has one. In sequential mode each floor run follows a sandbox run, so both see the same conditions.
  const plans = await Promise.all(
    kernels.map((kernel) =>
      planMachine({
        name: "floor",
        memory: opts.memory ?? 256,
        cpus: 1,
        network: "none",
        confinement: "required",
        secrets: [],
        ports: [],
        maxProcesses: 1024,
        bootTimeout: 60,
        volumes: [],
        backend: opts.backend ?? "auto",
        ...(kernel ? { kernel } : {}),
      }),
    ),
  );
  const store = new ImageStore();
  const resolved = await resolveImage(store, opts.image ?? "local:busybox");
  const image = { id: resolved.id, rootfs: resolved.rootfs, disk: () => store.disk(resolved) };
  const floorRun = (k: number) => plans[k]!.floor!(image);
  const floorRuns = plans[0]!.floor ? (opts.floorRuns ?? (opts.mode === "burst" ? opts.runs : Math.min(opts.runs, 10))) : 0;
  // Round r visits the kernels in a rotated order, so none always goes first.
  const order = (r: number) => kernels.map((_, k) => (k + r) % kernels.length);
  const indices = Array.from({ length: opts.runs }, (_, i) => i);
  if (opts.mode === "sequential") {
    for (const i of indices) {
      for (const k of order(i)) {
        record(k, i, await oneRun(opts, kernels[k], undefined));
        if (i < floorRuns) floors[k]!.push(await floorRun(k));
      }
    }
  } else {
    for (const k of order(0)) {
      await Promise.all(
        indices.map(async (i) => {
          if (opts.mode === "staggered") await new Promise((r) => setTimeout(r, i * spacing));
          record(k, i, await oneRun(opts, kernels[k], undefined));
        }),
      );
      // The floor meets the same contention as the runs: booted in bursts of as many at once.
      const width = opts.mode === "burst" ? opts.runs : 1;
      for (let i = 0; i < floorRuns; i += width) {
        floors[k]!.push(...(await Promise.all(Array.from({ length: Math.min(width, floorRuns - i) }, () => floorRun(k)))));
      }
    }
  }
  // The name for tables and pictures; the why goes with the machine notes.
  const info = used.info;
  const name = info ? `${info.name}${info.accel ? ` (${info.accel})` : ""}` : "unknown";
  const mode = opts.snapshot ? `${opts.mode}, restored from a snapshot` : opts.mode;
  let comparison: BenchResult["comparison"];
  if (opts.compare) {
    const values: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const t = performance.now();
      await sh(opts.compare);
      values.push(performance.now() - t);
    }
    comparison = { command: opts.compare, values };
  }
  return kernels.map((kernel, k) => ({
    backend: name,
    mode,
    runs: runs[k]!,
    floor: floors[k]!,
    machine: { backendReason: info?.reason ?? "" },
    ...(kernel ? { kernel } : {}),
    ...(comparison ? { comparison } : {}),
  }));
}
