// The aarch64 guest: our aarch64 kernel and the cross-built static agent, booted in a real
// qemu-system-aarch64 -M virt VM under TCG (the guest libkrun runs on Apple Silicon and arm64
// Linux). A command runs, a file goes in and comes back, and output streams as it is made.
import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ImageStore } from "../../src/images/store.js";
import type { Vm } from "../../src/vm/backend.js";
import { QemuBackend } from "../../src/vm/qemu.js";

// On x86_64 the image is scripts/prepare-guest.sh's busybox-aarch64; on arm64 the native busybox.
const IMAGE = process.arch === "arm64" ? "local:busybox" : "local:busybox-aarch64";

describe.skipIf(!["x64", "arm64"].includes(process.arch))("an aarch64 guest under qemu-system-aarch64", () => {
  let vm: Vm;
  beforeAll(async () => {
    const store = new ImageStore();
    const image = (await store.lookup(IMAGE))!;
    const backend = new QemuBackend({ accel: "tcg", arch: "aarch64" });
    vm = await backend.boot({
      name: "aarch64-test",
      memory: 256,
      cpus: 2,
      network: "none",
      confinement: "required",
      maxProcesses: 256,
      bootTimeout: 60,
      rootfs: image.rootfs,
      rootDisk: () => store.disk(image),
    });
  }, 90_000);
  afterAll(async () => {
    await vm?.stop();
  });

  it("boots our aarch64 kernel on -M virt and runs a command", async () => {
    expect(vm.backend).toBe(process.arch === "arm64" ? "qemu (tcg)" : "qemu (tcg, aarch64)");
    const r = await vm.agent.exec(["sh", "-c", "uname -m; uname -r; cat /proc/cmdline"]);
    const [machine, release, cmdline] = r.stdout.toString().trim().split("\n");
    expect(machine).toBe("aarch64");
    expect(release).toMatch(/^6\.12\./);
    expect(cmdline).toContain("console=ttyAMA0");
    // Every driver is built in: the agent loaded nothing.
    expect(vm.timeline.guest.map((e) => e.name)).not.toContain("modules_loaded");
    // The QEMU that runs it is the aarch64 one.
    expect(execFileSync("ps", ["-o", "args=", "-p", String(vm.pid)], { encoding: "utf8" })).toMatch(/qemu-system-aarch64/);
  });

  it("writes a file and reads it back", async () => {
    const data = Buffer.from(Array.from({ length: 70_000 }, (_, i) => i % 251));
    await vm.agent.writeFile("/tmp/roundtrip.bin", data);
    expect((await vm.agent.readFile("/tmp/roundtrip.bin")).equals(data)).toBe(true);
    const sum = await vm.agent.exec(["sh", "-c", "wc -c < /tmp/roundtrip.bin"]);
    expect(sum.stdout.toString().trim()).toBe("70000");
  });

  it("streams output as the command makes it", async () => {
    const proc = vm.agent.spawn(["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done"]);
    const arrivals: { text: string; at: number }[] = [];
    const t0 = performance.now();
    for await (const chunk of proc) arrivals.push({ text: chunk.data.toString(), at: performance.now() - t0 });
    expect(arrivals.map((a) => a.text).join("")).toBe("line1\nline2\nline3\n");
    // Each line came on its own, a sleep apart, not all at the end.
    expect(arrivals.length).toBe(3);
    expect(arrivals[2]!.at - arrivals[0]!.at).toBeGreaterThan(400);
    expect((await proc.exit).exitCode).toBe(0);
  });
});
