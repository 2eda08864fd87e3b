// fork(), pause() and resume() on real VMs (QEMU; TCG here): the copy has the original's memory,
// processes and files at that instant, the original runs on, and a paused sandbox comes back in
// another Node process with its interpreter's state.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";

import { CustomSandbox, InvalidArgumentError, PausedSandboxNotFoundError, PythonSandbox } from "../../src/index.js";

const run = promisify(execFile);
const DIST = new URL("../../dist/index.js", import.meta.url).href;

describe("fork", () => {
  it("copies a Python sandbox's interpreter state and files; both go on separately", async () => {
    const parent = await PythonSandbox.create({ name: "fork-parent", memory: 512 });
    try {
      await parent.run("secret = 41\ncounter = [1, 2]");
      await parent.fs.write("/root/note.txt", "before the fork");
      const child = await parent.fork({ name: "fork-child" });
      try {
        // First thing in both, the same code: the kernel RNG's state was copied with the memory,
        // so only the copy's reseed makes their draws differ.
        const urandom = "import os; os.urandom(16).hex()";
        const [p, c] = await Promise.all([parent.run(urandom), child.run(urandom)]);
        expect(await p.output()).not.toBe(await c.output());
        expect(child.name).toBe("fork-child");
        expect(child.backend).toMatchObject({ name: "qemu", reason: expect.stringMatching(/; copied from fork-parent$/) });
        // The interpreter came along with its variables.
        expect(await (await child.run("secret + 1")).output()).toBe("42");
        expect(await (await child.fs.read("/root/note.txt")).toString()).toBe("before the fork");
        // From here on they are two machines.
        await child.run("counter.append(3)");
        await child.fs.write("/root/note.txt", "child");
        expect(await (await parent.run("counter")).output()).toBe("[1, 2]");
        expect(await (await child.run("counter")).output()).toBe("[1, 2, 3]");
        expect(await (await parent.fs.read("/root/note.txt")).toString()).toBe("before the fork");
        expect(await (await child.command.run("hostname")).output()).toBe("fork-child");
      } finally {
        await child.stop();
      }
      expect(await (await parent.run("secret")).output()).toBe("41");
    } finally {
      await parent.stop();
    }
  });

  it("refuses where the VM cannot be saved, and when not running", async () => {
    const sb = new CustomSandbox({ image: "local:busybox", memory: 128 });
    await expect(sb.fork()).rejects.toThrow(/not running/);
    await expect(sb.pause()).rejects.toThrow(/not running/);
    await expect(CustomSandbox.resume("no-such-paused-sandbox")).rejects.toBeInstanceOf(PausedSandboxNotFoundError);
  });
});

describe("pause and resume", () => {
  it("keeps a Python variable and a file across two Node processes", async () => {
    const name = `paused-${process.pid}`;
    const first = `
      import { PythonSandbox } from ${JSON.stringify(DIST)};
      const sb = await PythonSandbox.create({ name: ${JSON.stringify(name)}, memory: 512 });
      await sb.run("kept = {'answer': 42}");
      await sb.fs.write("/root/kept.txt", "written before the pause");
      const pid = sb.pid;
      const dir = await sb.pause();
      let vmGone = false;
      try { process.kill(pid, 0); } catch { vmGone = true; }
      console.log(JSON.stringify({ dir, vmGone, running: sb.isRunning }));`;
    const paused = JSON.parse((await run(process.execPath, ["--input-type=module", "-e", first], { timeout: 120_000 })).stdout);
    expect(existsSync(paused.dir)).toBe(true);
    expect(paused).toMatchObject({ vmGone: true, running: false }); // paused: no VM runs, in the process that paused
    const second = `
      import { PythonSandbox } from ${JSON.stringify(DIST)};
      const sb = await PythonSandbox.resume(${JSON.stringify(name)});
      try {
        const answer = await (await sb.run("kept['answer']")).output();
        const file = (await sb.fs.read("/root/kept.txt")).toString();
        console.log(JSON.stringify({ answer, file, backend: sb.backend }));
      } finally {
        await sb.stop();
      }`;
    const resumed = JSON.parse((await run(process.execPath, ["--input-type=module", "-e", second], { timeout: 120_000 })).stdout);
    expect(resumed).toMatchObject({ answer: "42", file: "written before the pause" });
    expect(resumed.backend).toMatchObject({ name: "qemu", reason: expect.stringMatching(/; restored from /) });
    expect(existsSync(paused.dir)).toBe(false); // used once
  });

  it("save() keeps a copy that runs on, and resume(name, { as }) starts sandboxes from it again and again", async () => {
    const name = `saved-${process.pid}`;
    const sb = await PythonSandbox.create({ name: `saver-${process.pid}`, memory: 512 });
    let dir: string;
    try {
      await sb.run("state = ['saved']");
      await sb.fs.write("/root/at-save.txt", "as saved");
      dir = await sb.save(name);
      // The original ran on, and what it does now is not in the copy.
      await sb.run("state.append('after')");
      await sb.fs.write("/root/at-save.txt", "changed after");
      expect(await (await sb.run("state")).output()).toBe("['saved', 'after']");
    } finally {
      await sb.stop();
    }
    await expect(PythonSandbox.resume(name, { as: "Bad Name" })).rejects.toBeInstanceOf(InvalidArgumentError);
    for (const as of [`copy-a-${process.pid}`, `copy-b-${process.pid}`]) {
      const copy = await PythonSandbox.resume(name, { as });
      try {
        expect(copy.name).toBe(as);
        expect(await (await copy.command.run("hostname")).output()).toBe(as);
        expect(await (await copy.run("state")).output()).toBe("['saved']");
        expect((await copy.fs.read("/root/at-save.txt")).toString()).toBe("as saved");
        await copy.run("state.append('copy')"); // its own from here: the next copy starts as saved
      } finally {
        await copy.stop();
      }
      expect(existsSync(dir)).toBe(true); // a copy leaves the saved state for more
    }
    // Without `as`, the saved state is brought back once.
    const last = await PythonSandbox.resume(name);
    await last.stop();
    expect(existsSync(dir)).toBe(false);
  });

  it("a command spawned with keep runs on after resume(), its output continuing with nothing lost or repeated", async () => {
    const name = `keep-cmd-${process.pid}`;
    const sb = await CustomSandbox.create({ name, image: "local:busybox", memory: 128 });
    const counter = sb.command.spawn("sh", ["-c", "i=0; while :; do echo $i; i=$((i+1)); sleep 0.2; done"], { keep: true });
    const other = sb.command.spawn("sleep", ["1000"]); // not kept: it ends with the pause
    const before: Buffer[] = [];
    try {
      expect(() => sb.command.spawn("true", [], { keep: "yes" as never })).toThrow(/keep "yes" is invalid/);
      const pid = await counter.pid;
      // The old handle yields all it received, then fails once the VM has stopped.
      const drained = (async () => {
        for await (const c of counter) before.push(c.data);
      })();
      drained.catch(() => {}); // it fails during the pause: checked after it
      while (Buffer.concat(before).toString().split("\n").length < 4) await new Promise((r) => setTimeout(r, 100));
      await sb.pause();
      await expect(drained).rejects.toThrow();
      await expect(other.exit).rejects.toThrow();
      const back = await CustomSandbox.resume(name);
      try {
        expect([...back.command.resumed().keys()]).toEqual([pid]);
        const again = back.command.resumed().get(pid)!;
        const after: Buffer[] = [];
        for await (const c of again) {
          after.push(c.data);
          if (Buffer.concat(after).toString().split("\n").length > 4) break;
        }
        const lines = Buffer.concat([...before, ...after])
          .toString()
          .split("\n")
          .slice(0, -1);
        expect(lines.length).toBeGreaterThan(6);
        expect(lines).toEqual(lines.map((_, i) => String(i)));
        expect(await (await back.command.run("ps")).output()).not.toMatch(/sleep 1000/);
        again.kill("SIGTERM");
        expect(await again.exit).toMatchObject({ signal: "SIGTERM" });
      } finally {
        await back.stop();
      }
    } finally {
      await sb.stop();
    }
  });

  it("pause({ keepMemory: false }) keeps the files only, and resume() boots afresh over them", async () => {
    const name = `files-only-${process.pid}`;
    const sb = await PythonSandbox.create({ name, memory: 512 });
    let dir: string;
    try {
      await sb.run("gone = 'with the memory'");
      await sb.fs.write("/root/kept.txt", "a file of the sandbox");
      await sb.fs.write("/tmp/in-tmp.txt", "a file in /tmp");
      await sb.command.run("sh", ["-c", "rm /etc/debian_version && mkdir -p /srv/made/deep && echo x > /srv/made/deep/f && ln -s /root/kept.txt /root/link"]);
      dir = await sb.pause({ keepMemory: false });
    } finally {
      await sb.stop();
    }
    expect(existsSync(`${dir}/state`)).toBe(false); // no memory was saved
    const back = await PythonSandbox.resume(name);
    try {
      expect(back.backend!.reason).not.toMatch(/restored from/);
      expect(await (await back.run("'gone' in globals()")).output()).toBe("False");
      expect((await back.fs.read("/root/kept.txt")).toString()).toBe("a file of the sandbox");
      expect((await back.fs.read("/tmp/in-tmp.txt")).toString()).toBe("a file in /tmp");
      expect(await (await back.command.run("cat", ["/srv/made/deep/f", "/root/link"])).output()).toBe("x\na file of the sandbox");
      // A file of the image deleted before the pause stays deleted.
      expect((await back.command.run("test", ["-e", "/etc/debian_version"])).exitCode).toBe(1);
    } finally {
      await back.stop();
    }
    expect(existsSync(dir)).toBe(false);
    await expect(sb.pause({ keepMemory: "no" as never })).rejects.toThrow(/keepMemory "no" is invalid/);
  });
});
