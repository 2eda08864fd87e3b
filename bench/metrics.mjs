#!/usr/bin/env node
// Observer overhead (npm run bench): the guest's busy CPU over a quiet window with nobody
// sampling, next to the same window with sandbox.metricsStream(1000) running, and with an idle
// recursive fs.watch of /usr held open, in one VM, alternated ROUNDS times. Busy CPU is the guest
// kernel's own count (/proc/stat through the agent), read at each window's ends. Writes
// bench/results/metrics.{json,md}.
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { CustomSandbox } from "../dist/index.js";
import { machine, median } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const WINDOW_MS = 10_000;
const ROUNDS = 3;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const sb = await CustomSandbox.create({ image: "local:busybox", memory: 256 });
const busyPercent = (a, b) => ((b.cpu.timeMs - a.cpu.timeMs) / (b.uptimeMs - a.uptimeMs)) * 100;
const quiet = [];
const sampled = [];
const watched = [];
try {
  await sleep(2000); // the restore's own work settles
  for (let i = 0; i < ROUNDS; i++) {
    let a = await sb.metrics();
    await sleep(WINDOW_MS);
    quiet.push(busyPercent(a, await sb.metrics()));

    a = await sb.metrics();
    const stop = Date.now() + WINDOW_MS;
    let samples = 0;
    for await (const _ of sb.metricsStream(1000)) if (++samples && Date.now() >= stop) break;
    sampled.push(busyPercent(a, await sb.metrics()));

    const watch = sb.fs.watch("/usr", { recursive: true });
    const draining = (async () => {
      for await (const _ of watch);
    })();
    await sleep(1000); // the watches of every directory below /usr are placed
    a = await sb.metrics();
    await sleep(WINDOW_MS);
    watched.push(busyPercent(a, await sb.metrics()));
    watch.close();
    await draining;
  }
} finally {
  await sb.stop();
}

const round = (x) => Math.round(x * 100) / 100;
const result = {
  date: new Date().toISOString().slice(0, 10),
  machine: { ...machine(), backend: "qemu" },
  windowMs: WINDOW_MS,
  rounds: ROUNDS,
  guestBusyPercent: { quiet: round(median(quiet)), sampledEverySecond: round(median(sampled)), idleWatcher: round(median(watched)) },
  overheadPercent: { sampler: round(median(sampled) - median(quiet)), idleWatcher: round(median(watched) - median(quiet)) },
};
const md = `# Observer overhead: the metrics sampler and an idle watcher

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.
One busybox sandbox (1 vCPU, 256 MiB, QEMU under TCG). Guest busy CPU over ${WINDOW_MS / 1000} s windows, medians of ${ROUNDS} alternated rounds.

| window | guest CPU busy |
| --- | --- |
| nobody sampling | ${result.guestBusyPercent.quiet} % |
| \`metricsStream(1000)\` | ${result.guestBusyPercent.sampledEverySecond} % |
| an idle \`fs.watch("/usr", { recursive: true })\` | ${result.guestBusyPercent.idleWatcher} % |

The sampler costs **${result.overheadPercent.sampler} %** of the guest's CPU, an idle watcher **${result.overheadPercent.idleWatcher} %** (target < 1 % each).
`;
writeFileSync(path.join(here, "results", "metrics.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(here, "results", "metrics.md"), md);
process.stdout.write(md);
