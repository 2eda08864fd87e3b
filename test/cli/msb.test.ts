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

// `timeout` (ms) kills msb if it runs on: a command that should only print help must not.
async function msb(args: string[], env: Record<string, string> = {}, timeout = 0) {
  try {
    const { stdout, stderr } = await run(process.execPath, [MSB, ...args], { env: { ...process.env, ...env }, timeout });
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
    expect(r.stderr).toContain('msb: unknown command "frobnicate"');
    expect(r.stderr).toContain("usage: msb");
  });

  it("passes arguments after -- to the guest untouched, even ones that look like msb's options", async () => {
    const r = await msb(["run", "local:busybox", "--memory", "128", "--", "sh", "-c", 'printf "%s\\n" "$@"', "sh", "--help", "-h", "--memory", "1"]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("--help\n-h\n--memory\n1\n");
    expect(r.code).toBe(0);
  });
});

// Help, and refusing bad command lines, before any work: no pull, no boot, no benchmark.
describe("msb help and argument checking", () => {
  const QUICK = 15_000; // ms; a real bench or boot would take longer or print its own output
  // For each command: its synopsis line, an option with its default, and a sign of the work.
  const commands = [
    {
      name: "pull",
      synopsis: "usage: msb pull IMAGE [--insecure]",
      option: /--insecure\s+allow plain HTTP.*\(default: off\)/,
      work: /layers|done|cached/,
      args: ["example.invalid/x:1"],
    },
    { name: "images", synopsis: "usage: msb images", option: /-h, --help\s+show this help/, work: /REFERENCE/, args: [] },
    { name: "rmi", synopsis: "usage: msb rmi IMAGE...", option: /-h, --help\s+show this help/, work: /removed|no image/, args: ["example.invalid/x:1"] },
    { name: "prune", synopsis: "usage: msb prune", option: /-h, --help\s+show this help/, work: /freed \d/, args: [] },
    { name: "doctor", synopsis: "usage: msb doctor [--json]", option: /--json\s+print the report as JSON/, work: /Backends:|"checks"/, args: ["--json"] },
    { name: "bench", synopsis: "usage: msb bench [options]", option: /--runs N\s+.*\(default: 10\)/, work: /run 1:/, args: ["--runs", "1"] },
    {
      name: "run",
      synopsis: "usage: msb run IMAGE [options] [-- CMD ARG...]",
      option: /--memory MIB\s+.*\(default: 512\)/,
      work: /from the guest/,
      args: ["local:busybox", "--", "echo", "from the guest"],
      flagAt: 1,
    },
  ];
  // The command line with `flag` among arguments that would otherwise do the work (before any --).
  const withFlag = (c: (typeof commands)[number], flag: string) => {
    const at = "flagAt" in c ? c.flagAt : c.args.length;
    return [c.name, ...c.args.slice(0, at), flag, ...c.args.slice(at)];
  };

  for (const c of commands) {
    for (const flag of ["--help", "-h"]) {
      it(
        `msb ${c.name} ${flag} prints ${c.name}'s usage and does nothing else`,
        async () => {
          const started = Date.now();
          const r = await msb(withFlag(c, flag), { MSB_CACHE_DIR: cache }, QUICK);
          expect(r.code).toBe(0);
          expect(r.stdout.split("\n")[0]).toBe(c.synopsis);
          expect(r.stdout).toMatch(c.option);
          expect(r.stdout + r.stderr).not.toMatch(c.work);
          expect(r.stderr).toBe("");
          expect(Date.now() - started).toBeLessThan(QUICK);
        },
        QUICK * 2,
      );
    }
  }

  it("documents every option of bench and run with its meaning and default, and none of another command's", async () => {
    const bench = (await msb(["bench", "--help"], {}, QUICK)).stdout;
    for (const o of [
      /--mode sequential\|burst\|staggered .*\(default: sequential\)/,
      /--spacing MS .*\(default: 500\)/,
      /--image IMAGE .*\(default: local:busybox\)/,
      /--memory MIB .*\(default: 256\)/,
      /--backend auto\|krun\|qemu .*\(default: auto\)/,
      /--compare CMD/,
      /--output FILE/,
      /--svg FILE/,
    ]) {
      expect(bench).toMatch(o);
    }
    const run = (await msb(["run", "--help"], {}, QUICK)).stdout;
    for (const o of [/--cpus N .*\(default: 1\)/, /--network none\|public\|all .*\(default: none\)/, /--timeout SECONDS/, /--insecure/]) expect(run).toMatch(o);
    expect(run).not.toMatch(/--runs|--json|--mode/);
    expect((await msb(["pull", "--help"], {}, QUICK)).stdout).not.toMatch(/--runs|--memory|--json/);
  });

  it("msb, msb --help and msb help list every command; msb help COMMAND is that command's --help", async () => {
    for (const args of [[], ["--help"], ["-h"], ["help"]]) {
      const r = await msb(args);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^usage: msb <command>/);
      for (const c of commands) expect(r.stdout).toMatch(new RegExp(`^  ${c.name} `, "m"));
    }
    const help = await msb(["help", "run"]);
    expect(help.code).toBe(0);
    expect(help.stdout.split("\n")[0]).toBe("usage: msb run IMAGE [options] [-- CMD ARG...]");
    expect(help.stdout).toContain("--network none|public|all");
    expect(help.stdout).toBe((await msb(["run", "--help"])).stdout);
    const unknown = await msb(["help", "frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('msb: unknown command "frobnicate"');
  });

  it("refuses an unknown option, naming it, for every command", async () => {
    for (const c of commands) {
      const r = await msb(withFlag(c, "--frobnicate"), { MSB_CACHE_DIR: cache }, QUICK);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`msb: unknown option --frobnicate for "msb ${c.name}"; see msb ${c.name} --help`);
      expect(r.stdout).toBe("");
    }
  });

  it("refuses another command's option", async () => {
    const env = { MSB_CACHE_DIR: cache };
    const pull = await msb(["pull", "--runs", "3", `${registry.host}/cli/app:v1`, "--insecure"], env, QUICK);
    expect(pull.code).toBe(2);
    expect(pull.stderr).toContain('unknown option --runs for "msb pull"');
    expect((await msb(["images"], env)).stdout).not.toContain("cli/app"); // nothing was pulled
    for (const [args, option] of [
      [["doctor", "--mode", "burst"], "--mode"],
      [["bench", "--network", "all"], "--network"],
      [["run", "local:busybox", "--json", "--", "true"], "--json"],
      [["images", "--insecure"], "--insecure"],
    ] as const) {
      const r = await msb([...args], env, QUICK);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`unknown option ${option} for "msb ${args[0]}"`);
    }
  });

  it("refuses option values that are not numbers or not among the choices, naming option and value", async () => {
    const cases: [string[], RegExp][] = [
      [["bench", "--runs", "abc"], /--runs .*"abc"/],
      [["bench", "--runs", "2.5"], /--runs .*whole number.*"2\.5"/],
      [["bench", "--spacing", "soon"], /--spacing .*"soon"/],
      [["bench", "--memory", "lots"], /--memory .*"lots"/],
      [["bench", "--mode", "fast"], /--mode .*sequential, burst, staggered.*"fast"/],
      [["bench", "--backend", "xen"], /--backend .*auto, krun, qemu.*"xen"/],
      [["run", "local:busybox", "--memory", "lots", "--", "true"], /--memory .*"lots"/],
      [["run", "local:busybox", "--cpus", "two", "--", "true"], /--cpus .*"two"/],
      [["run", "local:busybox", "--timeout", "never", "--", "true"], /--timeout .*"never"/],
      [["run", "local:busybox", "--network", "wifi", "--", "true"], /--network .*none, public, all.*"wifi"/],
      [["bench", "--runs"], /--runs needs a value/],
    ];
    for (const [args, message] of cases) {
      const r = await msb(args, {}, QUICK);
      expect(r.code, args.join(" ")).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toMatch(/run 1:/);
      expect(r.stdout).toBe("");
    }
  });

  it("prints the command's usage to stderr when IMAGE is missing", async () => {
    for (const [name, synopsis] of [
      ["pull", "usage: msb pull IMAGE"],
      ["run", "usage: msb run IMAGE"],
      ["rmi", "usage: msb rmi IMAGE..."],
    ]) {
      const r = await msb([name!], { MSB_CACHE_DIR: cache });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`"msb ${name}" needs IMAGE`);
      expect(r.stderr).toContain(synopsis);
      expect(r.stdout).toBe("");
    }
    // A guest command without -- is not silently dropped for the image's default.
    const r = await msb(["run", "local:busybox", "echo", "hi"], {}, QUICK);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unexpected argument "echo".*after --/);
  });
});
