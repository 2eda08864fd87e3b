// An install from prebuilds (no build/ directory, as a user of a published package has it) finds
// the VM helper beside the prebuilt addon and boots a VM with it.
import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const run = promisify(execFile);
let pkg: string;

beforeAll(() => {
  pkg = mkdtempSync(path.join(tmpdir(), "msb-prebuilt-"));
  for (const part of ["package.json", "dist", "proto", "guest", "build-guest"]) cpSync(path.join(ROOT, part), path.join(pkg, part), { recursive: true });
  symlinkSync(path.join(ROOT, "node_modules"), path.join(pkg, "node_modules"));
  // What `npm run prebuild` leaves: prebuildify's N-API addon, and the helper beside it.
  const prebuilds = path.join(pkg, "prebuilds", `${process.platform}-${process.arch}`);
  mkdirSync(prebuilds, { recursive: true });
  cpSync(path.join(ROOT, "build/Release/microsandbox.node"), path.join(prebuilds, "microsandbox.node"));
  for (const helper of ["msb-vmm", "msb-netpolicy.so", "msb-openfd.so"]) {
    if (existsSync(path.join(ROOT, "build/Release", helper))) cpSync(path.join(ROOT, "build/Release", helper), path.join(prebuilds, helper));
  }
});

afterAll(() => rmSync(pkg, { recursive: true, force: true }));

describe("an install from prebuilds", () => {
  it("has no build/ and boots a VM with the helper beside the prebuilt addon", async () => {
    expect(readdirSync(pkg)).not.toContain("build");
    const script = `
      import { CustomSandbox } from ${JSON.stringify(path.join(pkg, "dist/index.js"))};
      import { vmmHelperPath } from ${JSON.stringify(path.join(pkg, "dist/native.js"))};
      const sb = await CustomSandbox.create({ image: "local:busybox", memory: 128 });
      try {
        const r = await sb.command.run("echo", ["booted from a prebuild"]);
        console.log(JSON.stringify({ helper: vmmHelperPath(), output: await r.output(), backend: sb.backend }));
      } finally {
        await sb.stop();
      }`;
    const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], { timeout: 120_000 });
    const r = JSON.parse(stdout);
    expect(r.helper).toBe(path.join(pkg, "prebuilds", `${process.platform}-${process.arch}`, "msb-vmm"));
    expect(r.output).toBe("booted from a prebuild");
    expect(r.backend).toMatch(/^(qemu|krun)/);
  });
});
