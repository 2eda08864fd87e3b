#!/usr/bin/env node
// Agent benchmark: exec round trip and output streaming over a unix socket, each next to a
// baseline measured in the same run (raw socket ping-pong + native fork/exec of `true`; a raw
// byte pump). Writes bench/results/agent.{json,md}. Run through `npm run bench`.
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { AgentClient } from "../dist/agent-client/client.js";
import { agentBinaryPath } from "../dist/vm/guest.js";
import { machine, median } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const work = mkdtempSync(path.join(os.tmpdir(), "msb-bench-"));
const now = () => Number(process.hrtime.bigint());

const EXEC_RUNS = 500;
const PING_RUNS = 5000;
const STREAM_BYTES = 1_000_000_000;
const STREAM_RUNS = 3;

const peer = path.join(work, "peer");
execFileSync("cc", ["-O2", "-o", peer, path.join(here, "peer.c")]);

async function startPeer(args) {
  const proc = spawn(peer, args, { stdio: ["ignore", "pipe", "inherit"] });
  await once(proc.stdout, "data"); // "ready"
  return proc;
}

async function rawRtt() {
  const sock = path.join(work, "echo.sock");
  const proc = await startPeer(["echo", sock]);
  const s = createConnection(sock);
  await once(s, "connect");
  const msg = Buffer.alloc(64, 1);
  const times = [];
  for (let i = 0; i < PING_RUNS; i++) {
    const t = now();
    s.write(msg);
    let got = 0;
    while (got < msg.length) got += (await once(s, "data"))[0].length;
    times.push(now() - t);
  }
  s.destroy();
  await once(proc, "exit");
  return median(times);
}

async function rawPump() {
  const runs = [];
  for (let r = 0; r < STREAM_RUNS; r++) {
    const sock = path.join(work, "pump.sock");
    const proc = await startPeer(["pump", sock, String(STREAM_BYTES)]);
    const t = now();
    const s = createConnection(sock);
    let got = 0;
    for await (const chunk of s) got += chunk.length;
    runs.push(got / ((now() - t) / 1e9) / 1e6);
    await once(proc, "exit").catch(() => {});
  }
  return median(runs);
}

async function agentRuns() {
  const sock = path.join(work, "agent.sock");
  const agent = spawn(agentBinaryPath(), ["--listen", `unix:${sock}`], { stdio: "inherit" });
  for (let i = 0; i < 500; i++) {
    try {
      readFileSync(sock);
    } catch (e) {
      if (e.code !== "ENOENT") break;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  const client = await AgentClient.connect(sock);
  for (let i = 0; i < 20; i++) await client.exec(["/bin/true"]); // warm-up
  const times = [];
  for (let i = 0; i < EXEC_RUNS; i++) {
    const t = now();
    await client.exec(["/bin/true"]);
    times.push(now() - t);
  }
  const stream = [];
  for (let r = 0; r < STREAM_RUNS; r++) {
    const t = now();
    let got = 0;
    for await (const c of client.spawn(["head", "-c", String(STREAM_BYTES), "/dev/zero"])) got += c.data.length;
    stream.push(got / ((now() - t) / 1e9) / 1e6);
  }
  client.close();
  agent.kill("SIGKILL");
  return { execRtt: median(times), stream: median(stream) };
}

const rtt = await rawRtt();
const spawnTrue = Number(execFileSync(peer, ["spawn", "500"]).toString());
const pump = await rawPump();
const agent = await agentRuns();
rmSync(work, { recursive: true, force: true });

const baseline = rtt + spawnTrue;
const result = {
  date: new Date().toISOString(),
  machine: machine(),
  execRoundTrip: {
    medianUs: agent.execRtt / 1e3,
    rawSocketRttUs: rtt / 1e3,
    nativeForkExecTrueUs: spawnTrue / 1e3,
    ratio: agent.execRtt / baseline,
    target: "<= 1.5",
  },
  streaming: {
    agentMBps: agent.stream,
    rawPumpMBps: pump,
    ratio: agent.stream / pump,
    target: ">= 0.8",
  },
};

const fmt = (n, d = 1) => n.toFixed(d);
const md = `# Agent benchmark

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.
The agent runs as a host process on a unix socket (no VM); medians of one run.

| measure | agent | baseline | ratio | target |
| --- | --- | --- | --- | --- |
| exec round trip of \`/bin/true\` (${EXEC_RUNS} runs) | ${fmt(result.execRoundTrip.medianUs)} µs | ${fmt(result.execRoundTrip.rawSocketRttUs)} µs raw socket RTT + ${fmt(result.execRoundTrip.nativeForkExecTrueUs)} µs native fork/exec | ${fmt(result.execRoundTrip.ratio, 2)} | ≤ 1.5 |
| stdout stream, ${STREAM_BYTES / 1e9} GB from \`head -c\` (${STREAM_RUNS} runs) | ${fmt(result.streaming.agentMBps, 0)} MB/s | ${fmt(result.streaming.rawPumpMBps, 0)} MB/s raw byte pump | ${fmt(result.streaming.ratio, 2)} | ≥ 0.8 |
`;
writeFileSync(path.join(here, "results", "agent.json"), `${JSON.stringify(result, null, 2)}\n`);
writeFileSync(path.join(here, "results", "agent.md"), md);
console.log(md);
