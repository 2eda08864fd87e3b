// Where the package keeps things: a per-user cache (kernels, initramfs, images, disks) and
// short-lived runtime directories for each VM (sockets, console logs).
//
// Runtime directories live in one private parent per user, $TMPDIR/msb-<uid>, as vm-XXXXXX. Each
// records its owner (src/liveness.ts: pid, start time, boot, pid namespace) in a file `owner`, so
// a directory whose process was killed (SIGKILL, a crash) before it could clean up is recognised
// as stale: the first makeRuntimeDir() of every process sweeps those away.
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { debuglog } from "node:util";

import { MicrosandboxError } from "./errors.js";
import { alive, isOwn, ownStamp, type ProcessStamp, parseStamp } from "./liveness.js";

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

/** Who made a runtime dir; its `owner` file holds it as JSON. */
export type RuntimeDirOwner = ProcessStamp;

function readOr<T>(read: () => T): T | undefined {
  try {
    return read();
  } catch {
    return undefined;
  }
}

/** The owner recorded in a runtime dir, or undefined when it has none (or an unreadable one). */
export function runtimeDirOwner(dir: string): RuntimeDirOwner | undefined {
  const text = readOr(() => readFileSync(path.join(dir, OWNER_FILE), "utf8"));
  return text ? parseStamp(readOr(() => JSON.parse(text) as unknown)) : undefined;
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
    writeFileSync(tmp, `${JSON.stringify(ownStamp())}\n`, { mode: 0o600 });
    renameSync(tmp, path.join(dir, OWNER_FILE));
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw new MicrosandboxError(`cannot record the owner of ${dir}: ${(err as Error).message}`, { cause: err });
  }
  return dir;
}

/**
 * Hands `dir` to `owner`: a VM that outlives this process (Sandbox option outlive) keeps its
 * runtime dir for as long as its helper runs, not this process.
 */
export function setRuntimeDirOwner(dir: string, owner: RuntimeDirOwner): void {
  const tmp = path.join(dir, `.${OWNER_FILE}`);
  writeFileSync(tmp, `${JSON.stringify(owner)}\n`, { mode: 0o600 });
  renameSync(tmp, path.join(dir, OWNER_FILE));
}

/** Every runtime dir of this user, with its owner, whoever made it. */
export function runtimeDirs(): string[] {
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

/**
 * A file beside the runtime dir `dir`, named `dir.NAME`: outside the dir, so outside the VMM's
 * jail (which holds the dir, read-write): an outliving VM's state and control socket, which its
 * VMM must neither read nor replace. Swept once their dir is gone.
 */
export function besideRuntimeDir(dir: string, name: string): string {
  return `${dir}.${name}`;
}

/** Removes the runtime dir `dir` and the files beside it (never throws). */
export function removeRuntimeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  const base = path.basename(dir);
  for (const name of readOr(() => readdirSync(path.dirname(dir))) ?? []) {
    if (name.startsWith(`${base}.`)) rmSync(path.join(path.dirname(dir), name), { force: true });
  }
}

// Files beside runtime dirs whose dir is gone (a VM's helper killed before it cleaned up).
function sweepBeside(removed: string[]): void {
  const parent = runtimeParent();
  for (const e of readOr(() => readdirSync(parent, { withFileTypes: true })) ?? []) {
    const dot = e.name.indexOf(".");
    if (e.isDirectory() || !e.name.startsWith(DIR_PREFIX) || dot < 0) continue;
    if (readOr(() => lstatSync(path.join(parent, e.name.slice(0, dot))))) continue;
    rmSync(path.join(parent, e.name), { force: true });
    removed.push(path.join(parent, e.name));
  }
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
          if (alive(owner)) continue;
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
    sweepBeside(removed);
  } catch (err) {
    debug("sweeping runtime dirs failed: %s", (err as Error).message);
  }
  return removed;
}
