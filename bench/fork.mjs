#!/usr/bin/env node
// Fork benchmark (npm run bench): sandbox.fork() → first command output in the copy, next to a
// cold boot → first output in the same run, alternating. Writes bench/results/fork.{json,md}.
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { summarize } from "../dist/bench/stats.js";
import { CustomSandbox } from "../dist/index.js";
import { machine } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const RUNS = Number(process.env.MSB_BENCH_RUNS ?? 10);
const opts = { image: "local:busybox", memory: 256 };

const parent = await CustomSandbox.create(opts);
await parent.command.run("true");
const fork = [];
const cold = [];
for (let i = 0; i < RUNS; i++) {
  let t = performance.now();
  const child = await parent.fork();
  await child.command.run("echo", ["ready"]);
  fork.push(performance.now() - t);
  await child.stop();
  t = performance.now();
  const sb = await CustomSandbox.create({ ...opts, snapshot: false });
  await sb.command.run("echo", ["ready"]);
  cold.push(performance.now() - t);
  await sb.stop();
}
await parent.stop();
const f = summarize(fork);
const c = summarize(cold);
const result = {
  date: new Date().toISOString(),
  machine: machine(),
  runs: RUNS,
  forkToFirstOutputMs: f,
  coldBootToFirstOutputMs: c,
  ratio: f.p50 / c.p50,
  target: "fork p50 <= 0.1 x cold boot p50",
};
writeFileSync(path.join(here, "results", "fork.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(
  path.join(here, "results", "fork.md"),
  `# Fork\n\n${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.kernel}.\n` +
    `Busybox image, 256 MiB, QEMU TCG, ${RUNS} runs alternating. fork() of a running sandbox (itself restored from a ` +
    `snapshot, so its RAM goes into the saved state: ~65 MB written and read back) → first output in the copy: ` +
    `p50 ${f.p50.toFixed(0)} ms, p95 ${f.p95.toFixed(0)} ms; cold boot → first output p50 ${c.p50.toFixed(0)} ms; ` +
    `ratio ${result.ratio.toFixed(2)} (target ≤ 0.1, not met).\n`,
);
console.log(`fork → first output p50 ${f.p50.toFixed(0)} ms, cold ${c.p50.toFixed(0)} ms, ratio ${result.ratio.toFixed(2)}`);
