// Restore-on-create on real VMs (QEMU; TCG here): the first sandbox of a kind makes a memory
// snapshot, later ones restore it; clones get their own randomness, clock and identity; a damaged
// snapshot is replaced by a cold boot, with the reason in the timeline.
import { existsSync, mkdirSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

import { CustomSandbox, PythonSandbox } from "../../src/index.js";
import { cacheDir } from "../../src/paths.js";

// A limit no other test uses makes a snapshot of its own, removed at the end.
const maxProcesses = 2000 + Math.floor(Math.random() * 1000);
const opts = { image: "local:busybox", memory: 192, maxProcesses };
const keys = new Set<string>();
afterAll(() => {
  for (const k of keys) rmSync(path.join(cacheDir(), "snapshots", k), { recursive: true, force: true });
});

const keyOf = (sb: CustomSandbox | PythonSandbox) => /snapshot ([0-9a-f]{32})/.exec(sb.timeline!.snapshot!.detail)![1]!;
const out = async (sb: CustomSandbox, ...cmd: string[]) => (await sb.command.run(cmd[0]!, cmd.slice(1))).stdout.trim();

describe("restore-on-create", () => {
  it("makes a snapshot once, then restores clones that do not share randomness, clock or identity", async () => {
    const first = await CustomSandbox.create({ ...opts, name: "snap-first" });
    try {
      expect(first.timeline!.snapshot).toMatchObject({ kind: "created" });
      // The template booted, and was thrown away once saved: this sandbox runs restored from it.
      expect(first.timeline!.kernelMs).toBeUndefined();
      keys.add(keyOf(first));
      expect(await out(first, "echo", "made")).toBe("made");
    } finally {
      await first.stop();
    }
    // Restored a while after the template was saved: their clocks must have been stepped.
    await new Promise((r) => setTimeout(r, 4000));
    const [a, b] = await Promise.all([CustomSandbox.create({ ...opts, name: "snap-a" }), CustomSandbox.create({ ...opts, name: "snap-b" })]);
    try {
      for (const sb of [a, b]) {
        expect(sb.timeline!.snapshot).toMatchObject({ kind: "restored", detail: expect.stringContaining(keyOf(first)) });
        // A restored VM booted no kernel.
        expect(sb.timeline!.kernelMs).toBeUndefined();
        expect(await out(sb, "hostname")).toBe(sb.name);
        const guestSeconds = Number(await out(sb, "date", "+%s"));
        expect(Math.abs(guestSeconds - Date.now() / 1000)).toBeLessThan(1.5);
      }
      const random = async (sb: CustomSandbox) => out(sb, "sh", "-c", "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'");
      expect(await random(a)).not.toBe(await random(b));
      const bootId = (sb: CustomSandbox) => out(sb, "cat", "/proc/sys/kernel/random/boot_id");
      expect(await bootId(a)).toMatch(/^[0-9a-f-]{36}$/);
      expect(await bootId(a)).not.toBe(await bootId(b));
      // Each clone's files are its own.
      await a.fs.write("/root/only-a", "a");
      expect((await b.command.run("ls", ["/root"])).stdout).toBe("");
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it("replaces a damaged snapshot with a cold boot and says why", async () => {
    const sb = await CustomSandbox.create({ ...opts, name: "snap-c" });
    const key = keyOf(sb);
    keys.add(key);
    await sb.stop();
    truncateSync(path.join(cacheDir(), "snapshots", key, "state"), 100);
    // What a process killed while making this snapshot would have left.
    const leftover = path.join(cacheDir(), "snapshots", `${key}.tmp-killed`);
    mkdirSync(leftover);
    writeFileSync(path.join(leftover, "ram"), "half a snapshot");
    const again = await CustomSandbox.create({ ...opts, name: "snap-d" });
    try {
      expect(existsSync(leftover)).toBe(false);
      expect(again.timeline!.snapshot).toMatchObject({ kind: "cold", detail: expect.stringMatching(/state is 100 bytes.*made snapshot .* anew/) });
      expect(await out(again, "echo", "fine")).toBe("fine");
    } finally {
      await again.stop();
    }
    const restored = await CustomSandbox.create({ ...opts, name: "snap-e" });
    try {
      expect(restored.timeline!.snapshot!.kind).toBe("restored");
    } finally {
      await restored.stop();
    }
  });

  it("replaces a snapshot that passes its checks but does not restore", async () => {
    const sb = await CustomSandbox.create({ ...opts, name: "snap-f" });
    const key = keyOf(sb);
    keys.add(key);
    await sb.stop();
    // The RAM file is not checksummed (it is large): zeroes of the right size pass the checks.
    const ram = path.join(cacheDir(), "snapshots", key, "ram");
    const size = statSync(ram).size;
    truncateSync(ram, 0);
    truncateSync(ram, size);
    const again = await CustomSandbox.create({ ...opts, name: "snap-g", timeout: 20 });
    try {
      expect(again.timeline!.snapshot).toMatchObject({ kind: "cold", detail: expect.stringMatching(/restoring snapshot .* failed: .*made snapshot .* anew/) });
      expect(await out(again, "echo", "recovered")).toBe("recovered");
    } finally {
      await again.stop();
    }
  });

  it("boots cold when asked to", async () => {
    const sb = await CustomSandbox.create({ ...opts, name: "snap-off", snapshot: false });
    try {
      expect(sb.timeline!.snapshot).toBeUndefined();
      expect(await out(sb, "echo", "cold")).toBe("cold");
    } finally {
      await sb.stop();
    }
  });
});

describe("restore-on-create with an interpreter", () => {
  it("gives every Python clone the template's interpreter, already running, with state of its own", async () => {
    const env = { SNAPSHOT_TEST: String(maxProcesses) }; // part of the interpreter's key: a snapshot of its own
    const made = await PythonSandbox.create({ name: "py-snap-made", memory: 512, env });
    keys.add(keyOf(made));
    await made.stop();
    const [a, b] = await Promise.all([
      PythonSandbox.create({ name: "py-snap-a", memory: 512, env }),
      PythonSandbox.create({ name: "py-snap-b", memory: 512, env }),
    ]);
    try {
      for (const sb of [a, b]) expect(sb.timeline!.snapshot).toMatchObject({ kind: "restored" });
      // The same process in both: the interpreter was started once, in the template.
      const pid = async (sb: PythonSandbox) => (await sb.run("import os; os.getpid()")).output();
      expect(await pid(a)).toBe(await pid(b));
      await a.run("only_in_a = 1");
      expect((await b.run("only_in_a")).hasError()).toBe(true);
      expect(await (await a.run("import os; os.environ['SNAPSHOT_TEST']")).output()).toBe(`'${maxProcesses}'`);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});
