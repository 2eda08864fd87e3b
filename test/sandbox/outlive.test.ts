// The outlive option as a library user sees it: a sandbox let go of (detach) or whose process was
// SIGKILLed runs on, Sandbox.orphans() lists it, the class that made it adopts it with its
// interpreter, files and keep commands, and one that cannot be adopted is stopped and named.
// Real VMs (QEMU; TCG here), in a TMPDIR of their own so other files' runtime dirs do not show.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { CustomSandbox, InvalidArgumentError, PythonSandbox, Sandbox, SandboxNotRunningError, VmGoneError } from "../../src/index.js";
import { alive } from "../../src/liveness.js";
import { within } from "./helpers.js";

const savedTmpdir = process.env.TMPDIR;
let tmp: string;

beforeAll(() => {
  tmp = mkdtempSync(path.join(tmpdir(), "msb-outlive-"));
  process.env.TMPDIR = tmp;
});

afterAll(() => {
  for (const o of Sandbox.orphans()) Sandbox.discard(o);
  if (savedTmpdir === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmpdir;
  rmSync(tmp, { recursive: true, force: true });
});

describe("outlive", () => {
  it("is refused with volumes, and is no orphan while this process holds it", async () => {
    expect(() => new CustomSandbox({ image: "local:busybox", outlive: true, volumes: [{ name: "outlive-vol", path: "/data" }] })).toThrow(InvalidArgumentError);
    expect(() => new CustomSandbox({ image: "local:busybox", outlive: "yes" as never })).toThrow(/outlive "yes" is invalid/);
    const held = await CustomSandbox.create({ image: "local:busybox", memory: 128 });
    try {
      await expect(held.detach()).rejects.toThrow(/not created with outlive/);
    } finally {
      await held.stop();
    }
  });

  it("a detached sandbox is adopted with its interpreter, files and keep command; a wrong class is refused", async () => {
    const sb = await PythonSandbox.create({ memory: 256, outlive: true, name: "outlive-py" });
    await sb.run("x = 41");
    await sb.fs.write("/root/kept.txt", "kept");
    const counter = sb.command.spawn("sh", ["-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"], { keep: true });
    const pid = await counter.pid;
    sb.setAdoptionData({ mine: 1 });
    expect(await sb.detach()).toBe(true);
    expect(sb.isRunning).toBe(false);
    const orphan = Sandbox.orphans().find((o) => o.name === "outlive-py");
    expect(orphan).toMatchObject({ kind: "PythonSandbox", data: { mine: 1 } });
    await expect(CustomSandbox.adopt(orphan!)).rejects.toThrow(/adopt it with PythonSandbox.adopt/);

    const again = await PythonSandbox.adopt(orphan!);
    try {
      expect(Sandbox.orphans().some((o) => o.name === "outlive-py")).toBe(false);
      expect(await (await again.run("x + 1")).output()).toBe("42");
      expect((await again.fs.read("/root/kept.txt")).toString()).toBe("kept");
      const adopted = again.command.resumed().get(pid);
      expect(adopted).toBeDefined();
      // Its count carries on from where the detached handle left it.
      let last = 0;
      for await (const chunk of adopted!) {
        last = Number(
          String((chunk as { data: Buffer }).data)
            .trim()
            .split("\n")
            .at(-1),
        );
        if (last > 1) break;
      }
      expect(last).toBeGreaterThan(1);
      adopted!.kill();
    } finally {
      const dir = orphan!.state.machine.vm.dir;
      await again.stop();
      expect(existsSync(dir)).toBe(false);
      expect(alive(orphan!.state.machine.vm.helper)).toBe(false);
    }
  }, 120_000);

  it("outlives a SIGKILLed process; a VM gone meanwhile is named at adoption and leaves nothing", async () => {
    const script = `
      import { CustomSandbox } from ${JSON.stringify(new URL("../../dist/index.js", import.meta.url).href)};
      for (const name of ["outlive-a", "outlive-b"]) await CustomSandbox.create({ image: "local:busybox", memory: 128, outlive: true, name });
      console.log("up");
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env } });
    const exited = once(child, "exit");
    try {
      await within(once(child.stdout!, "data"), 60_000, "the child booting its sandboxes");
    } finally {
      child.kill("SIGKILL");
      await exited;
    }
    const a = Sandbox.orphans().find((o) => o.name === "outlive-a");
    const b = Sandbox.orphans().find((o) => o.name === "outlive-b");
    expect(a && b).toBeTruthy();
    // Its state is beside its runtime dir, out of the VMM's jail, not in it.
    const { dir } = a!.state.machine.vm;
    expect(existsSync(`${dir}.sandbox.json`)).toBe(true);
    expect(existsSync(path.join(dir, "sandbox.json"))).toBe(false);
    // Two adopters at once: one gets it, the other is told who has it, and the VM lives on.
    const [adoptedOrNot, other] = await Promise.allSettled([CustomSandbox.adopt(a!), CustomSandbox.adopt(a!)]);
    expect(adoptedOrNot.status).toBe("fulfilled");
    expect(other.status === "rejected" && (other.reason as Error).message).toMatch(/is being adopted by process/);
    const adopted = (adoptedOrNot as PromiseFulfilledResult<CustomSandbox>).value;
    try {
      expect((await adopted.command.run("echo", ["still here"])).stdout).toBe("still here\n");
    } finally {
      await adopted.stop();
    }
    // SIGKILL of a VM's helper ends that VM: adopting it then fails, typed, and its dir goes.
    process.kill(b!.state.machine.vm.helper.pid, "SIGKILL");
    await new Promise((r) => setTimeout(r, 300));
    const err = await CustomSandbox.adopt(b!).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxNotRunningError);
    expect(err).toBeInstanceOf(VmGoneError);
    expect(existsSync(b!.state.machine.vm.dir)).toBe(false);
    expect(Sandbox.orphans()).toEqual([]);
  }, 120_000);
});
