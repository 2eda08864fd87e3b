// The msb command line, run as a user would: a separate process against a real registry and VM.
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { buildImage, pushImage, startRegistry, type TestRegistry } from "../images/registry-helpers.js";

const MSB = fileURLToPath(new URL("../../dist/cli/msb.js", import.meta.url));
const run = promisify(execFile);
let registry: TestRegistry;
let cache: string;

async function msb(args: string[], env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await run(process.execPath, [MSB, ...args], { env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

beforeAll(async () => {
  registry = await startRegistry();
  await pushImage(registry.url, "cli/app", "v1", buildImage({ layers: [{ "srv/": "", "srv/a.txt": "a\n" }] }));
  cache = mkdtempSync(path.join(tmpdir(), "msb-cli-cache-"));
}, 60_000);

afterAll(async () => {
  await registry?.stop();
  rmSync(cache, { recursive: true, force: true });
});

describe("msb", () => {
  it("pulls, lists and removes images", async () => {
    const env = { MSB_CACHE_DIR: cache };
    const ref = `${registry.host}/cli/app:v1`;
    const pulled = await msb(["pull", ref, "--insecure"], env);
    expect(pulled.code).toBe(0);
    expect(pulled.stdout).toMatch(new RegExp(`^${ref.replace(/[.:/]/g, "\\$&")} [0-9a-f]{12}\\n$`));
    expect(pulled.stderr).toMatch(/done|cached/); // progress lines when stderr is not a terminal
    const listed = await msb(["images"], env);
    expect(listed.stdout).toContain(ref);
    expect(listed.stdout).toMatch(/\d+\.\d MB/);
    expect((await msb(["rmi", ref], env)).stdout).toBe(`removed ${ref}\n`);
    expect((await msb(["images"], env)).stdout).not.toContain(ref);
    expect((await msb(["rmi", ref], env)).code).toBe(1);
  });

  it("refuses plain HTTP without --insecure, with advice", async () => {
    const r = await msb(["pull", `${registry.host}/cli/app:v1`], { MSB_CACHE_DIR: cache });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/insecure/i);
  });

  it("runs a command in a sandbox and passes its output and exit code through", async () => {
    const r = await msb(["run", "local:busybox", "--memory", "128", "--", "sh", "-c", "echo from the guest; echo oops >&2; exit 3"]);
    expect(r.stdout).toBe("from the guest\n");
    expect(r.stderr).toBe("oops\n");
    expect(r.code).toBe(3);
  });

  it("prints usage for unknown commands", async () => {
    const r = await msb(["frobnicate"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("usage: msb");
  });
});
