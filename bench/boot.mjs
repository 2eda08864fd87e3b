#!/usr/bin/env node
// Boot benchmark: a sandbox's boot phases (host prep, VMM start, agent ready, first command
// output, stop) next to a floor measured in the same run: the same kernel, QEMU flags and devices
// booting a trivial init that prints a marker. Writes bench/results/boot.{json,md}.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { machine, median } from "./common.mjs";

import { CustomSandbox, ImageStore, QemuBackend } from "../dist/index.js";
import { cpioNewc } from "../dist/vm/initramfs.js";
import { guestBoot } from "../dist/vm/guest.js";

const RUNS = Number(process.env.MSB_BENCH_RUNS ?? 10);
const here = path.dirname(fileURLToPath(import.meta.url));
const work = mkdtempSync(path.join(os.tmpdir(), "msb-boot-bench-"));

// The floor's initramfs: only /init.
const floorInit = path.join(work, "floor-init");
execFileSync("musl-gcc", ["-static", "-Os", "-o", floorInit, path.join(here, "floor-init.c")]);
const floorCpio = path.join(work, "floor.cpio");
writeFileSync(floorCpio, cpioNewc([{ path: "init", mode: 0o100755, data: readFileSync(floorInit) }]));

const store = new ImageStore();
const disk = await store.disk(await store.lookup("local:busybox"));
const backend = new QemuBackend();
const { kernel } = await guestBoot();
const config = { name: "floor", memory: 256, cpus: 1, network: "none", maxProcesses: 1024, bootTimeout: 60 };

async function floorRun() {
  const sock = path.join(work, "floor.sock");
  const args = backend.args(backend.accel, config, { kernel, initramfs: floorCpio }, disk, sock, "/dev/null")
    .map((a) => (a.startsWith("file,id=console") ? "stdio,id=console" : a));
  const t0 = performance.now();
  const qemu = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "pipe", "inherit"] });
  let markerMs;
  let seen = "";
  qemu.stdout.on("data", (d) => {
    seen += d.toString();
    if (markerMs === undefined && seen.includes("MSB-FLOOR-MARKER")) markerMs = performance.now() - t0;
  });
  await new Promise((resolve) => qemu.once("exit", resolve));
  if (markerMs === undefined) throw new Error(`the floor VM printed no marker:\n${seen.slice(-2000)}`);
  return markerMs;
}

async function sandboxRun() {
  const t0 = performance.now();
  const sb = await CustomSandbox.create({ image: "local:busybox", memory: 256 });
  const created = performance.now() - t0;
  await sb.command.run("echo", ["first output"]);
  const firstOutput = performance.now() - t0;
  const tl = sb.timeline;
  const t1 = performance.now();
  await sb.stop();
  return { ...tl, created, firstOutput, stopMs: performance.now() - t1 };
}

// Warm-up: fills the page cache, and lets the backend settle on KVM or TCG before the floor copies its flags.
await sandboxRun();
await floorRun();
const floors = [];
const runs = [];
for (let i = 0; i < RUNS; i++) {
  floors.push(await floorRun());
  runs.push(await sandboxRun());
}
rmSync(work, { recursive: true, force: true });

const pick = (k) => median(runs.map((r) => r[k]));
const guestMs = (name) => median(runs.map((r) => r.guest.find((e) => e.name === name)?.ms ?? NaN));
const floor = median(floors);
const result = {
  date: new Date().toISOString(),
  machine: { ...machine(), backend: `qemu ${backend.accel} (${backend.reason})` },
  runs: RUNS,
  floorMarkerMs: floor,
  phasesMs: {
    hostPrep: pick("hostPrepMs"),
    vmmStart: pick("vmmStartMs"),
    guestAgentStart: guestMs("agent_start"),
    guestModulesLoaded: guestMs("modules_loaded"),
    guestRootMounted: guestMs("root_mounted"),
    guestChannelOpen: guestMs("channel_open"),
    agentReady: pick("agentReadyMs"),
    firstCommandOutput: pick("firstOutput"),
    stop: pick("stopMs"),
  },
  agentReadyOverFloor: pick("agentReadyMs") / floor,
  targets: { agentReadyOverFloor: "<= 1.15", hostPrepMs: "<= 10" },
};
const f = (n) => n.toFixed(1);
const p = result.phasesMs;
const md = `# Boot benchmark

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel},
Node ${result.machine.node}; ${result.machine.backend}. Busybox image, 256 MiB, 1 vCPU; medians of ${RUNS} sequential runs,
sandbox and floor interleaved.

| phase | ms from create() | note |
| --- | --- | --- |
| host prep (kernel, initramfs, image disk; cached) | ${f(p.hostPrep)} | target ≤ 10 |
| VMM process spawned | ${f(p.vmmStart)} | |
| guest: agent starts as PID 1 | ${f(p.guestAgentStart)} | guest clock, from kernel start |
| guest: modules loaded | ${f(p.guestModulesLoaded)} | guest clock |
| guest: overlay root mounted | ${f(p.guestRootMounted)} | guest clock |
| guest: agent channel open | ${f(p.guestChannelOpen)} | guest clock |
| **agent ready** (hello received) | **${f(p.agentReady)}** | |
| first command output (\`echo\`) | ${f(p.firstCommandOutput)} | |
| stop (shutdown → VMM gone) | ${f(p.stop)} | separate clock |
| **floor**: same kernel + QEMU flags, trivial init prints a marker | **${f(floor)}** | |

agent ready / floor = **${result.agentReadyOverFloor.toFixed(2)}** (target ≤ 1.15).
`;
writeFileSync(path.join(here, "results", "boot.json"), JSON.stringify(result, null, 2) + "\n");
writeFileSync(path.join(here, "results", "boot.md"), md);
console.log(md);
