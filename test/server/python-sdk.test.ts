// The Microsandbox Python SDK 0.1.8, unmodified, running its own examples/ against msb server.
// The SDK comes from PyPI, which neither this machine nor CI reaches, and its code is not ours to
// commit: point MSB_PYTHON_SDK at its sdk/python directory (the release's source, e.g.
// `git archive 850bafe sdk/python` of github.com/microsandbox/microsandbox) to run this file.
// Its dependencies are Debian's python3-aiohttp and python3-dotenv.
import { execFile, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { createServer, type RunningServer } from "../../src/index.js";

const SDK = process.env.MSB_PYTHON_SDK;
const PYTHON = "/usr/bin/python3";
const usable = (() => {
  if (!SDK || !existsSync(path.join(SDK, "microsandbox", "base_sandbox.py"))) return false;
  try {
    execFileSync(PYTHON, ["-c", "import aiohttp, dotenv"], { stdio: "ignore" });
    return true;
  } catch {
    throw new Error(`MSB_PYTHON_SDK is set but ${PYTHON} lacks aiohttp or dotenv: apt-get install python3-aiohttp python3-dotenv`);
  }
})();

const KEY = "python-sdk-key";
let server: RunningServer;

beforeAll(async () => {
  if (!usable) return;
  // Port 5555: one of repl.py's examples names the SDK's default URL itself.
  server = await createServer({ port: 5555, apiKeys: [KEY] });
});
afterAll(() => server?.close());

function example(name: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) =>
    execFile(
      PYTHON,
      [path.join(SDK!, "examples", `${name}.py`)],
      { cwd: SDK, env: { ...process.env, PYTHONPATH: SDK, MSB_SERVER_URL: server.url, MSB_API_KEY: KEY }, timeout: 600_000 },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }),
    ),
  );
}

describe.skipIf(!usable)("the Microsandbox Python SDK 0.1.8's examples", () => {
  it("command.py: output, exit codes, a missing program and a timeout as errors, python", async () => {
    const { code, out } = await example("command");
    expect(code, out).toBe(0);
    expect(out).toContain("Output: Hello from sandbox command!");
    expect(out).toMatch(/Exit code: 2\nSuccess: False\nError output:\nls: cannot access '\/nonexistent'/);
    expect(out).toMatch(/Caught exception for nonexistent command: .*cannot execute 'nonexistentcommand'/);
    expect(out).toMatch(/Command timed out as expected: .*ran longer than 2 s/);
    expect(out).toContain("Sandbox still works: Still working!");
    expect(out).toContain("Pipeline output (should be 2): 2");
    expect(out).toContain("Arguments: ['arg1', 'arg2', 'arg3']");
    expect(out).toContain("All examples completed!");
  }, 900_000);

  it("repl.py: state kept between runs, an exception as error output", async () => {
    const { code, out } = await example("repl");
    expect(code, out).toBe(0);
    expect(out).not.toContain("Error running examples");
    expect(out).toContain("Output: Hello, world!");
    expect(out).toMatch(/x = 42\ny = \[0, 1, 4, 9, 16, 25, 36, 49, 64, 81\]/);
    expect(out).toContain("ZeroDivisionError: division by zero");
    expect(out).toMatch(/Hello from Python 3\.\d+/);
  }, 900_000);

  it("metrics.py: CPU, memory and disk of a running sandbox, an error before start", async () => {
    const { code, out } = await example("metrics");
    expect(code, out).toBe(0);
    expect(out).not.toMatch(/Error (in|getting)/);
    expect(out).toMatch(/CPU Usage: \d+(\.\d+)?%/);
    expect(out).toMatch(/Memory Usage: [1-9]\d* MiB/);
    expect(out).toContain("Is Running: True");
    expect(out).toContain("Monitoring complete.");
    expect(out).toContain("Expected error: Sandbox is not started");
  }, 900_000);

  it("node.py: a Node sandbox's output, errors, modules and chained runs", async () => {
    const { code, out } = await example("node");
    expect(code, out).toBe(0);
    expect(out).not.toContain("Error running examples");
    expect(out).toContain("Output: Hello from Node.js!");
    expect(out).toContain("Caught error: undefinedVariable is not defined");
    expect(out).toContain("File content: Hello from Node.js!");
    expect(out).toContain("Sum of numbers: 15");
    expect(out).toContain("All Node.js examples completed!");
  }, 900_000);
});
