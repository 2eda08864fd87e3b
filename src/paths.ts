// Where the package keeps things: a per-user cache (kernels, initramfs, images, disks) and
// short-lived runtime directories for each VM (sockets, console logs).
//
// Runtime directories live in one private parent per user, $TMPDIR/msb-<uid>, as vm-XXXXXX. Each
// records its owner (pid and process start time) in a file `owner`, so a directory whose process
// was killed (SIGKILL, a crash) before it could clean up is recognised as stale: the first
// makeRuntimeDir() of every process sweeps those away.
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { debuglog } from "node:util";

import { MicrosandboxError } from "./errors.js";

const debug = debuglog("microsandbox");
const OWNER_FILE = "owner";
const DIR_PREFIX = "vm-";
/** An ownerless runtime dir younger than this may be one another process is creating right now. */
const OWNERLESS_GRACE_MS = 60_000;

/** MSB_CACHE_DIR, else $XDG_CACHE_HOME/microsandbox, else ~/.cache/microsandbox. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MSB_CACHE_DIR) return path.resolve(env.MSB_CACHE_DIR);
  const base = env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(base, "microsandbox");
}

/** The per-user parent of all runtime dirs: $TMPDIR/msb-<uid> (read at each call). */
export function runtimeParent(): string {
  return path.join(os.tmpdir(), `msb-${process.getuid?.() ?? os.userInfo().username}`);
}

/**
 * Who made a runtime dir: its pid, and where known its start time, boot and pid namespace. The
 * `owner` file holds it as JSON.
 */
export interface RuntimeDirOwner {
  pid: number;
  /** Field 22 of /proc/<pid>/stat (clock ticks after boot); Linux only. */
  start?: string;
  /** /proc/sys/kernel/random/boot_id: pids and start times only compare within one boot. */
  boot?: string;
  /** The pid namespace the pid is numbered in (/proc/self/ns/pid). */
  pidns?: string;
}

function readOr<T>(read: () => T): T | undefined {
  try {
    return read();
  } catch {
    return undefined;
  }
}

// /proc/<pid>/stat: "pid (comm) state ppid ...". comm may hold spaces and parentheses, so the
// fields are counted from the last ")": state is field 3, starttime field 22.
function procStat(pid: number): { state: string; start: string } | undefined {
  if (process.platform !== "linux") return undefined;
  const stat = readOr(() => readFileSync(`/proc/${pid}/stat`, "utf8"));
  if (!stat) return undefined;
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return fields.length >= 20 ? { state: fields[0]!, start: fields[19]! } : undefined;
}

const thisBoot = () => (process.platform === "linux" ? readOr(() => readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim()) : undefined);
const thisPidns = () => (process.platform === "linux" ? readOr(() => readlinkSync("/proc/self/ns/pid")) : undefined);

let self: RuntimeDirOwner | undefined;
function currentOwner(): RuntimeDirOwner {
  if (!self) {
    self = { pid: process.pid };
    const start = procStat(process.pid)?.start;
    if (start) self.start = start;
    const boot = thisBoot();
    if (boot) self.boot = boot;
    const pidns = thisPidns();
    if (pidns) self.pidns = pidns;
  }
  return self;
}

/** The owner recorded in a runtime dir, or undefined when it has none (or an unreadable one). */
export function runtimeDirOwner(dir: string): RuntimeDirOwner | undefined {
  const text = readOr(() => readFileSync(path.join(dir, OWNER_FILE), "utf8"));
  if (!text) return undefined;
  const o = readOr(() => JSON.parse(text) as Record<string, unknown>);
  // A pid of 0 or below would name a process group in kill(): only real pids count.
  if (!o || typeof o !== "object" || !Number.isSafeInteger(o.pid) || (o.pid as number) <= 0) return undefined;
  const owner: RuntimeDirOwner = { pid: o.pid as number };
  for (const key of ["start", "boot", "pidns"] as const) {
    const value = o[key];
    if (typeof value === "string") owner[key] = value;
  }
  return owner;
}

// Whether the recorded owner may still be running. Unknowable cases count as alive: a live
// process's dir must never be removed.
function ownerAlive(o: RuntimeDirOwner): boolean {
  const me = currentOwner();
  if (o.boot && me.boot && o.boot !== me.boot) return false; // from before a reboot
  if (o.pidns && me.pidns && o.pidns !== me.pidns) return true; // another pid namespace: its pids mean nothing here
  try {
    process.kill(o.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
  }
  const stat = procStat(o.pid);
  if (stat && (stat.state === "Z" || stat.state === "X")) return false; // dead, not yet reaped
  if (o.start && stat && stat.start !== o.start) return false; // the pid was reused
  return true;
}

function isOwn(o: RuntimeDirOwner | undefined): boolean {
  const me = currentOwner();
  return !!o && o.pid === me.pid && o.start === me.start && o.boot === me.boot && o.pidns === me.pidns;
}

// The parent, created if missing; refused unless it is a real directory of this user. /tmp is
// shared: another user could have put a directory or a symlink there first.
function ensureParent(): string {
  const dir = runtimeParent();
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") {
      throw new MicrosandboxError(`cannot create the runtime directory ${dir}: ${(err as Error).message}`, { cause: err });
    }
  }
  const problem = checkParent(dir);
  if (problem) throw new MicrosandboxError(`refusing to use ${dir} for VM runtime files: ${problem}. Remove it, or set TMPDIR elsewhere.`);
  return dir;
}

// What is wrong with the parent, if anything; one that is ours but too open is closed.
function checkParent(dir: string): string | undefined {
  const st = lstatSync(dir);
  if (st.isSymbolicLink()) return "it is a symbolic link";
  if (!st.isDirectory()) return "it is not a directory";
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) return `it belongs to uid ${st.uid}, not ${uid}`;
  if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  return undefined;
}

let sweptOnce = false;

/**
 * A fresh private directory for one VM, $TMPDIR/msb-<uid>/vm-XXXXXX, with its owner recorded.
 * The first call in a process first sweeps away the dirs of processes that are gone.
 * Kept short: unix socket paths are limited to 107 bytes.
 */
export function makeRuntimeDir(): string {
  const parent = ensureParent();
  if (!sweptOnce) {
    sweptOnce = true;
    sweepRuntimeDirs();
  }
  const dir = mkdtempSync(path.join(parent, DIR_PREFIX));
  try {
    // Written aside and renamed in: a sweep never sees half an owner.
    const tmp = path.join(dir, `.${OWNER_FILE}`);
    writeFileSync(tmp, JSON.stringify(currentOwner()) + "\n", { mode: 0o600 });
    renameSync(tmp, path.join(dir, OWNER_FILE));
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw new MicrosandboxError(`cannot record the owner of ${dir}: ${(err as Error).message}`, { cause: err });
  }
  return dir;
}

function runtimeDirs(): string[] {
  const parent = runtimeParent();
  const st = readOr(() => lstatSync(parent));
  if (!st?.isDirectory() || st.isSymbolicLink()) return [];
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) return [];
  return (readOr(() => readdirSync(parent, { withFileTypes: true })) ?? [])
    .filter((e) => e.isDirectory() && e.name.startsWith(DIR_PREFIX))
    .map((e) => path.join(parent, e.name))
    .sort();
}

/** The runtime dirs this process made and has not removed yet. */
export function ownRuntimeDirs(): string[] {
  return runtimeDirs().filter((dir) => isOwn(runtimeDirOwner(dir)));
}

/**
 * Removes the runtime dirs left by processes that are gone: the owner's pid is not running, or
 * now names another process (a different start time), or the dir has no owner and is older than
 * a minute. Never touches a live process's dir, never throws. Returns the dirs it removed.
 */
export function sweepRuntimeDirs(): string[] {
  const removed: string[] = [];
  try {
    for (const dir of runtimeDirs()) {
      try {
        const owner = runtimeDirOwner(dir);
        if (owner) {
          if (ownerAlive(owner)) continue;
        } else {
          const age = Date.now() - lstatSync(dir).mtimeMs;
          if (age < OWNERLESS_GRACE_MS) continue;
        }
        debug("removing the runtime dir %s of a process that is gone (%s)", dir, owner ? `pid ${owner.pid}` : "no owner");
        rmSync(dir, { recursive: true, force: true });
        removed.push(dir);
      } catch (err) {
        debug("sweeping %s failed: %s", dir, (err as Error).message);
      }
    }
  } catch (err) {
    debug("sweeping runtime dirs failed: %s", (err as Error).message);
  }
  return removed;
}
