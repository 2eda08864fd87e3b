// The VMM is confined whatever the guest does: QEMU's seccomp filter, no new privileges, only the
// descriptors it was given, and no host network namespace for a VM without a network. Checked from
// outside, on the running QEMU's /proc entry.
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, openSync, readFileSync, readlinkSync } from "node:fs";
import { describe, expect, it } from "vitest";

import { CustomSandbox } from "../../src/index.js";
import { vmmHelperPath } from "../../src/native.js";

const status = (pid: number, key: string) => new RegExp(`^${key}:\\s+(\\S+)`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
const netns = (pid: number | "self") => readlinkSync(`/proc/${pid}/ns/net`);

describe.skipIf(process.platform !== "linux")("a confined QEMU", () => {
  it("runs under its seccomp filter, without new privileges and, without a network, outside the host's network", async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, backend: "qemu", network: "none", snapshot: false });
    try {
      const pid = sb.pid!;
      expect(status(pid, "Seccomp")).toBe("2");
      expect(status(pid, "NoNewPrivs")).toBe("1");
      expect(netns(pid)).not.toBe(netns("self"));
      expect(await (await sb.command.run("echo", ["inside"])).output()).toBe("inside");
    } finally {
      await sb.stop();
    }
  });

  it("keeps the host's network for a VM that has one", async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, backend: "qemu", network: "all", snapshot: false });
    try {
      expect(status(sb.pid!, "Seccomp")).toBe("2");
      expect(netns(sb.pid!)).toBe(netns("self"));
    } finally {
      await sb.stop();
    }
  });
});

describe.skipIf(process.platform !== "linux")("msb-vmm exec", () => {
  // A shell that prints its descriptors and network namespace.
  const report = ["sh", "-c", "ls /proc/$$/fd; readlink /proc/$$/ns/net"];
  const run = (flags: string[]) => {
    // Spawned children get their stdio slots without close-on-exec: 3 is kept, 4 must not pass.
    const [a, b] = [openSync("/dev/null", "r"), openSync("/dev/null", "r")];
    try {
      const r = spawnSync(vmmHelperPath(), ["exec", String(process.pid), ...flags, "--", ...report], { stdio: ["ignore", "pipe", "pipe", a, b], encoding: "utf8" });
      expect(r.stderr).toBe("");
      const lines = r.stdout.trim().split("\n");
      return { fds: lines.slice(0, -1).map(Number).sort((x, y) => x - y), netns: lines.at(-1) };
    } finally {
      closeSync(a);
      closeSync(b);
    }
  };

  it("passes on only the descriptors it keeps, and with --no-network an empty network namespace", () => {
    const plain = run(["--keep", "3"]);
    expect(plain.fds).toEqual([0, 1, 2, 3]);
    expect(plain.netns).toBe(netns("self"));
    const isolated = run(["--keep", "3", "--no-network"]);
    expect(isolated.fds).toEqual([0, 1, 2, 3]);
    expect(isolated.netns).not.toBe(netns("self"));
    expect(execFileSync(vmmHelperPath(), ["exec", String(process.pid), "--", "grep", "NoNewPrivs", "/proc/self/status"], { encoding: "utf8" })).toMatch(/NoNewPrivs:\s+1/);
  });
});
