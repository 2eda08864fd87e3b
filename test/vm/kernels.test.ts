// Kernels other than ours: one named by the `kernel` option that brings its virtio drivers as
// modules beside it (Debian's cloud kernel, as bench/debian-kernel.sh prepares it) boots, its
// modules loaded by the agent; and `msb bench --kernel A --kernel B` compares two kernels in one run.
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { CustomSandbox } from "../../src/index.js";
import { cacheDir } from "../../src/paths.js";
import { guestBoot } from "../../src/vm/guest.js";

const root = fileURLToPath(new URL("../..", import.meta.url));
const run = promisify(execFile);

describe.skipIf(process.arch !== "x64")("another guest kernel", () => {
  let debian: string;
  let ours: string;
  const work = mkdtempSync(path.join(tmpdir(), "msb-kernels-"));
  beforeAll(async () => {
    debian = execFileSync("bash", [path.join(root, "bench/debian-kernel.sh"), cacheDir()], { encoding: "utf8" })
      .trim()
      .split("\n")
      .pop()!;
    ours = (await guestBoot()).kernel;
  }, 120_000);
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it("boots with its modules loaded from the dir beside it; ours loads none", async () => {
    for (const [kernel, release, loads] of [
      [debian, /-cloud-amd64$/, true],
      [undefined, /^6\.12\./, false],
    ] as const) {
      const sb = await CustomSandbox.create({
        image: "local:busybox",
        memory: 256,
        backend: "qemu",
        snapshot: false,
        network: "all",
        ...(kernel ? { kernel } : {}),
      });
      try {
        expect((await (await sb.command.run("uname", ["-r"])).output()).trim()).toMatch(release);
        expect(sb.timeline!.guest.some((e) => e.name === "modules_loaded")).toBe(loads);
        expect(sb.timeline!.kernelMs).toBe(sb.timeline!.guest.find((e) => e.name === "agent_start")!.ms);
        // The network's driver too (with modules, the one order.net names): eth0 has QEMU's address.
        expect(await (await sb.command.run("cat", ["/sys/class/net/eth0/address"])).output()).toBe("52:54:00:12:34:56");
      } finally {
        await sb.stop();
      }
    }
  });

  it("msb bench --kernel A --kernel B: both kernels' runs and floors, side by side", async () => {
    const json = path.join(work, "bench.json");
    const { stdout, stderr } = await run(process.execPath, [
      path.join(root, "dist/cli/msb.js"),
      "bench",
      "--runs",
      "2",
      "--backend",
      "qemu",
      "--kernel",
      ours,
      "--kernel",
      debian,
      "--output",
      json,
    ]);
    const results = JSON.parse(readFileSync(json, "utf8")) as { kernel: string; runs: { ok: boolean; kernelToInit?: number }[]; floor: number[] }[];
    expect(results.map((r) => r.kernel)).toEqual([ours, debian]);
    for (const r of results) {
      expect(r.runs.map((x) => x.ok)).toEqual([true, true]);
      expect(r.runs.every((x) => (x.kernelToInit ?? 0) > 0)).toBe(true);
      expect(r.floor.length).toBe(2);
    }
    // One table per kernel, each naming it; four runs reported as they ended.
    expect(stdout.split(`kernel ${ours}`).length).toBe(2);
    expect(stdout.split(`kernel ${debian}`).length).toBe(2);
    expect(stderr.match(/^run \d+: first output at \d+ ms$/gm)).toHaveLength(4);
  }, 120_000);
});
