// The same sandbox checks on every backend: QEMU runs everywhere; libkrun runs where its probe
// can run a sandbox (KVM or Hypervisor.framework, libkrun and libkrunfw new enough) and is
// skipped with the reason elsewhere.
import { describe, expect, it } from "vitest";

import { CustomSandbox } from "../../src/index.js";
import { probe } from "../../src/vm/probe.js";
import { krunRefusal } from "../../src/vm/select.js";

const krunMissing = krunRefusal({ platform: process.platform, probe: probe() }, "none");

for (const backend of ["qemu", "krun"] as const) {
  const skip = backend === "krun" ? krunMissing : undefined;
  describe.skipIf(skip !== undefined)(`backend ${backend}${skip ? ` (skipped: ${skip})` : ""}`, () => {
    it("boots, runs commands, keeps files, stops", async () => {
      const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, backend });
      try {
        expect(sb.backend?.name).toBe(backend);
        expect(await (await sb.command.run("echo", ["hello"])).output()).toBe("hello");
        await sb.fs.write("/root/note.txt", "kept");
        expect(await (await sb.command.run("cat", ["/root/note.txt"])).output()).toBe("kept");
        expect((await sb.command.run("sh", ["-c", "exit 7"])).exitCode).toBe(7);
      } finally {
        await sb.stop();
      }
      expect(sb.isRunning).toBe(false);
    });
  });
}
