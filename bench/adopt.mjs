#!/usr/bin/env node
// Sandboxes outliving msb server (npm run bench): ROUNDS times, a server with outlive made
// SANDBOXES Python sandboxes through the real code-interpreter SDK (state in each) and PAUSED
// more that it paused, and closes, letting them go; a new server on the same cache takes them
// over. Measured: how long the close takes, how long the new server takes to start (taking them
// over) against one with nothing to take (the two interleaved), each running sandbox's first
// runCode after adoption, and each paused one's connect (its resume) on the new server against
// its connect on the server that paused it (the two interleaved, sandbox by sandbox). Then what
// was left (VMM processes, runtime dirs, this process's descriptors) once every sandbox is killed.
// Writes bench/results/adopt.{json,md}.
import { readdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { createServer } from "../dist/index.js";
import { runtimeParent } from "../dist/paths.js";
import { machine, median } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const ROUNDS = Number(process.env.ROUNDS ?? 5);
const SANDBOXES = Number(process.env.SANDBOXES ?? 4);
const PAUSED = Number(process.env.PAUSED ?? 2);
const fds = () => readdirSync("/proc/self/fd").length;
const runtimeDirs = () => readdirSync(runtimeParent()).filter((d) => d.startsWith("vm-")).length;
const round = (x) => Math.round(x);

// The SDK's kept-alive connections to a closed server must see their end before it asks the next.
const settle = () => new Promise((r) => setTimeout(r, 300));
const start = async () => {
  const t = performance.now();
  const server = await createServer({ port: PORT, apiKeys: ["bench"], outlive: true, maxSandboxes: SANDBOXES + PAUSED + 1 });
  return { server, ms: performance.now() - t };
};
// One port for every server: the SDK's sandboxes are reached at the URL they were made at.
const probe = await createServer({ port: 0 });
const PORT = probe.port;
await probe.close();
Object.assign(process.env, {
  E2B_API_URL: `http://127.0.0.1:${PORT}`,
  E2B_SANDBOX_URL: `http://127.0.0.1:${PORT}`,
  E2B_API_KEY: "bench",
  E2B_DOMAIN: "localhost",
});
const { Sandbox } = await import("@e2b/code-interpreter");

// A warm-up: the Python template's snapshot exists before the clock starts.
{
  const { server } = await start();
  await (await Sandbox.create()).kill();
  await server.close();
  await settle();
}
const before = { fds: fds(), runtimeDirs: runtimeDirs() };
const closeMs = [];
const emptyStartMs = [];
const adoptStartMs = [];
const firstRunMs = [];
const resumeHereMs = [];
const resumeNextMs = [];
let kept = 0;
let checked = 0;
// Connects to (resumes) the paused sandbox `id`: how long, and whether `y` is `want`.
const resume = async (id, want) => {
  const t = performance.now();
  const sb = await Sandbox.connect(id, { timeoutMs: 600_000 });
  const ms = performance.now() - t;
  checked++;
  if ((await sb.runCode("y")).text === String(want)) kept++;
  return { sb, ms };
};
for (let r = 0; r < ROUNDS; r++) {
  const { server: a } = await start();
  const made = [];
  for (let i = 0; i < SANDBOXES; i++) {
    const sb = await Sandbox.create({ timeoutMs: 600_000 });
    await sb.runCode(`x = ${r * 100 + i}`);
    made.push(sb.sandboxId);
  }
  // Paused ones: each paused, resumed on this server (the baseline), paused again for the next.
  const paused = [];
  for (let i = 0; i < PAUSED; i++) {
    const sb = await Sandbox.create({ timeoutMs: 600_000 });
    await sb.runCode(`y = ${r * 100 + i}`);
    await sb.pause();
    const { sb: back, ms } = await resume(sb.sandboxId, r * 100 + i);
    resumeHereMs.push(ms);
    await back.pause();
    paused.push(sb.sandboxId);
  }
  // Interleaved: a server with nothing to adopt (on another port: A still holds its sandboxes),
  // then A's close, then the one that adopts.
  const empty = performance.now();
  const other = await createServer({ port: 0, outlive: false });
  emptyStartMs.push(performance.now() - empty);
  await other.close();
  let t = performance.now();
  await a.close();
  closeMs.push(performance.now() - t);
  await settle();
  const { server: b, ms } = await start();
  adoptStartMs.push(ms);
  if (b.adoption.adopted.length !== SANDBOXES || b.adoption.paused.length !== PAUSED)
    throw new Error(
      `took over ${b.adoption.adopted.length} of ${SANDBOXES} running, ${b.adoption.paused.length} of ${PAUSED} paused: ${JSON.stringify(b.adoption.stopped)}`,
    );
  for (const [i, id] of paused.entries()) {
    const { sb, ms } = await resume(id, r * 100 + i);
    resumeNextMs.push(ms);
    await sb.kill();
  }
  for (const [i, id] of made.entries()) {
    const sb = await Sandbox.connect(id);
    t = performance.now();
    const out = await sb.runCode("x");
    firstRunMs.push(performance.now() - t);
    checked++;
    if (out.text === String(r * 100 + i)) kept++;
    await sb.kill();
  }
  await b.close();
  await settle();
}
await new Promise((r) => setTimeout(r, 1000));
const after = { fds: fds(), runtimeDirs: runtimeDirs() };
const result = {
  date: new Date().toISOString().slice(0, 10),
  machine: machine(),
  rounds: ROUNDS,
  sandboxes: SANDBOXES,
  paused: PAUSED,
  stateKept: `${kept} of ${checked}`,
  closeMs: round(median(closeMs)),
  emptyStartMs: round(median(emptyStartMs)),
  adoptStartMs: round(median(adoptStartMs)),
  firstRunMs: round(median(firstRunMs)),
  resumeHereMs: round(median(resumeHereMs)),
  resumeNextMs: round(median(resumeNextMs)),
  resumeRatio: median(resumeNextMs.map((ms, i) => ms / resumeHereMs[i])).toFixed(2),
  leaked: { runtimeDirs: after.runtimeDirs - before.runtimeDirs, fds: after.fds - before.fds },
};
const md = `# Sandboxes outliving msb server

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.
${ROUNDS} rounds: a server (\`outlive: true\`) makes ${SANDBOXES} Python sandboxes through \`@e2b/code-interpreter\` (\`x\` set in each) and ${PAUSED} more it pauses (\`y\` set in each; each resumed once there and paused again), and closes, letting them go; a new server on the same cache takes them over. QEMU under TCG. Medians; the two server starts interleaved, and each paused sandbox's two resumes paired.

| measure | value |
| --- | --- |
| interpreter state kept (running and paused) | ${result.stateKept} |
| close, letting ${SANDBOXES} run on and ${PAUSED} paused go | ${result.closeMs} ms |
| a server start with nothing to adopt | ${result.emptyStartMs} ms |
| a server start taking over ${SANDBOXES} running and ${PAUSED} paused | ${result.adoptStartMs} ms |
| first \`runCode\` after adoption | ${result.firstRunMs} ms |
| connect (resume) of a paused one: on its server / on the next | ${result.resumeHereMs} ms / ${result.resumeNextMs} ms (${result.resumeRatio} ×, pair by pair) |
| left behind afterwards | ${result.leaked.runtimeDirs} runtime dirs, ${result.leaked.fds} descriptors |
`;
writeFileSync(path.join(here, "results", "adopt.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(here, "results", "adopt.md"), md);
process.stdout.write(md);
