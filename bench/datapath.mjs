#!/usr/bin/env node
// Data-path benchmark (npm run bench): in one QEMU VM, a guest command's stdout through the agent
// next to the bare virtio-serial port it travels on, and `command.run("true")` next to the guest's
// own fork/exec. The VM has a second port ("msb.raw", VmConfig.rawPort) read by this process, so
// both paths cross the same VMM, guest kernel and host in the same run. Three byte paths, each
// written by dd in 64 KiB blocks from /dev/zero:
//   raw:      dd → port                      (what the port carries)
//   pipeline: dd | dd → port                 (a pipe in front: the floor of any agent that
//                                             reads a process's stdout from a pipe)
//   agent:    dd → stdout pipe → agent → agent channel → AgentClient
// Writes bench/results/datapath.{json,md}.
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { resolveImage } from "../dist/images/sources.js";
// The bare port needs a VM below the sandbox layer: the internal modules, not the package's API.
import { ImageStore } from "../dist/index.js";
import { QemuBackend } from "../dist/vm/qemu.js";
import { chooseBackend } from "../dist/vm/select.js";
import { machine, median } from "./common.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const BYTES = 100 * 1024 * 1024;
const ROUNDS = 5;
const TRUE_RUNS = 200;

const store = new ImageStore();
const image = await resolveImage(store, "local:busybox", {});
const decision = await chooseBackend({ backend: "qemu", network: "none" });
const backend = new QemuBackend({ accel: decision.accel });
const vm = await backend.boot({
  name: "bench-datapath",
  memory: 256,
  cpus: 1,
  network: "none",
  maxProcesses: 256,
  rootfs: image.rootfs,
  rootDisk: () => store.disk(image),
  bootTimeout: 120,
  rawPort: true,
});

try {
  // No udev in the guest: the port's device is found by its name in sysfs.
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell script for the guest's sh; ${p##*/} is sh's parameter expansion
  const find = 'for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name)" = msb.raw ] && echo /dev/${p##*/}; done';
  const port = (await vm.agent.exec(["sh", "-c", find])).stdout.toString().trim();
  if (!port.startsWith("/dev/vport")) throw new Error(`the guest has no msb.raw port (found ${JSON.stringify(port)})`);
  const dd = `dd if=/dev/zero bs=64k count=${BYTES / 65536} 2>/dev/null`;

  // MB/s of `script` writing BYTES into the raw port, until the last byte reached this process.
  async function viaPort(script) {
    let got = 0;
    const arrived = new Promise((resolve) => {
      const on = (chunk) => {
        got += chunk.length;
        if (got >= BYTES) vm.rawPort.off("data", on), resolve();
      };
      vm.rawPort.on("data", on);
    });
    const t = performance.now();
    const [result] = await Promise.all([vm.agent.exec(["sh", "-c", script]), arrived]);
    if (result.exitCode !== 0) throw new Error(`${script} failed: ${result.stderr}`);
    return BYTES / ((performance.now() - t) / 1000) / 1e6;
  }

  async function viaAgent() {
    let got = 0;
    const t = performance.now();
    for await (const chunk of vm.agent.spawn(["sh", "-c", dd])) got += chunk.data.length;
    if (got !== BYTES) throw new Error(`the agent delivered ${got} bytes of ${BYTES}`);
    return BYTES / ((performance.now() - t) / 1000) / 1e6;
  }

  // Interleaved, so that the machine's noise falls on every path alike.
  const runs = { raw: [], pipeline: [], agent: [] };
  for (let r = 0; r < ROUNDS; r++) {
    runs.raw.push(await viaPort(`${dd} > ${port}`));
    runs.pipeline.push(await viaPort(`${dd} | dd bs=64k of=${port} 2>/dev/null`));
    runs.agent.push(await viaAgent());
  }

  for (let i = 0; i < 20; i++) await vm.agent.exec(["true"]); // warm-up
  const trueTimes = [];
  for (let i = 0; i < TRUE_RUNS; i++) {
    const t = performance.now();
    await vm.agent.exec(["true"]);
    trueTimes.push(performance.now() - t);
  }
  // The guest's own fork/exec/wait of /bin/true from a shell, timed inside one command (busybox
  // date has no nanoseconds: /proc/uptime's centiseconds over 200 runs).
  const loop = "a=$(cut -d' ' -f1 /proc/uptime); i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; echo $a $(cut -d' ' -f1 /proc/uptime)";
  const [from, to] = (await vm.agent.exec(["sh", "-c", loop])).stdout.toString().trim().split(" ").map(Number);
  const guestSpawnNs = ((to - from) * 1e9) / 200;

  const mbps = Object.fromEntries(Object.entries(runs).map(([k, v]) => [k, median(v)]));
  const result = {
    date: new Date().toISOString(),
    machine: { ...machine(), backend: backend.describe(), backendReason: decision.reason },
    bytes: BYTES,
    rounds: ROUNDS,
    stdoutMBps: mbps,
    runsMBps: runs,
    agentToRaw: mbps.agent / mbps.raw,
    agentToPipeline: mbps.agent / mbps.pipeline,
    target: "agent >= 0.5 x raw",
    trueRoundTrip: { p50Ms: median(trueTimes), guestForkExecMs: guestSpawnNs / 1e6, runs: TRUE_RUNS },
  };
  const f = (n, d = 1) => n.toFixed(d);
  const md = `# Data path in a VM

${result.date} — ${result.machine.cpu}, ${result.machine.cpus} cores, ${result.machine.memoryGiB} GiB, ${result.machine.kernel}, Node ${result.machine.node}.
One VM on ${result.machine.backend} (${decision.reason}), busybox image, 256 MiB, 1 vCPU. ${BYTES / 2 ** 20} MiB of \`dd bs=64k\` output per run, medians of ${ROUNDS} interleaved runs.

| path | MB/s | vs raw port |
| --- | --- | --- |
| raw virtio-serial port (dd → port → host) | ${f(mbps.raw, 0)} | 1.00 |
| pipe, then the port (dd \\| dd → port) | ${f(mbps.pipeline, 0)} | ${f(mbps.pipeline / mbps.raw, 2)} |
| agent (dd → stdout → agent → AgentClient) | ${f(mbps.agent, 0)} | **${f(result.agentToRaw, 2)}** (target ≥ 0.5) |

\`command.run("true")\` round trip through the agent, ${TRUE_RUNS} runs: p50 ${f(result.trueRoundTrip.p50Ms)} ms;
the guest's own fork + exec + wait of /bin/true from a shell: ${f(result.trueRoundTrip.guestForkExecMs)} ms.
`;
  writeFileSync(path.join(here, "results", "datapath.json"), `${JSON.stringify(result, null, 2)}\n`);
  writeFileSync(path.join(here, "results", "datapath.md"), md);
  console.log(md);
} finally {
  await vm.stop();
}
