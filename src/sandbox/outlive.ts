// Sandboxes whose VM outlives the process that started it (the outlive option): the state file
// beside the VM's runtime dir that another process adopts it by (beside, not in: the dir is in
// the VMM's jail, and the file holds secrets and is trusted when read back), those this process
// holds, the orphans such files describe, a claim on one being adopted, and the end of one that
// cannot be adopted. The runtime dir belongs to the VM's helper, so it goes when the VM does (the
// sweep of src/paths.ts), and never before.
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { debuglog } from "node:util";

import { InvalidArgumentError } from "../errors.js";
import type { ImageConfig } from "../images/store.js";
import { alive, ownStamp, type ProcessStamp, parseStamp } from "../liveness.js";
import { besideRuntimeDir, cacheDir, removeRuntimeDir, runtimeDirs } from "../paths.js";
import type { KeptSession, MachineRecord } from "../vm/machine.js";
import type { KeptCommand } from "./commands.js";
import type { SandboxOptions } from "./options.js";

const debug = debuglog("microsandbox");
const FORMAT = 1;
const STATE_FILE = "sandbox.json";
const CLAIM_FILE = "adopting";
// A state file is written by this library; one larger than this is not one of ours.
const MAX_STATE_BYTES = 4 << 20;

/** The runtime dirs of outliving VMs this process holds: not orphans. */
export const attachedDirs = new Set<string>();

/** What Sandbox.adopt() takes an outliving sandbox back by. */
export interface OutliveState {
  format: number;
  /** The class that started it: only the same class adopts it. */
  kind: string;
  options: SandboxOptions & { name: string; image: string };
  imageId: string;
  /** The image's config as it ran: an adopted sandbox needs no image in the store. */
  imageConfig: ImageConfig;
  machine: MachineRecord;
  /** Processes the next host carries on (the interpreter of run()). */
  keep: KeptSession[];
  /** Commands spawned with `keep`, for command.resumed(). */
  commands: KeptCommand[];
  /** The caller's own (Sandbox.setAdoptionData). */
  data?: unknown;
  /** The process holding it; absent once let go of (Sandbox.detach). An orphan's host is gone. */
  host?: ProcessStamp;
  /** The cache it was started from (its image, its logs): only a process on the same cache adopts it. */
  cache: string;
  writtenAt: string;
}

/** A sandbox whose VM runs with no process attached to it, as Sandbox.orphans() lists it. */
export interface OrphanSandbox {
  name: string;
  /** The class that started it, which adopts it ("PythonSandbox", ...). */
  kind: string;
  /** What its last host gave Sandbox.setAdoptionData(). */
  data: unknown;
  /** @internal */
  readonly state: OutliveState;
}

/** Writes `state` beside its VM's runtime dir, private (its options may hold secrets). */
export function writeOutliveState(state: Omit<OutliveState, "format" | "writtenAt" | "cache">): void {
  const dir = state.machine.vm.dir;
  const full: OutliveState = { format: FORMAT, ...state, cache: cacheDir(), writtenAt: new Date().toISOString() };
  const tmp = besideRuntimeDir(dir, `${STATE_FILE}.tmp`);
  writeFileSync(tmp, `${JSON.stringify(full)}\n`, { mode: 0o600 });
  renameSync(tmp, besideRuntimeDir(dir, STATE_FILE));
}

function readState(dir: string): OutliveState | undefined {
  try {
    const text = readFileSync(besideRuntimeDir(dir, STATE_FILE), "utf8");
    if (text.length > MAX_STATE_BYTES) return undefined;
    const s = JSON.parse(text) as OutliveState;
    const sessions = (list: unknown) => Array.isArray(list) && list.every((k) => Number.isInteger(k?.session) && Number.isInteger(k?.pid));
    const ok =
      s?.format === FORMAT &&
      typeof s.kind === "string" &&
      typeof s.options?.name === "string" &&
      s.machine?.vm?.dir === dir &&
      parseStamp(s.machine.vm.helper) !== undefined &&
      Array.isArray(s.imageConfig?.env) &&
      sessions(s.keep) &&
      sessions(s.commands);
    return ok ? s : undefined;
  } catch {
    return undefined;
  }
}

// Who is adopting the VM of `dir`, when that process still runs.
function claimant(dir: string): ProcessStamp | undefined {
  try {
    const stamp = parseStamp(JSON.parse(readFileSync(besideRuntimeDir(dir, CLAIM_FILE), "utf8")));
    return stamp && alive(stamp) ? stamp : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The outliving sandboxes of this user and cache with no process attached: a state file beside
 * their runtime dir, their helper still running, neither held nor being adopted by a live process.
 */
export function listOrphans(): OrphanSandbox[] {
  const found: OrphanSandbox[] = [];
  for (const dir of runtimeDirs()) {
    if (attachedDirs.has(dir)) continue;
    const state = readState(dir);
    if (!state || state.cache !== cacheDir() || !alive(state.machine.vm.helper)) continue;
    if ((state.host && alive(state.host)) || claimant(dir)) continue;
    found.push({ name: state.options.name, kind: state.kind, data: state.data, state });
  }
  return found;
}

/**
 * Claims `orphan` for this process to adopt, so that no other process adopts (or discards) it
 * meanwhile; returns the release. Refused while another live process holds or claims it.
 */
export function claimOrphan(orphan: OrphanSandbox): () => void {
  const { dir } = orphan.state.machine.vm;
  const file = besideRuntimeDir(dir, CLAIM_FILE);
  const write = () => writeFileSync(file, JSON.stringify(ownStamp()), { flag: "wx", mode: 0o600 });
  try {
    write();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    const other = claimant(dir);
    if (other) throw new InvalidArgumentError(`sandbox ${orphan.name} is being adopted by process ${other.pid}: leave it to that one`);
    rmSync(file, { force: true }); // a claimant that is gone
    write();
  }
  const state = readState(dir);
  if (state?.host && alive(state.host)) {
    rmSync(file, { force: true });
    throw new InvalidArgumentError(`sandbox ${orphan.name} is held by process ${state.host.pid}: it is no orphan`);
  }
  return () => rmSync(file, { force: true });
}

/** Ends an orphan's VM (its helper; QEMU dies with it) and removes its runtime dir. */
export function discardOrphan(orphan: OrphanSandbox): void {
  const { dir, helper } = orphan.state.machine.vm;
  if (alive(helper)) {
    try {
      process.kill(helper.pid, "SIGKILL");
    } catch (err) {
      debug("killing the helper of %s: %s", orphan.name, (err as Error).message);
    }
  }
  removeRuntimeDir(dir);
}
