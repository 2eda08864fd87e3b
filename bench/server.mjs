#!/usr/bin/env node
// Server load run (npm run bench): CLIENTS concurrent clients, each ROUNDS times creating a
// sandbox through msb server with the real e2b SDK, running a command in it and killing it, on
// loopback. Reports the success rate, p50/p95 create and run latency, and what was left behind
// afterwards (VMM processes, runtime dirs, this process's open descriptors).
// Writes bench/results/server.{json,md}.
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { createServer } from "../dist/index.js";
import { runtimeParent } from "../dist/paths.js";
import { machine, median } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENTS = Number(process.env.CLIENTS ?? 4);
const ROUNDS = Number(process.env.ROUNDS ?? 5);
const TEMPLATE = "local:busybox";

const p95 = (xs) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.95))];
const fds = () => readdirSync("/proc/self/fd").length;
// This process's children: every VMM runs as one (msb-vmm execs QEMU in its place).
const vmms = () =>
  readdirSync("/proc")
    .filter((p) => /^\d+$/.test(p))
    .filter((p) => {
      try {
        return readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1]?.split(" ")[1] === String(process.pid);
      } catch {
        return false;
      }
    }).length;
const runtimeDirs = () => readdirSync(runtimeParent()).filter((d) => d.startsWith("vm-")).length;

const before0 = fds();
const server = await createServer({ port: 0, apiKeys: ["bench"], maxSandboxes: CLIENTS });
Object.assign(process.env, { E2B_API_URL: server.url, E2B_SANDBOX_URL: server.url, E2B_API_KEY: "bench", E2B_DOMAIN: "localhost" });
const { Sandbox } = await import("e2b-251");
// One warm-up, so the snapshot of the template exists before the clock starts.
await (await Sandbox.create(TEMPLATE)).kill();
const before = { fds: before0, vmms: vmms(), runtimeDirs: runtimeDirs() };

const creates = [];
const runs = [];
let ok = 0;
let failed = 0;
const errors = [];
const t0 = performance.now();
await Promise.all(
  Array.from({ length: CLIENTS }, async () => {
    for (let i = 0; i < ROUNDS; i++) {
      try {
        let t = performance.now();
        const sb = await Sandbox.create(TEMPLATE, { timeoutMs: 120_000 });
        creates.push(performance.now() - t);
        try {
          t = performance.now();
          const r = await sb.commands.run("echo hi");
          runs.push(performance.now() - t);
          if (r.stdout !== "hi\n") throw new Error(`got ${JSON.stringify({ stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, error: r.error })}`);
        } finally {
          await sb.kill();
        }
        ok++;
      } catch (err) {
        failed++;
        errors.push(String(err?.message ?? err).slice(0, 200));
      }
    }
  }),
);
const wallS = (performance.now() - t0) / 1000;
// The server's close ends its connections too (the SDK keeps some alive); then count.
await server.close();
await new Promise((r) => setTimeout(r, 1000));
const after = { fds: fds(), vmms: vmms(), runtimeDirs: runtimeDirs() };

const round = (x) => Math.round(x);
const result = {
  date: new Date().toISOString().slice(0, 10),
  machine: machine(),
  clients: CLIENTS,
  rounds: ROUNDS,
  template: TEMPLATE,
  successRate: ok / (ok + failed),
  failed,
  errors: [...new Set(errors)].slice(0, 5),
  createMs: { p50: round(median(creates)), p95: round(p95(creates)) },
  runMs: { p50: round(median(runs)), p95: round(p95(runs)) },
  throughputPerMin: Math.round(((ok + failed) / wallS) * 60),
  leaked: { vmms: after.vmms - before.vmms, runtimeDirs: after.runtimeDirs - before.runtimeDirs, fds: after.fds - before.fds },
};
const md = `# msb server under load (e2b SDK on loopback)

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.
${CLIENTS} concurrent clients × ${ROUNDS} rounds of create → \`commands.run("echo hi")\` → kill, template \`${TEMPLATE}\` (QEMU under TCG, restored from its snapshot).

| measure | value |
| --- | --- |
| success | ${ok} of ${ok + failed} (${(result.successRate * 100).toFixed(1)} %) |
| create p50 / p95 | ${result.createMs.p50} / ${result.createMs.p95} ms |
| run p50 / p95 | ${result.runMs.p50} / ${result.runMs.p95} ms |
| sandboxes a minute | ${result.throughputPerMin} |
| left behind afterwards | ${result.leaked.vmms} VMMs, ${result.leaked.runtimeDirs} runtime dirs, ${result.leaked.fds} descriptors |
`;
writeFileSync(path.join(here, "results", "server.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(here, "results", "server.md"), md);
process.stdout.write(md);
if (failed) process.stdout.write(`errors: ${result.errors.join(" | ")}\n`);
