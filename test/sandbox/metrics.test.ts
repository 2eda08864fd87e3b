// Metrics that move with what the guest does, and per-command usage, on a real VM.
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { CustomSandbox } from "../../src/index.js";

const MiB = 2 ** 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let sb: CustomSandbox;

beforeAll(async () => {
  sb = await CustomSandbox.create({ image: "local:busybox", memory: 384 });
}, 180_000);
afterAll(() => sb?.stop());

describe("sandbox.metrics()", () => {
  it("reports the guest as it is, with the VMM's resident memory on the host", async () => {
    const m = await sb.metrics();
    expect(m.cpu.cores).toBe(1);
    expect(m.memory.limitBytes).toBe(384 * MiB);
    expect(m.memory.totalBytes).toBeGreaterThan(300 * MiB);
    expect(m.memory.totalBytes).toBeLessThanOrEqual(384 * MiB);
    expect(m.memory.usedBytes).toBeGreaterThan(0);
    expect(m.disk.freeBytes).toBeGreaterThan(0);
    expect(m.uptimeMs).toBeGreaterThan(0);
    if (process.platform === "linux") expect(m.memory.vmmResidentBytes).toBeGreaterThan(50 * MiB);
  });

  it("moves: a CPU burner raises cpu percent, 100 MiB held raises memory used, a file raises disk used", async () => {
    await sb.metrics();
    await sleep(1500);
    const quiet = await sb.metrics();
    const burner = sb.command.spawn("sh", ["-c", "while :; do :; done"], { timeout: 3 });
    await sleep(2000);
    const burning = await sb.metrics();
    await burner.exit.catch(() => {});
    expect(quiet.cpu.percent).toBeLessThan(50);
    expect(burning.cpu.percent).toBeGreaterThan(70);
    expect(burning.cpu.timeMs).toBeGreaterThan(quiet.cpu.timeMs + 1000);

    // 100 MiB in a tmpfs file is memory no one can reclaim while it is there.
    const before = await sb.metrics();
    await sb.command.run("sh", ["-c", "head -c 104857600 /dev/zero > /dev/shm/hold"]);
    const holding = await sb.metrics();
    await sb.command.run("rm", ["/dev/shm/hold"]);
    const grew = (holding.memory.usedBytes - before.memory.usedBytes) / MiB;
    expect(grew).toBeGreaterThan(90);
    expect(grew).toBeLessThan(130);

    const disk0 = await sb.metrics();
    await sb.command.run("sh", ["-c", "head -c 20971520 /dev/urandom > /root/blob && sync"]);
    const disk1 = await sb.metrics();
    expect((disk1.disk.usedBytes - disk0.disk.usedBytes) / MiB).toBeGreaterThan(18);
    expect(disk1.processes).toBe(0); // nothing of the sandbox's runs between commands
  }, 60_000);

  it("gives each command its CPU time and peak memory", async () => {
    const big = await sb.command.run("dd", ["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    expect(big.usage.peakMemoryBytes).toBeGreaterThan(64 * MiB);
    const small = await sb.command.run("true");
    expect(small.usage.peakMemoryBytes).toBeLessThan(16 * MiB);
    const spin = await sb.command.run("sh", ["-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"]);
    expect(spin.usage.cpuTimeMs).toBeGreaterThan(50);
    expect(small.usage.cpuTimeMs).toBeLessThan(spin.usage.cpuTimeMs);
  }, 60_000);

  it("streams samples until the sandbox stops", async () => {
    const other = await CustomSandbox.create({ image: "local:busybox", memory: 128 });
    const seen: number[] = [];
    const stopping = (async () => {
      await sleep(1200);
      await other.stop();
    })();
    for await (const m of other.metricsStream(300)) seen.push(m.uptimeMs);
    await stopping;
    expect(seen.length).toBeGreaterThanOrEqual(2);
    expect(seen).toEqual([...seen].sort((a, b) => a - b));
  });
});
