#!/usr/bin/env node
// Boot benchmark (npm run bench): `msb bench`'s runner in sequential (20) and burst (4) modes,
// each with a floor measured in the same run, then sequential again restoring from a memory
// snapshot instead of booting; the memory 8 restored clones take next to one cold-booted VM; and
// the warm pool's acquire → first output. Writes bench/results/boot-{sequential,burst,snapshot}.
// {json,md,svg}, snapshot-memory.{json,md} and pool.{json,md}.
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { formatTable, PHASES, phaseValues, toJson } from "../dist/bench/report.js";
import { summarize } from "../dist/bench/stats.js";
import { cdfSvg } from "../dist/bench/svg.js";
import { CustomSandbox, runBench, SandboxPool } from "../dist/index.js";
import { machine } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = (name) => path.join(here, "results", name);
const SEQUENTIAL = Number(process.env.MSB_BENCH_RUNS ?? 20);
const BURST = 4;

const p50 = {};
for (const [name, mode, runs, snapshot] of [
  ["sequential", "sequential", SEQUENTIAL, false],
  ["burst", "burst", BURST, false],
  ["snapshot", "sequential", SEQUENTIAL, true],
]) {
  const result = await runBench({ mode, runs, image: "local:busybox", memory: 256, snapshot });
  p50[name] = summarize(phaseValues(result, "firstOutput")).p50;
  result.machine = { ...machine(), ...result.machine };
  const table = formatTable(result);
  const series = PHASES.filter((p) => p.key !== "stop").map((p) => ({ name: p.label, values: phaseValues(result, p.key) }));
  if (result.floor.length) series.push({ name: "floor (trivial init)", values: result.floor });
  writeFileSync(out(`boot-${name}.json`), `${JSON.stringify(toJson(result), null, 2)}\n`);
  writeFileSync(out(`boot-${name}.svg`), cdfSvg(series, { title: `${result.backend}, ${result.mode}, ${runs} runs`, unit: "ms" }));
  writeFileSync(
    out(`boot-${name}.md`),
    `# Boot benchmark, ${result.mode}\n\n${new Date().toISOString()} — ${result.machine.cpu}, ${result.machine.cpus} cores, ` +
      `${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.\n` +
      `Backend: ${result.backend} (${result.machine.backendReason}). Busybox image, 256 MiB, 1 vCPU.\n\n` +
      "```\n" +
      table +
      "\n```\n\n![CDF per phase](boot-" +
      name +
      ".svg)\n",
  );
  console.log(table, "\n");
}

console.log(
  `create() → first output p50: cold ${p50.sequential.toFixed(0)} ms, restored ${p50.snapshot.toFixed(0)} ms, ratio ${(p50.snapshot / p50.sequential).toFixed(3)} (target <= 0.1)\n`,
);

// Memory: 8 idle clones restored from one 256 MiB snapshot (RAM a private mapping of the
// template, shared until written) against one cold-booted VM, by the VMMs' proportional set size.
const pss = (pid) => Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))[1]) / 1024;
const cold = await CustomSandbox.create({ image: "local:busybox", memory: 256, snapshot: false });
await cold.command.run("true");
const coldPss = pss(cold.pid);
await cold.stop();
const clones = [];
for (let i = 0; i < 8; i++) clones.push(await CustomSandbox.create({ image: "local:busybox", memory: 256 }));
for (const c of clones) await c.command.run("true");
const clonesPss = clones.map((c) => pss(c.pid)).reduce((a, b) => a + b, 0);
await Promise.all(clones.map((c) => c.stop()));
const memory = {
  date: new Date().toISOString(),
  machine: machine(),
  coldVmPssMiB: coldPss,
  eightClonesPssMiB: clonesPss,
  ratio: clonesPss / coldPss,
  target: "eight clones <= 2 x one cold VM",
};
writeFileSync(out("snapshot-memory.json"), `${JSON.stringify(memory, null, 2)}\n`);
writeFileSync(
  out("snapshot-memory.md"),
  `# Memory of restored clones\n\n${memory.date} — ${memory.machine.cpu}, ${memory.machine.cpus} cores, ${memory.machine.kernel}.\n` +
    `Busybox image, 256 MiB guests, QEMU PSS (smaps_rollup) after one command each: one cold-booted VM ${coldPss.toFixed(1)} MiB; ` +
    `8 idle clones of one snapshot ${clonesPss.toFixed(1)} MiB in total, ${memory.ratio.toFixed(2)} x the cold VM (target <= 2).\n`,
);
console.log(`memory: one cold VM ${coldPss.toFixed(1)} MiB PSS, 8 clones ${clonesPss.toFixed(1)} MiB in total (${memory.ratio.toFixed(2)} x)\n`);

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
writeFileSync(out("pool.json"), `${JSON.stringify(poolResult, null, 2)}\n`);
writeFileSync(
  out("pool.md"),
  `# Warm pool\n\n${poolResult.date} — ${poolResult.machine.cpu}, ${poolResult.machine.cpus} cores, ${poolResult.machine.kernel}.\n` +
    `acquire() from a full pool of 2 → first command output (\`echo\`), ${times.length} runs: ` +
    `p50 ${s.p50.toFixed(1)} ms, p95 ${s.p95.toFixed(1)} ms (target p50 ≤ 50 ms). A boot on this machine takes ~1.3 s.\n`,
);
console.log(`pool: acquire → first output p50 ${s.p50.toFixed(1)} ms, p95 ${s.p95.toFixed(1)} ms`);
