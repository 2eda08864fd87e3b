// Runtime dirs: one private parent per user, an owner file in each VM's dir, and a sweep that
// removes the dirs of processes that are gone (SIGKILL, crash) and nothing else. Each test works
// in a TMPDIR of its own, so neither other test files nor old leftovers change what it sees.
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import { MicrosandboxError } from "../src/errors.js";
import { makeRuntimeDir, ownRuntimeDirs, type RuntimeDirOwner, runtimeDirOwner, runtimeParent, sweepRuntimeDirs } from "../src/paths.js";
import { alive } from "./sandbox/helpers.js";

const linux = process.platform === "linux";
const savedTmpdir = process.env.TMPDIR;
let tmp: string;

beforeEach(() => {
  tmp = mkdtempSync(path.join(tmpdir(), "msb-paths-"));
  process.env.TMPDIR = tmp;
});

afterEach(() => {
  if (savedTmpdir === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = savedTmpdir;
  rmSync(tmp, { recursive: true, force: true });
});

/** A runtime dir as another process would have left it: `owner` is the owner file's content. */
function fakeDir(name: string, owner?: RuntimeDirOwner | string, ageMs = 0): string {
  const dir = path.join(runtimeParent(), `vm-${name}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, "console.log"), "left behind\n");
  if (owner !== undefined) writeFileSync(path.join(dir, "owner"), typeof owner === "string" ? owner : JSON.stringify(owner));
  if (ageMs) {
    const then = new Date(Date.now() - ageMs);
    utimesSync(dir, then, then);
  }
  return dir;
}

/** A pid that was this process's child and is gone (and reaped). */
function deadPid(): number {
  const pid = spawnSync("true").pid;
  expect(alive(pid)).toBe(false);
  return pid;
}

const startTime = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
};

describe("makeRuntimeDir", () => {
  it("makes vm-XXXXXX in a private per-user parent, owner recorded, paths short", () => {
    const dir = makeRuntimeDir();
    expect(path.dirname(dir)).toBe(path.join(tmp, `msb-${process.getuid!()}`));
    expect(path.basename(dir)).toMatch(/^vm-\w{6}$/);
    expect(lstatSync(path.dirname(dir)).mode & 0o777).toBe(0o700);
    expect(lstatSync(dir).mode & 0o777).toBe(0o700);
    const owner = runtimeDirOwner(dir)!;
    expect(owner.pid).toBe(process.pid);
    if (linux) expect(owner.start).toBe(startTime(process.pid));
    expect(ownRuntimeDirs()).toEqual([dir]);
    // With the usual TMPDIR, /tmp/msb-<uid>/vm-XXXXXX/agent.sock is far below the 107-byte limit.
    expect(Buffer.byteLength(path.join("/tmp", path.relative(tmp, dir), "agent.sock"))).toBeLessThan(40);
  });

  it("closes a parent of its own that is too open", () => {
    mkdirSync(runtimeParent(), { mode: 0o755 });
    chmodSync(runtimeParent(), 0o777);
    makeRuntimeDir();
    expect(lstatSync(runtimeParent()).mode & 0o777).toBe(0o700);
  });

  it("refuses a parent that is a symlink or not a directory, and the sweep leaves it alone", () => {
    const elsewhere = mkdtempSync(path.join(tmp, "elsewhere-"));
    mkdirSync(path.join(elsewhere, "vm-old"));
    utimesSync(path.join(elsewhere, "vm-old"), new Date(0), new Date(0));
    symlinkSync(elsewhere, runtimeParent());
    expect(() => makeRuntimeDir()).toThrow(MicrosandboxError);
    expect(() => makeRuntimeDir()).toThrow(/refusing to use .*msb-\d+.*symbolic link/);
    expect(sweepRuntimeDirs()).toEqual([]);
    expect(readdirSync(elsewhere)).toEqual(["vm-old"]);

    rmSync(runtimeParent());
    writeFileSync(runtimeParent(), "");
    expect(() => makeRuntimeDir()).toThrow(/not a directory/);
  });

  it.skipIf(process.getuid?.() !== 0)("refuses a parent that belongs to another user", () => {
    mkdirSync(runtimeParent(), { mode: 0o700 });
    chownSync(runtimeParent(), 65534, 65534);
    expect(() => makeRuntimeDir()).toThrow(/belongs to uid 65534, not 0/);
    expect(sweepRuntimeDirs()).toEqual([]);
  });
});

describe("sweepRuntimeDirs", () => {
  it("removes the dirs of processes that are gone and keeps those of live ones", () => {
    const mine = makeRuntimeDir();
    const me = runtimeDirOwner(mine)!;
    const dead = fakeDir("dead", { ...me, pid: deadPid() });
    const freshOwnerless = fakeDir("fresh");
    const oldOwnerless = fakeDir("old", undefined, 120_000);
    const garbledOld = fakeDir("garbled", '{"pid": 0}', 120_000); // 0 would be a process group: not an owner
    const notMine = path.join(runtimeParent(), "notes");
    writeFileSync(notMine, "");
    const expected = [dead, oldOwnerless, garbledOld];
    let reused: string | undefined;
    let rebooted: string | undefined;
    let parentsLive: string | undefined;
    if (linux) {
      // A live pid whose process started at another time: the pid was reused.
      reused = fakeDir("reused", { ...me, pid: process.ppid, start: "1" });
      parentsLive = fakeDir("parent", { ...me, pid: process.ppid, start: startTime(process.ppid) });
      // This very pid and start time, but before a reboot.
      if (me.boot) rebooted = fakeDir("rebooted", { ...me, boot: "00000000-0000-0000-0000-000000000000" });
      expected.push(reused, ...(rebooted ? [rebooted] : []));
    }
    const otherNamespace = me.pidns ? fakeDir("otherns", { ...me, pid: deadPid(), pidns: "pid:[1]" }) : undefined;

    expect(sweepRuntimeDirs().sort()).toEqual(expected.sort());
    for (const dir of expected) expect(existsSync(dir)).toBe(false);
    // Kept: this process's dir, a live process's, one being made right now, one whose pids mean
    // nothing here, and anything that is not a runtime dir.
    for (const dir of [mine, freshOwnerless, parentsLive, otherNamespace, notMine]) if (dir) expect(existsSync(dir)).toBe(true);
    expect(ownRuntimeDirs()).toEqual([mine]);
    expect(sweepRuntimeDirs()).toEqual([]);
  });

  it("finds nothing to do, and does not throw, without a parent", () => {
    expect(existsSync(runtimeParent())).toBe(false);
    expect(sweepRuntimeDirs()).toEqual([]);
    expect(ownRuntimeDirs()).toEqual([]);
  });
});
