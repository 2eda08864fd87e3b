#!/usr/bin/env node
// Guest kernels side by side (npm run bench): ours (scripts/build-kernel.sh) against Debian's
// cloud kernel (bench/debian-kernel.sh, fetched for this comparison only), in one run:
// - busybox, 256 MiB: cold create() → first output and kernel → agent start, interleaved run by
//   run, each kernel's floor beside (msb bench's runner with two kernels);
// - Python: create() → first run() output, interleaved;
// - restore-on-create and fork() on each;
// - an idle VM's PSS on each;
// - 16 idle clones restored from one snapshot: the CPU their VMMs take over 10 s, on each kernel;
// - our kernel's initcall profile: the wall time of each initcall as the host sees the console.
// Writes bench/results/kernel.{json,md} and kernel-initcalls.md.
import { execFileSync, spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { formatTable, phaseValues, toJson } from "../dist/bench/report.js";
import { runBenchKernels } from "../dist/bench/run.js";
import { summarize } from "../dist/bench/stats.js";
import { CustomSandbox, PythonSandbox } from "../dist/index.js";
import { floorInitramfs, guestBoot } from "../dist/vm/guest.js";
import { QemuBackend } from "../dist/vm/qemu.js";
import { machine } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = (name) => path.join(here, "results", name);
const RUNS = Number(process.env.MSB_BENCH_RUNS ?? 10);
const cache = process.env.MSB_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(process.env.HOME, ".cache"), "microsandbox");

const ours = (await guestBoot()).kernel;
const debian = execFileSync("bash", [path.join(here, "debian-kernel.sh"), cache], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] })
  .trim()
  .split("\n")
  .pop();
const kernels = { ours, debian };
const names = Object.keys(kernels);
const p50 = (xs) => summarize(xs).p50;
const ms = (v) => (v === null || v === undefined ? "—" : `${v.toFixed(0)} ms`);

// 1. busybox: create() → first output, kernel → agent start, floors.
const busybox = await runBenchKernels({
  mode: "sequential",
  runs: RUNS,
  image: "local:busybox",
  memory: 256,
  backend: "qemu",
  kernels: Object.values(kernels),
});
const boot = Object.fromEntries(names.map((n, i) => [n, busybox[i]]));
for (const n of names) console.log(`${n}: ${formatTable(boot[n])}`);

// 2. Python: create() → first run() output, interleaved.
const python = Object.fromEntries(names.map((n) => [n, []]));
for (let i = 0; i < Math.max(3, Math.ceil(RUNS / 2)); i++) {
  for (const n of i % 2 ? [...names].reverse() : names) {
    const t = performance.now();
    const sb = await PythonSandbox.create({ image: "local:python", memory: 512, snapshot: false, backend: "qemu", kernel: kernels[n] });
    const ex = await sb.run("2 + 2");
    if ((await ex.output()) !== "4") throw new Error(`python on ${n} answered ${await ex.output()}`);
    python[n].push(performance.now() - t);
    await sb.stop();
  }
}

// 3. Restore-on-create and fork, on each kernel: create() → first output from a snapshot (made by
// an untimed first sandbox), and a running sandbox's fork() → first output in the copy.
const restore = Object.fromEntries(names.map((n) => [n, []]));
const fork = Object.fromEntries(names.map((n) => [n, []]));
for (const n of names) {
  const opts = { image: "local:busybox", memory: 256, backend: "qemu", kernel: kernels[n] };
  await (await CustomSandbox.create(opts)).stop();
  const parent = await CustomSandbox.create(opts);
  await parent.command.run("true");
  for (let i = 0; i < Math.max(3, Math.ceil(RUNS / 2)); i++) {
    let t = performance.now();
    const sb = await CustomSandbox.create(opts);
    await sb.command.run("echo", ["ready"]);
    restore[n].push(performance.now() - t);
    await sb.stop();
    t = performance.now();
    const child = await parent.fork();
    await child.command.run("echo", ["ready"]);
    fork[n].push(performance.now() - t);
    await child.stop();
  }
  await parent.stop();
}

// 4. An idle VM's PSS: cold-booted, one command, then 3 s of nothing.
const pssMiB = (pid) => Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))[1]) / 1024;
const pss = {};
for (const n of names) {
  const sb = await CustomSandbox.create({ image: "local:busybox", memory: 256, snapshot: false, backend: "qemu", kernel: kernels[n] });
  await sb.command.run("true");
  await new Promise((r) => setTimeout(r, 3000));
  pss[n] = pssMiB(sb.pid);
  await sb.stop();
}

// 5. Idle cost: 16 clones of one snapshot, each having run a command, then 10 s of their VMMs'
// user + system time from /proc (every thread of the process).
const TICKS = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }));
const cpuSeconds = (pid) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / TICKS;
};
const idle = {};
for (const n of names) {
  const clones = [];
  for (let i = 0; i < 16; i++) clones.push(await CustomSandbox.create({ image: "local:busybox", memory: 256, backend: "qemu", kernel: kernels[n] }));
  for (const c of clones) await c.command.run("true");
  await new Promise((r) => setTimeout(r, 2000));
  const before = clones.map((c) => cpuSeconds(c.pid));
  const t = performance.now();
  await new Promise((r) => setTimeout(r, 10_000));
  const seconds = (performance.now() - t) / 1000;
  const used = clones.map((c, i) => cpuSeconds(c.pid) - before[i]);
  idle[n] = { clones: clones.length, cores: used.reduce((a, b) => a + b, 0) / seconds, perVmCores: used.map((u) => u / seconds) };
  await Promise.all(clones.map((c) => c.stop()));
}

// 6. Our kernel's initcalls: the floor's VM with initcall_debug and the console on stdout, each
// line stamped on arrival; an initcall's cost is the wall time from its "calling" line to its
// "returned" line (printing under emulation costs too, the same for each).
const profile = await initcallProfile();

const result = {
  date: new Date().toISOString(),
  machine: { ...machine(), ...boot.ours.machine },
  runs: RUNS,
  kernels: Object.fromEntries(names.map((n) => [n, { path: kernels[n], sizeBytes: readFileSync(kernels[n]).length }])),
  busybox: Object.fromEntries(names.map((n) => [n, toJson(boot[n]).summary])),
  python: Object.fromEntries(names.map((n) => [n, summarize(python[n])])),
  restore: Object.fromEntries(names.map((n) => [n, summarize(restore[n])])),
  fork: Object.fromEntries(names.map((n) => [n, summarize(fork[n])])),
  idlePssMiB: pss,
  idleClones: idle,
  ratios: {
    firstOutput: p50(phaseValues(boot.ours, "firstOutput")) / p50(phaseValues(boot.debian, "firstOutput")),
    pythonFirstRun: p50(python.ours) / p50(python.debian),
    idlePss: pss.ours / pss.debian,
  },
  initcalls: profile,
};
writeFileSync(out("kernel.json"), `${JSON.stringify(result, null, 2)}\n`);

const row = (label, f) => `| ${label} | ${names.map((n) => f(n)).join(" | ")} |`;
const md = [
  "# Guest kernels side by side",
  "",
  `${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.kernel}, Node ${result.machine.node}. ` +
    `QEMU ${boot.ours.backend} (${result.machine.backendReason}). Interleaved in one run: ${RUNS} busybox boots per kernel (256 MiB, 1 vCPU), ` +
    `${python.ours.length} Python sandboxes per kernel (512 MiB). Ours: ${path.relative(path.join(here, ".."), ours)} ` +
    `(${(result.kernels.ours.sizeBytes / 2 ** 20).toFixed(1)} MiB); Debian: ${path.basename(path.dirname(debian))} ` +
    `(${(result.kernels.debian.sizeBytes / 2 ** 20).toFixed(1)} MiB, virtio as modules).`,
  "",
  `| p50 | ${names.join(" | ")} |`,
  `| --- | ${names.map(() => "---").join(" | ")} |`,
  row("busybox create() → first output", (n) => ms(result.busybox[n].firstOutput.p50)),
  row("kernel → agent start (guest clock)", (n) => ms(result.busybox[n].kernelToInit.p50)),
  row("floor: VMM start → trivial init", (n) => ms(result.busybox[n].floor.p50)),
  row("Python create() → first run() output", (n) => ms(result.python[n].p50)),
  row("create() restored from a snapshot → first output", (n) => ms(result.restore[n].p50)),
  row("fork() → first output in the copy", (n) => ms(result.fork[n].p50)),
  row("idle VM's PSS", (n) => `${pss[n].toFixed(1)} MiB`),
  row("16 idle restored clones, CPU", (n) => `${idle[n].cores.toFixed(3)} cores`),
  "",
  `Ours ÷ Debian's: busybox first output **${result.ratios.firstOutput.toFixed(2)}×** (target ≤ 0.4), Python first run() ` +
    `**${result.ratios.pythonFirstRun.toFixed(2)}×** (target ≤ 0.5), idle PSS **${result.ratios.idlePss.toFixed(2)}×** (target ≤ 0.6). ` +
    `Kernel → agent start on ours: ${ms(result.busybox.ours.kernelToInit.p50)} (target ≤ 400 ms). ` +
    `16 idle clones on ours: ${idle.ours.cores.toFixed(3)} cores (target ≤ 0.2).`,
  "",
  "Our kernel's initcall profile: [kernel-initcalls.md](kernel-initcalls.md).",
  "",
];
writeFileSync(out("kernel.md"), md.join("\n"));
writeFileSync(out("kernel-initcalls.md"), profile.markdown);
delete profile.markdown;
console.log(md.join("\n"));

async function initcallProfile() {
  const backend = new QemuBackend({ accel: "tcg" });
  const { kernel } = await guestBoot();
  const args = backend.args({ memory: 256, cpus: 1, network: "none", maxProcesses: 1024 }, { kernel, initramfs: floorInitramfs() }, undefined, "stdio");
  const i = args.indexOf("-append");
  args[i + 1] = `${args[i + 1].replace(" quiet", "")} initcall_debug loglevel=8`;
  // No agent and no monitor here: their sockets (descriptors msb-vmm would pass) become null devices.
  for (const id of ["agent", "monitor"]) args[args.findIndex((a) => a.startsWith(`socket,id=${id},`))] = `null,id=${id}`;
  const qemu = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "pipe", "inherit"] });
  const t0 = performance.now();
  const lines = [];
  let partial = "";
  qemu.stdout.on("data", (d) => {
    const at = performance.now() - t0;
    const parts = (partial + d.toString()).split("\n");
    partial = parts.pop();
    for (const line of parts) lines.push({ at, line: line.replace(/\r$/, "") });
  });
  await new Promise((r) => qemu.once("exit", r));
  const started = new Map();
  const calls = [];
  for (const { at, line } of lines) {
    const call = /calling {2}(\S+?)\+/.exec(line);
    if (call) started.set(call[1], at);
    const ret = /initcall (\S+?)\+\S* returned (-?\d+) after (\d+) usecs/.exec(line);
    if (ret && started.has(ret[1])) calls.push({ name: ret[1], wallMs: at - started.get(ret[1]), kernelUs: Number(ret[3]) });
  }
  const marker = lines.find((l) => l.line.includes("MSB-FLOOR-MARKER"))?.at;
  const first = lines[0]?.at;
  const top = [...calls].sort((a, b) => b.wallMs - a.wallMs).slice(0, 30);
  const total = calls.reduce((a, c) => a + c.wallMs, 0);
  // Work outside initcalls (start_kernel's own steps, such as the local APIC timer's calibration)
  // shows as a silence between two lines.
  const gaps = lines.slice(1).map((l, k) => ({ ms: l.at - lines[k].at, after: lines[k].line.replace(/^\[[^\]]*\]\s*/, "") }));
  const silences = gaps.sort((a, b) => b.ms - a.ms).slice(0, 10);
  const markdown = [
    "# Our kernel's initcalls under TCG",
    "",
    `${new Date().toISOString()} — ${machine().cpu}. The floor's VM (no disk, 256 MiB, 1 vCPU) booted with \`initcall_debug loglevel=8\`; ` +
      "every console line stamped on the host as it arrived. Printing itself costs under emulation, so the absolute figures are " +
      "higher than in a quiet boot; the order is what counts.",
    "",
    `First console line at ${ms(first)}, init's marker at ${ms(marker)} (with the printing); ${calls.length} initcalls, ${total.toFixed(0)} ms of wall time in all.`,
    "",
    "| initcall | wall ms | kernel's own µs |",
    "| --- | ---: | ---: |",
    ...top.map((c) => `| ${c.name} | ${c.wallMs.toFixed(1)} | ${c.kernelUs} |`),
    "",
    "The longest silences on the console, and the line before each:",
    "",
    "| ms | after |",
    "| ---: | --- |",
    ...silences.map((g) => `| ${g.ms.toFixed(1)} | \`${g.after.replaceAll("|", "\\|").slice(0, 100)}\` |`),
    "",
  ].join("\n");
  return { count: calls.length, totalWallMs: total, markerMs: marker, top, silences, markdown };
}
