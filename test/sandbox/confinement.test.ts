// sandbox.confinement as a user sees it: what msb-vmm applied to a real QEMU (TCG here), for a VM
// with a network and one without; and on a host that allows no namespaces (fixtures/nounshare.c
// makes unshare(2) fail, as a container without CAP_SYS_ADMIN does) create() fails closed, leaving
// nothing behind, unless asked for "best-effort". As a user who is not root, the jail lives in a
// user namespace and the VMM keeps that user's uid.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

import { type Confinement, CustomSandbox } from "../../src/index.js";

const root = process.platform === "linux" && process.getuid?.() === 0;
const cc = spawnSync("cc", ["--version"]).status === 0;
const DIST = new URL("../../dist/index.js", import.meta.url).href;
const PROBE = new URL("../../dist/vm/confinement-probe.js", import.meta.url).href;
const NOUNSHARE_C = fileURLToPath(new URL("../vm/fixtures/nounshare.c", import.meta.url));
const work = mkdtempSync(path.join(os.tmpdir(), "msb-confinement-"));

afterAll(() => rmSync(work, { recursive: true, force: true }));

const FULL: Confinement = { mode: "required", namespaces: true, uid: true, noNewPrivs: true, seccomp: true, network: "supervisor", missing: [] };

describe.skipIf(!root)("sandbox.confinement, as root", () => {
  it("a VM with a network: jailed, its own uid, no_new_privs, the network held by the supervisor", async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, network: "public", snapshot: false });
    try {
      expect(sb.confinement).toEqual(FULL);
    } finally {
      await sb.stop();
    }
  });

  it("a VM restored from a memory snapshot is confined the same", async () => {
    const opts = { image: "local:busybox", memory: 128, network: "public" } as const;
    await (await CustomSandbox.create(opts)).stop(); // makes the snapshot, unless the cache has it
    const sb = await CustomSandbox.create(opts);
    try {
      expect(sb.timeline?.snapshot?.kind).toBe("restored");
      expect(sb.confinement).toEqual(FULL);
    } finally {
      await sb.stop();
    }
  });

  it('a VM without one: network "none"', async () => {
    const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128, network: "none", snapshot: false });
    try {
      // No supervisor: there is nothing to connect to (the network namespace is empty).
      expect(sb.confinement).toEqual({ ...FULL, seccomp: false, network: "none" });
    } finally {
      await sb.stop();
    }
  });
});

// A program using the built library (dist/), as a user's would: creates a sandbox with the
// confinement in argv[1] and prints, as JSON, what happened and which children it has left.
const SCRIPT = `
  import { readdirSync, readFileSync } from "node:fs";
  import { CustomSandbox } from ${JSON.stringify(DIST)};
  const children = () => readdirSync("/proc/self/task").flatMap((t) => readFileSync(\`/proc/self/task/\${t}/children\`, "utf8").split(" ").filter(Boolean));
  const opts = { image: "local:busybox", memory: 128, snapshot: false, ...(process.argv[1] ? { confinement: process.argv[1] } : {}) };
  let sb;
  try {
    sb = await CustomSandbox.create(opts);
  } catch (e) {
    console.log(JSON.stringify({ error: e.name, code: e.code, missing: e.missing, message: e.message, children: children() }));
    process.exit(0);
  }
  try {
    const out = (await (await sb.command.run("echo", ["hi"])).output()).trim();
    console.log(JSON.stringify({ out, confinement: sb.confinement }));
  } finally {
    await sb.stop();
  }`;

describe.skipIf(!root || !cc)("on a host that allows no namespaces", () => {
  const nounshare = path.join(work, "nounshare");
  // Each run has a TMPDIR of its own: its runtime dirs are the only ones there.
  const run = (confinement?: string) => {
    const tmp = mkdtempSync(path.join(work, "tmp-"));
    if (!existsSync(nounshare)) execFileSync("cc", ["-static", "-O2", "-o", nounshare, NOUNSHARE_C]);
    const r = spawnSync(nounshare, [process.execPath, "--input-type=module", "-e", SCRIPT, confinement ?? ""], {
      encoding: "utf8",
      timeout: 120_000,
      env: { ...process.env, TMPDIR: tmp },
    });
    if (r.status !== 0) throw new Error(`the program failed (${r.status}): ${r.stderr}`);
    return { result: JSON.parse(r.stdout.trim().split("\n").at(-1)!), tmp };
  };
  // What is left of a run: runtime dirs under its TMPDIR, and processes naming that TMPDIR (the
  // helper and QEMU are given paths inside it).
  const leftovers = (tmp: string) => {
    const parent = path.join(tmp, `msb-${process.getuid!()}`);
    const dirs = existsSync(parent) ? readdirSync(parent) : [];
    const procs = readdirSync("/proc")
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, "utf8").includes(tmp);
        } catch {
          return false; // gone meanwhile
        }
      });
    return { dirs, procs };
  };

  it("create() fails closed with ConfinementError naming the namespaces and what to do, and leaves nothing behind", () => {
    const { result, tmp } = run();
    expect(result).toMatchObject({ error: "ConfinementError", code: "MSB_CONFINEMENT", children: [] });
    // The default network is "none": its empty network namespace is missing too.
    expect(result.missing).toEqual(expect.arrayContaining([expect.stringMatching(/^namespaces: .*Operation not permitted/)]));
    expect(result.message).toMatch(/cannot be confined as required on this host \(namespaces: /);
    expect(result.message).toContain("unprivileged_userns_clone");
    expect(result.message).toContain('confinement: "best-effort"');
    expect(leftovers(tmp)).toEqual({ dirs: [], procs: [] });
  });

  it('with confinement "best-effort" it boots and runs, and says what it lacks', () => {
    const { result, tmp } = run("best-effort");
    expect(result.out).toBe("hi");
    expect(result.confinement).toMatchObject({ mode: "best-effort", namespaces: false, noNewPrivs: true });
    expect(result.confinement.missing).toEqual(expect.arrayContaining([expect.stringMatching(/^namespaces: /)]));
    expect(leftovers(tmp)).toEqual({ dirs: [], procs: [] });
  });
});

// `tester` is a user of this project's test machines; elsewhere the case is skipped, and where
// tester cannot reach this checkout (a clone inside a directory only root may enter).
const tester =
  root &&
  spawnSync("id", ["tester"]).status === 0 &&
  spawnSync("runuser", ["--version"]).status === 0 &&
  spawnSync("runuser", ["-u", "tester", "--", "test", "-r", fileURLToPath(PROBE)]).status === 0;

describe.skipIf(!tester)("as a user who is not root", () => {
  it("the probe finds the jail (in a user namespace) and no uid of the VM's own", () => {
    const script = `import(${JSON.stringify(PROBE)}).then(async (m) => console.log(JSON.stringify(await m.probeConfinement())))`;
    const out = execFileSync("runuser", ["-u", "tester", "--", process.execPath, "-e", script], { encoding: "utf8", cwd: "/" });
    expect(JSON.parse(out)).toMatchObject({ namespaces: true, uid: false, noNewPrivs: true, seccomp: true, network: "supervisor", missing: [] });
  });
});
