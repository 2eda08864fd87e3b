#!/usr/bin/env node
// Server load run (npm run bench): CLIENTS concurrent clients, each ROUNDS times getting a
// sandbox through msb server with the real e2b SDK, running a command in it and killing it, on
// loopback. The rounds take turns at the three ways to get one: create from the template, fork
// of one long-lived parent, and create from a snapshot of it. Reports the success rate, p50/p95
// latency of each way and of the run, and what was left behind afterwards (VMM processes,
// runtime dirs, this process's open descriptors).
// Writes bench/results/server.{json,md}.
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { createServer } from "../dist/index.js";
import { cacheDir, runtimeParent } from "../dist/paths.js";
import { machine, median } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENTS = Number(process.env.CLIENTS ?? 4);
const ROUNDS = Number(process.env.ROUNDS ?? 6);
const WAYS = ["create", "fork", "snapshot"];
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
// Saved states (a snapshot's sandbox) and E2B snapshot records in the cache.
const saved = () => ["paused", "e2b-snapshots"].map((d) => path.join(cacheDir(), d)).reduce((n, d) => n + (existsSync(d) ? readdirSync(d).length : 0), 0);

const before0 = fds();
// One more for the parent the forks and the snapshot come from.
const server = await createServer({ port: 0, apiKeys: ["bench"], maxSandboxes: CLIENTS + 1 });
Object.assign(process.env, { E2B_API_URL: server.url, E2B_SANDBOX_URL: server.url, E2B_API_KEY: "bench", E2B_DOMAIN: "localhost" });
const { Sandbox } = await import("e2b-251");
// One warm-up, so the snapshot of the template exists before the clock starts.
await (await Sandbox.create(TEMPLATE)).kill();
const before = { fds: before0, vmms: vmms(), runtimeDirs: runtimeDirs(), saved: saved() };
const parent = await Sandbox.create(TEMPLATE, { timeoutMs: 3_600_000 });
await parent.files.write("/root/from-parent", "parent");
const { snapshotId } = await parent.createSnapshot();
const get = {
  create: () => Sandbox.create(TEMPLATE, { timeoutMs: 120_000 }),
  fork: async () => {
    const [fork] = await parent.fork({ count: 1 });
    if (fork instanceof Error) throw fork;
    return fork;
  },
  snapshot: () => Sandbox.create(snapshotId, { timeoutMs: 120_000 }),
};
const expected = { create: "hi\n", fork: "parent hi\n", snapshot: "parent hi\n" };
const command = { create: "echo hi", fork: "echo $(cat /root/from-parent) hi", snapshot: "echo $(cat /root/from-parent) hi" };

const gets = Object.fromEntries(WAYS.map((w) => [w, []]));
const runs = [];
let ok = 0;
let failed = 0;
const errors = [];
const t0 = performance.now();
await Promise.all(
  Array.from({ length: CLIENTS }, async (_, client) => {
    for (let i = 0; i < ROUNDS; i++) {
      const way = WAYS[(client + i) % WAYS.length];
      try {
        let t = performance.now();
        const sb = await get[way]();
        gets[way].push(performance.now() - t);
        try {
          t = performance.now();
          const r = await sb.commands.run(command[way]);
          runs.push(performance.now() - t);
          if (r.stdout !== expected[way])
            throw new Error(`got ${JSON.stringify({ stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode, error: r.error })}`);
        } finally {
          await sb.kill();
        }
        ok++;
      } catch (err) {
        failed++;
        errors.push(`${way}: ${String(err?.message ?? err).slice(0, 200)}`);
      }
    }
  }),
);
const wallS = (performance.now() - t0) / 1000;
await parent.kill();
const snapshotDeleted = await Sandbox.deleteSnapshot(snapshotId);
// The server's close ends its connections too (the SDK keeps some alive); then count.
await server.close();
await new Promise((r) => setTimeout(r, 1000));
const after = { fds: fds(), vmms: vmms(), runtimeDirs: runtimeDirs(), saved: saved() };

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
  getMs: Object.fromEntries(WAYS.map((w) => [w, { n: gets[w].length, p50: round(median(gets[w])), p95: round(p95(gets[w])) }])),
  runMs: { p50: round(median(runs)), p95: round(p95(runs)) },
  throughputPerMin: Math.round(((ok + failed) / wallS) * 60),
  snapshotDeleted,
  leaked: {
    vmms: after.vmms - before.vmms,
    runtimeDirs: after.runtimeDirs - before.runtimeDirs,
    fds: after.fds - before.fds,
    savedStates: after.saved - before.saved,
  },
};
const md = `# msb server under load (e2b SDK on loopback)

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.
${CLIENTS} concurrent clients × ${ROUNDS} rounds of get a sandbox → \`commands.run\` → kill, template \`${TEMPLATE}\` (QEMU under TCG). The rounds take turns at the ways to get one: \`Sandbox.create(template)\` (restored from the template's snapshot), \`parent.fork()\` of one running parent, and \`Sandbox.create(snapshotId)\` of a \`createSnapshot()\` of that parent; forks and snapshot sandboxes must show the parent's file. Forks of the one parent are made one at a time (each pauses it to save its memory), so the clients' forks queue behind each other: the fork column is mostly that queue.

| measure | value |
| --- | --- |
| success | ${ok} of ${ok + failed} (${(result.successRate * 100).toFixed(1)} %) |
${WAYS.map((w) => `| ${w} p50 / p95 (${result.getMs[w].n}) | ${result.getMs[w].p50} / ${result.getMs[w].p95} ms |`).join("\n")}
| run p50 / p95 | ${result.runMs.p50} / ${result.runMs.p95} ms |
| sandboxes a minute | ${result.throughputPerMin} |
| left behind afterwards | ${result.leaked.vmms} VMMs, ${result.leaked.runtimeDirs} runtime dirs, ${result.leaked.fds} descriptors, ${result.leaked.savedStates} saved states (snapshot deleted: ${snapshotDeleted}) |
`;
writeFileSync(path.join(here, "results", "server.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(here, "results", "server.md"), md);
process.stdout.write(md);
if (failed) process.stdout.write(`errors: ${result.errors.join(" | ")}\n`);
