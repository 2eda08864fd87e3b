// A VM dies with the Node process that made it, even one killed with SIGKILL, and the runtime dir
// that process left is swept by the next, and only that one. Real VMs (QEMU; TCG here).
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { runtimeDirOwner, runtimeParent, sweepRuntimeDirs } from "../../src/paths.js";
import { alive, waitFor, within } from "./helpers.js";

const savedTmpdir = process.env.TMPDIR;
let tmp: string;

// A TMPDIR of its own: other test files' runtime dirs do not change what this one sees.
beforeEach(() => {
  tmp = mkdtempSync(path.join(tmpdir(), "msb-orphans-"));
  process.env.TMPDIR = tmp;
});

afterEach(() => {
  if (savedTmpdir === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmpdir;
  rmSync(tmp, { recursive: true, force: true });
});

describe("a sandbox whose Node process was killed", () => {
  it("takes the VM down with a Node process killed with its sandbox running, then removes that process's dir, and only that", async () => {
    const script = `
      import { CustomSandbox } from ${JSON.stringify(new URL("../../dist/index.js", import.meta.url).href)};
      const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128 });
      console.log(sb.pid);
      setInterval(() => {}, 1000);`;
    // The child's TMPDIR is this test's: its runtime dir is the only one there.
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, TMPDIR: tmp },
    });
    const exited = once(child, "exit");
    try {
      const line = await within(
        Promise.race([
          once(child.stdout!, "data").then(([d]) => String(d)),
          exited.then(([code]) => {
            throw new Error(`the child exited (${code}) before booting a sandbox; is dist/ built (npm run prepare)?`);
          }),
        ]),
        30_000,
        "the child booting a sandbox",
      );
      const vmPid = Number(line.trim());
      expect(alive(vmPid)).toBe(true);
      child.kill("SIGKILL");
      await within(exited, 5000, "the killed child exiting");
      expect(await waitFor(() => !alive(vmPid), 5000)).toBe(true);
    } finally {
      child.kill("SIGKILL");
      await within(exited, 5000, "the killed child exiting");
    }

    const parent = runtimeParent();
    const left = readdirSync(parent)
      .map((n) => path.join(parent, n))
      .filter((dir) => runtimeDirOwner(dir)?.pid === child.pid);
    expect(left).toHaveLength(1);
    expect(existsSync(path.join(left[0]!, "console.log"))).toBe(true);
    expect(sweepRuntimeDirs()).toEqual(left);
    expect(existsSync(left[0]!)).toBe(false);
    expect(readdirSync(parent)).toEqual([]);
  });
});
