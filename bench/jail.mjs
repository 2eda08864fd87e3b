#!/usr/bin/env node
// Jail benchmark (npm run bench): what msb-vmm's confinement adds to starting the VMM. msb-vmm
// execs /bin/true three ways, interleaved so the machine's noise falls on each alike:
//   bare:    the parent-death guard and descriptor closing only
//   netns:   + no new privileges and an empty network namespace (--no-network, no jail)
//   jailed:  + the jail QEMU gets: mount namespace, read-only binds of the system and three VM
//            files, pivot_root, and (as root) a uid of its own
// Writes bench/results/jail.{json,md}.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { vmmHelperPath } from "../dist/native.js";
import { machine, median } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const RUNS = 200;

const work = mkdtempSync(path.join(os.tmpdir(), "msb-bench-jail-"));
const files = ["kernel", "initramfs", "disk"].map((f) => path.join(work, f));
for (const f of files) writeFileSync(f, "");
const modes = {
  bare: () => [],
  netns: () => ["--no-network"],
  jailed: (i) => {
    const dir = path.join(work, `run-${i}`);
    return ["--jail", dir, ...files.flatMap((f) => ["--ro", f]), "--no-network"];
  },
};

const times = Object.fromEntries(Object.keys(modes).map((m) => [m, []]));
try {
  for (let i = 0; i < RUNS; i++) {
    for (const [name, flags] of Object.entries(modes)) {
      if (name === "jailed") spawnSync("mkdir", ["-m", "0700", path.join(work, `run-${i}`)]);
      const t = performance.now();
      const r = spawnSync(vmmHelperPath(), ["exec", String(process.pid), ...flags(i), "--", "/bin/true"]);
      const ms = performance.now() - t;
      if (r.status !== 0) throw new Error(`msb-vmm exec (${name}) failed: ${r.stderr}`);
      times[name].push(ms);
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

const p50 = Object.fromEntries(Object.entries(times).map(([m, xs]) => [m, Math.round(median(xs) * 100) / 100]));
const result = {
  date: new Date().toISOString().slice(0, 10),
  machine: { ...machine(), uid: process.getuid() },
  runs: RUNS,
  medianMs: p50,
  jailCostMs: Math.round((p50.jailed - p50.bare) * 100) / 100,
};
const md = `# Jail: what confinement adds to starting the VMM

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}, uid ${result.machine.uid}.
\`msb-vmm exec … -- /bin/true\`, spawned from Node, medians of ${RUNS} interleaved runs.

| msb-vmm exec | p50 |
| --- | --- |
| bare (parent guard, descriptors closed) | ${p50.bare} ms |
| + no new privileges, empty network namespace | ${p50.netns} ms |
| + jail (mount namespace, binds, pivot_root, own uid) | ${p50.jailed} ms |

The jail costs **${result.jailCostMs} ms** over the bare helper (target ≤ 10 ms).
`;
writeFileSync(path.join(here, "results", "jail.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(here, "results", "jail.md"), md);
process.stdout.write(md);
