// msb-vmm's network supervisor against a stand-in for a QEMU the guest took over: a static
// program (fixtures/rawnet.c) that reaches the network through raw system calls, which no
// preloaded library sees. It runs as the PROGRAM of `msb-vmm exec` in the small internet of
// test/sandbox/netns/harness.ts, held to the rules "public" gives; the host reads the helper's
// control channel (VmmControl) as QemuBackend does.
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { vmmHelperPath } from "../../src/native.js";
import { policyRules } from "../../src/vm/netpolicy.js";
import { VmmControl } from "../../src/vm/vmm-control.js";
import { buildInternet, HOST, METADATA, PRIVATE, PUBLIC, removeInternet, usable } from "../sandbox/netns/harness.mjs";

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures");
const cc = spawnSync("cc", ["--version"]).status === 0;
const work = mkdtempSync(path.join(os.tmpdir(), "msb-sup-"));
const PUBLIC_RULES = policyRules("public", [PUBLIC])!;

// Compiles a fixture statically (no library of the host is needed in the jail).
function build(name: string): string {
  const out = path.join(work, name);
  execFileSync("cc", ["-static", "-O2", "-o", out, path.join(fixtures, `${name}.c`)]);
  return out;
}

let rawnet = "";
let nounshare = "";

beforeAll(async () => {
  if (!usable || !cc) return;
  rawnet = build("rawnet");
  nounshare = build("nounshare");
  await buildInternet();
}, 60_000);

afterAll(() => {
  if (usable && cc) removeInternet();
  rmSync(work, { recursive: true, force: true });
});

interface Run {
  child: ChildProcess;
  control: VmmControl;
  lines: string[];
  stderr: string[];
  exited: Promise<number | null>;
  line(re: RegExp): Promise<string>;
}

// `msb-vmm exec` with `opts` (a jail of its own, the control channel on fd 3) running `program`
// (copied into the jail's runtime dir) with `args`, in the host's namespace; `prefix` runs first.
function run(opts: string[], program: string, args: string[], prefix: string[] = []): Run {
  const dir = mkdtempSync(path.join(work, "run-"));
  const inJail = path.join(dir, path.basename(program));
  copyFileSync(program, inJail);
  const argv = [
    "netns",
    "exec",
    HOST,
    ...prefix,
    vmmHelperPath(),
    "exec",
    String(process.pid),
    "--jail",
    dir,
    "--control",
    "3",
    ...opts,
    "--",
    inJail,
    ...args,
  ];
  const child = spawn("ip", argv, { stdio: ["ignore", "pipe", "pipe", "pipe"] });
  const lines: string[] = [];
  const stderr: string[] = [];
  const waiters: (() => void)[] = [];
  child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    lines.push(...d.split("\n").filter(Boolean));
    for (const w of waiters.splice(0)) w();
  });
  child.stderr!.setEncoding("utf8").on("data", (d: string) => stderr.push(d));
  const exited = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)));
  const line = async (re: RegExp) => {
    for (;;) {
      const hit = lines.find((l) => re.test(l));
      if (hit) return hit;
      if (child.exitCode !== null) throw new Error(`exited without ${re}: ${lines.join(" | ")} ${stderr.join("")}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 200);
      });
    }
  };
  return { child, control: new VmmControl(child.stdio[3] as Socket), lines, stderr, exited, line };
}

/** Whether `pid` runs (a zombie does not: its parent is gone, and nobody may reap it soon). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Waits up to 3 s for `pid` to stop running; whether it did. */
async function ends(pid: number): Promise<boolean> {
  for (let i = 0; i < 150 && running(pid); i++) await new Promise((r) => setTimeout(r, 20));
  return !running(pid);
}

// The creator that goes away: a node process that starts `msb-vmm exec` as a sandbox's creator
// does (its own pid as PARENT_PID, detached: a session of its own), waits for the stand-in's first
// line in `log`, prints the pids of msb-vmm and of the stand-in (msb-vmm's child) and exits.
const CREATOR = `
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const [log, ...argv] = process.argv.slice(1);
const out = fs.openSync(log, "a");
const vmm = spawn("ip", argv.map((a) => (a === "PARENT" ? String(process.pid) : a)), { detached: true, stdio: ["ignore", out, out] });
vmm.on("exit", (code) => { console.error("msb-vmm exited " + code + ": " + fs.readFileSync(log, "utf8")); process.exit(1); });
const children = () => fs.readFileSync("/proc/" + vmm.pid + "/task/" + vmm.pid + "/children", "utf8").trim();
setInterval(() => { if (fs.readFileSync(log, "utf8").includes(" ok")) { console.log(vmm.pid, children()); process.exit(0); } }, 20);
`;

/** Runs CREATOR for `msb-vmm exec` with `opts`, the stand-in holding a connection open; the pids. */
async function startThroughCreator(opts: string[]): Promise<{ vmm: number; standIn: number }> {
  const dir = mkdtempSync(path.join(work, "creator-"));
  const inJail = path.join(dir, "rawnet");
  copyFileSync(rawnet, inJail);
  const helper = [vmmHelperPath(), "exec", "PARENT", ...opts, "--jail", dir, "--net-policy", PUBLIC_RULES];
  const args = ["netns", "exec", HOST, ...helper, "--", inJail, `hold:${PUBLIC}:80`];
  const creator = spawn(process.execPath, ["-e", CREATOR, path.join(dir, "log"), ...args], { stdio: ["ignore", "pipe", "inherit"] });
  let printed = "";
  creator.stdout!.on("data", (d: Buffer) => (printed += d));
  const [code] = await once(creator, "exit");
  expect(code).toBe(0);
  const [vmm, standIn] = printed.trim().split(" ").map(Number);
  expect(vmm).toBeGreaterThan(0);
  expect(standIn).toBeGreaterThan(0);
  return { vmm: vmm!, standIn: standIn! };
}

const result = (lines: string[], target: string) => lines.find((l) => l.startsWith(`${target} `))?.slice(target.length + 1);

describe.skipIf(!usable || !cc)("the network supervisor holds a hijacked VMM's raw system calls", () => {
  it("refuses the host, private addresses and cloud metadata, admits the public internet, and counts each refusal", async () => {
    const targets = [
      "tcp:127.0.0.1:8080",
      "tcp:10.0.2.2:8080",
      `tcp:${METADATA}:80`,
      `tcp:${PRIVATE}:80`,
      `tcp:${PUBLIC}:80`,
      `udp:${PRIVATE}:53`,
      `udp:${PUBLIC}:9`,
      "uring",
      "packet",
      "netlink",
      "raw",
      "seqpacket",
      "ipoptions",
      "rthdr",
      "unspec:127.0.0.1:8080",
      `cmsg:${PUBLIC}:9`,
    ];
    const r = run(["--net-policy", PUBLIC_RULES], rawnet, targets);
    const confinement = await r.control.confinement;
    expect(await r.exited).toBe(0);
    expect(confinement).toMatchObject({ namespaces: true, noNewPrivs: true, seccomp: true, network: "supervisor", missing: [] });
    expect(confinement.vmmPid).not.toBe(r.child.pid);
    for (const t of targets.slice(0, 4)) expect(result(r.lines, t)).toBe("ECONNREFUSED");
    expect(result(r.lines, `tcp:${PUBLIC}:80`)).toBe("ok");
    expect(result(r.lines, `udp:${PRIVATE}:53`)).toBe("EACCES");
    expect(result(r.lines, `udp:${PUBLIC}:9`)).toBe("ok");
    expect(result(r.lines, "uring")).toBe("ENOSYS");
    expect(result(r.lines, "packet")).toBe("EAFNOSUPPORT");
    expect(result(r.lines, "netlink")).toBe("EAFNOSUPPORT");
    expect(result(r.lines, "raw")).toBe("EPROTONOSUPPORT");
    expect(result(r.lines, "seqpacket")).toBe("EPROTONOSUPPORT");
    expect(result(r.lines, "ipoptions")).toBe("EPERM");
    expect(result(r.lines, "rthdr")).toBe("EPERM");
    expect(result(r.lines, "unspec:127.0.0.1:8080")).toBe("EAFNOSUPPORT");
    expect(result(r.lines, `cmsg:${PUBLIC}:9`)).toBe("EPERM");
    expect(r.control.refusals()).toBe(5);
  });

  it("without the supervisor, the same program reaches the host's loopback (what the supervisor prevents)", async () => {
    const r = run([], rawnet, ["tcp:127.0.0.1:8080", "uring"]);
    const confinement = await r.control.confinement;
    expect(await r.exited).toBe(0);
    expect(confinement).toMatchObject({ namespaces: true, seccomp: false, network: "" });
    expect(result(r.lines, "tcp:127.0.0.1:8080")).toBe("ok");
  });

  it("a new policy shuts the connections it refuses and refuses new ones", async () => {
    const target = `${PUBLIC}:80`;
    const r = run(["--net-policy", PUBLIC_RULES], rawnet, [`hold:${target}`, `tcp:${target}`]);
    await r.line(new RegExp(`^hold:${target} ok`));
    const applied = await r.control.setPolicy(`-${PUBLIC}/32 ${PUBLIC_RULES}`);
    expect(applied).toMatchObject({ generation: 1, closed: 1, error: "" });
    await r.line(new RegExp(`^hold:${target} closed`));
    expect(await r.exited).toBe(0);
    expect(result(r.lines, `tcp:${target}`)).toBe("ECONNREFUSED");
    // A malformed policy is refused and the one in force stays.
    const r2 = run(["--net-policy", PUBLIC_RULES], rawnet, [`hold:${target}`]);
    await r2.line(/ok/);
    const bad = await r2.control.setPolicy("+999.0.0.0/8");
    expect(bad.error).toMatch(/malformed/);
    expect(bad.closed).toBe(0);
    r2.child.kill("SIGTERM");
    expect(await r2.exited).toBe(null); // QEMU's signal, raised on msb-vmm itself
  });

  it("with --outlive, msb-vmm and its VMM outlive their creator; a SIGKILL of msb-vmm still ends the VMM", async () => {
    const { vmm, standIn } = await startThroughCreator(["--outlive"]);
    try {
      await new Promise((r) => setTimeout(r, 300)); // the creator is gone: a parent-death signal would have come
      expect([running(vmm), running(standIn)]).toEqual([true, true]);
      process.kill(vmm, "SIGKILL");
      expect(await ends(standIn)).toBe(true);
    } finally {
      for (const pid of [vmm, standIn]) if (running(pid)) process.kill(pid, "SIGKILL");
    }
  });

  it("without --outlive, the creator's death ends msb-vmm and its VMM", async () => {
    const { vmm, standIn } = await startThroughCreator([]);
    try {
      expect(await ends(vmm)).toBe(true);
      expect(await ends(standIn)).toBe(true);
    } finally {
      for (const pid of [vmm, standIn]) if (running(pid)) process.kill(pid, "SIGKILL");
    }
  });

  it("with --control-listen, a host that connects later takes the control channel over", async () => {
    const target = `${PUBLIC}:80`;
    const sock = path.join(mkdtempSync(path.join(work, "ctl-")), "control.sock");
    const r = run(["--net-policy", PUBLIC_RULES, "--control-listen", sock], rawnet, [`hold:${target}`, `tcp:${target}`]);
    expect((await r.control.confinement).seccomp).toBe(true); // the first host's channel, as without
    await r.line(new RegExp(`^hold:${target} ok`));
    expect(statSync(sock).mode & 0o777).toBe(0o600);
    const first = r.child.stdio[3] as Socket;
    const firstClosed = once(first, "close");
    const second = createConnection(sock);
    await once(second, "connect");
    await firstClosed; // replaced: the first host's channel is closed
    const applied = await new VmmControl(second).setPolicy(`-${PUBLIC}/32 ${PUBLIC_RULES}`);
    expect(applied).toMatchObject({ generation: 1, closed: 1, error: "" });
    await r.line(new RegExp(`^hold:${target} closed`));
    expect(await r.exited).toBe(0);
    expect(result(r.lines, `tcp:${target}`)).toBe("ECONNREFUSED");
    expect(existsSync(sock)).toBe(false); // the VM is gone: nothing left to connect to
  });

  it("--control-listen needs --net-policy (only a supervisor stays to serve it)", () => {
    const r = spawnSync(vmmHelperPath(), ["exec", String(process.pid), "--control-listen", path.join(work, "x.sock"), "--", "/bin/true"]);
    expect(r.status).toBe(2);
    expect(r.stderr.toString()).toMatch(/usage: .*--control-listen PATH/s);
  });

  it("fails closed when the host allows no namespaces, unless confinement is best-effort", async () => {
    const required = run(["--net-policy", PUBLIC_RULES], rawnet, ["uring"], [nounshare]);
    const c = await required.control.confinement;
    expect(await required.exited).toBe(1);
    expect(c.namespaces).toBe(false);
    expect(c.missing.join("\n")).toMatch(/^namespaces: /m);
    expect(required.lines).toEqual([]);
    const relaxed = run(["--confinement", "best-effort"], "/bin/echo", ["ran"], [nounshare]);
    const c2 = await relaxed.control.confinement;
    expect(await relaxed.exited).toBe(0);
    expect(c2.namespaces).toBe(false);
    expect(relaxed.lines).toEqual(["ran"]);
  });
});
