#!/usr/bin/env node
// Sandboxes outliving msb server (npm run bench): ROUNDS times, a server with outlive made
// SANDBOXES Python sandboxes through the real code-interpreter SDK (state in each) and closes,
// letting them run on; a new server on the same cache adopts them. Measured: how long the close
// takes, how long the new server takes to start (adopting them) against one with nothing to
// adopt (the two interleaved), and each sandbox's first runCode after adoption. Then what was
// left (VMM processes, runtime dirs, this process's descriptors) once every sandbox is killed.
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
const fds = () => readdirSync("/proc/self/fd").length;
const runtimeDirs = () => readdirSync(runtimeParent()).filter((d) => d.startsWith("vm-")).length;
const round = (x) => Math.round(x);

// The SDK's kept-alive connections to a closed server must see their end before it asks the next.
const settle = () => new Promise((r) => setTimeout(r, 300));
const start = async () => {
  const t = performance.now();
  const server = await createServer({ port: PORT, apiKeys: ["bench"], outlive: true, maxSandboxes: SANDBOXES + 1 });
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
let kept = 0;
let checked = 0;
for (let r = 0; r < ROUNDS; r++) {
  const { server: a } = await start();
  const made = [];
  for (let i = 0; i < SANDBOXES; i++) {
    const sb = await Sandbox.create({ timeoutMs: 600_000 });
    await sb.runCode(`x = ${r * 100 + i}`);
    made.push(sb.sandboxId);
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
  if (b.adoption.adopted.length !== SANDBOXES) throw new Error(`adopted ${b.adoption.adopted.length} of ${SANDBOXES}: ${JSON.stringify(b.adoption.stopped)}`);
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
  stateKept: `${kept} of ${checked}`,
  closeMs: round(median(closeMs)),
  emptyStartMs: round(median(emptyStartMs)),
  adoptStartMs: round(median(adoptStartMs)),
  perSandboxMs: round((median(adoptStartMs) - median(emptyStartMs)) / SANDBOXES),
  firstRunMs: round(median(firstRunMs)),
  leaked: { runtimeDirs: after.runtimeDirs - before.runtimeDirs, fds: after.fds - before.fds },
};
const md = `# Sandboxes outliving msb server

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.
${ROUNDS} rounds: a server (\`outlive: true\`) makes ${SANDBOXES} Python sandboxes through \`@e2b/code-interpreter\` (\`x\` set in each) and closes, letting them run on; a new server on the same cache adopts them. QEMU under TCG. Medians; the two server starts interleaved.

| measure | value |
| --- | --- |
| interpreter state kept | ${result.stateKept} |
| close, letting ${SANDBOXES} run on | ${result.closeMs} ms |
| a server start with nothing to adopt | ${result.emptyStartMs} ms |
| a server start adopting ${SANDBOXES} | ${result.adoptStartMs} ms (${result.perSandboxMs} ms a sandbox) |
| first \`runCode\` after adoption | ${result.firstRunMs} ms |
| left behind afterwards | ${result.leaked.runtimeDirs} runtime dirs, ${result.leaked.fds} descriptors |
`;
writeFileSync(path.join(here, "results", "adopt.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(here, "results", "adopt.md"), md);
process.stdout.write(md);
