#!/usr/bin/env node
// Boot benchmark (npm run bench): `msb bench`'s runner in sequential (20) and burst (4) modes,
// each with a floor measured in the same run, and the warm pool's acquire → first output.
// Writes bench/results/boot-{sequential,burst}.{json,md,svg} and bench/results/pool.{json,md}.
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { CustomSandbox, runBench, SandboxPool } from "../dist/index.js";
import { formatTable, PHASES, phaseValues, toJson } from "../dist/bench/report.js";
import { summarize } from "../dist/bench/stats.js";
import { cdfSvg } from "../dist/bench/svg.js";
import { machine } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = (name) => path.join(here, "results", name);
const SEQUENTIAL = Number(process.env.MSB_BENCH_RUNS ?? 20);
const BURST = 4;

for (const [mode, runs] of [["sequential", SEQUENTIAL], ["burst", BURST]]) {
  const result = await runBench({ mode, runs, image: "local:busybox", memory: 256 });
  result.machine = { ...machine(), ...result.machine };
  const table = formatTable(result);
  const series = PHASES.filter((p) => p.key !== "stop").map((p) => ({ name: p.label, values: phaseValues(result, p.key) }));
  if (result.floor.length) series.push({ name: "floor (trivial init)", values: result.floor });
  writeFileSync(out(`boot-${mode}.json`), JSON.stringify(toJson(result), null, 2) + "\n");
  writeFileSync(out(`boot-${mode}.svg`), cdfSvg(series, { title: `${result.backend}, ${mode}, ${runs} runs`, unit: "ms" }));
  writeFileSync(
    out(`boot-${mode}.md`),
    `# Boot benchmark, ${mode}\n\n${new Date().toISOString()} — ${result.machine.cpu}, ${result.machine.cpus} cores, ` +
      `${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.\n` +
      `Backend: ${result.backend} (${result.machine.backendReason}). Busybox image, 256 MiB, 1 vCPU.\n\n` +
      "```\n" + table + "\n```\n\n![CDF per phase](boot-" + mode + ".svg)\n",
  );
  console.log(table, "\n");
}

// The warm pool: acquire() → first command output, with the pool kept full.
const pool = new SandboxPool(CustomSandbox, { image: "local:busybox", memory: 256, size: 2 });
await pool.warm();
const times = [];
for (let i = 0; i < 10; i++) {
  await pool.warm();
  const t = performance.now();
  const sb = await CustomSandbox.create({ pool });
  await sb.command.run("echo", ["ready"]);
  times.push(performance.now() - t);
  await pool.release(sb);
}
await pool.close();
const s = summarize(times);
const poolResult = { date: new Date().toISOString(), machine: machine(), runs: times.length, acquireToFirstOutputMs: s, target: "p50 <= 50" };
writeFileSync(out("pool.json"), JSON.stringify(poolResult, null, 2) + "\n");
writeFileSync(
  out("pool.md"),
  `# Warm pool\n\n${poolResult.date} — ${poolResult.machine.cpu}, ${poolResult.machine.cpus} cores, ${poolResult.machine.kernel}.\n` +
    `acquire() from a full pool of 2 → first command output (\`echo\`), ${times.length} runs: ` +
    `p50 ${s.p50.toFixed(1)} ms, p95 ${s.p95.toFixed(1)} ms (target p50 ≤ 50 ms). A boot on this machine takes ~1.3 s.\n`,
);
console.log(`pool: acquire → first output p50 ${s.p50.toFixed(1)} ms, p95 ${s.p95.toFixed(1)} ms`);
