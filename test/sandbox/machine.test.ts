// What the sandbox layer sees of its VM through src/vm/machine.ts: a structured backend, trace
// events on diagnostics_channel, and a paused sandbox that resumes only through the same decision
// as create(). Real VMs (QEMU; TCG here).
import diagnostics_channel from "node:diagnostics_channel";
import { afterEach, describe, expect, it } from "vitest";

import { CustomSandbox, PausedSandboxNotFoundError, SnapshotUnsupportedError } from "../../src/index.js";

const saved = process.env.MSB_QEMU_ACCEL;
const arch = process.arch === "arm64" ? "aarch64" : "x86_64";
afterEach(() => {
  if (saved === undefined) delete process.env.MSB_QEMU_ACCEL;
  else process.env.MSB_QEMU_ACCEL = saved;
});

describe("the machine behind a sandbox", () => {
  it("says which VMM runs it as data, and traces boots and commands on diagnostics_channel", async () => {
    const seen: { channel: string; message: Record<string, unknown> }[] = [];
    const names = ["boot:start", "boot:end", "command:start", "command:end"].map((e) => `microsandbox:${e}`);
    const listeners = names.map((channel) => {
      const listener = (message: unknown) => seen.push({ channel, message: message as Record<string, unknown> });
      diagnostics_channel.subscribe(channel, listener);
      return () => diagnostics_channel.unsubscribe(channel, listener);
    });
    try {
      await using sb = await CustomSandbox.create({ name: "traced", image: "local:busybox", memory: 128, snapshot: false });
      expect(sb.backend).toEqual({ name: "qemu", accel: "tcg", arch, reason: expect.stringContaining("TCG") });
      await sb.command.run("sh", ["-c", "exit 3"]);
    } finally {
      for (const off of listeners) off();
    }
    expect(seen.map((s) => s.channel)).toEqual(names);
    expect(seen[1]!.message).toMatchObject({ name: "traced", info: { name: "qemu", accel: "tcg" }, ms: expect.any(Number) });
    expect(seen[3]!.message).toMatchObject({ sandbox: "traced", command: "sh", exitCode: 3 });
  });

  it("resumes a paused sandbox once, and only where the decision still picks what saved it", async () => {
    const sb = await CustomSandbox.create({ name: "decided", image: "local:busybox", memory: 128, backend: "qemu", snapshot: false });
    await sb.fs.write("/root/kept", "before the pause");
    await sb.pause();
    // The host now decides otherwise: a saved TCG VM cannot load under KVM, and nothing boots.
    process.env.MSB_QEMU_ACCEL = "kvm";
    const refused = await CustomSandbox.resume("decided").catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(SnapshotUnsupportedError);
    expect((refused as Error).message).toMatch(
      new RegExp(`was saved on qemu \\(tcg\\) on ${arch}, and a sandbox here now gets qemu \\(kvm\\) \\(.*MSB_QEMU_ACCEL=kvm\\)`),
    );
    delete process.env.MSB_QEMU_ACCEL;
    // Two resumes of one name take turns (a lock per paused name): one gets it, the other finds nothing.
    const [first, second] = await Promise.allSettled([CustomSandbox.resume("decided"), CustomSandbox.resume("decided")]);
    const won = [first, second].filter((r) => r.status === "fulfilled");
    const lost = [first, second].filter((r) => r.status === "rejected");
    expect(won).toHaveLength(1);
    expect(lost[0]!.reason).toBeInstanceOf(PausedSandboxNotFoundError);
    await using back = won[0]!.value;
    expect((await back.fs.read("/root/kept")).toString()).toBe("before the pause");
    expect(back.backend).toMatchObject({ name: "qemu", accel: "tcg", reason: expect.stringMatching(/; restored from /) });
  });
});
