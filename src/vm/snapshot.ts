// Restore-on-create: the first sandbox for a given (image, kernel, initramfs, memory, cpus,
// network, limits, QEMU) boots a template VM whose RAM lives in a file, readies it, and saves
// its device state beside that file; every later one starts from the two in tens of milliseconds
// instead of booting, its RAM a private copy-on-write mapping of the template (N clones do not
// cost N x memory). Snapshots live in the cache under a key of those inputs, are made under a
// lock, published by rename, verified before use, and replaced when a restore from them fails.
import { createHash, randomInt, randomUUID } from "node:crypto";
import { existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { readdir, readFile, rm, stat } from "node:fs/promises";
import path from "node:path";
import { debuglog } from "node:util";

import type { AgentClient } from "../agent-client/client.js";
import { KrunStartError, SnapshotUnsupportedError, VmBootError } from "../errors.js";
import { withLock } from "../lock.js";
import { cacheDir, makeRuntimeDir } from "../paths.js";
import type { Backend, KeptSession, Vm, VmConfig } from "./backend.js";

const debug = debuglog("microsandbox");
const FORMAT = 2;

/** What a snapshot is made of; any change makes another snapshot. */
export interface SnapshotInputs {
  image: string;
  /** The image's ext4 disk (inode, size, mtime): a rebuilt disk differs under the guest's caches. */
  disk: string;
  memory: number;
  cpus: number;
  network: string;
  maxProcesses: number;
  /** What was readied in the template before it was saved. */
  prewarm: string;
  /** The backend's own: kernel, initramfs, boot config, VMM and machine (Backend.snapshotKey). */
  backend: Record<string, string>;
}

interface Meta {
  format: number;
  inputs: SnapshotInputs;
  stateBytes: number;
  stateSha256: string;
  ramBytes: number;
  /** Processes the template kept running for its clones (an interpreter). */
  kept: KeptSession[];
  createdAt: string;
}

/** How a sandbox came to run: restored, a snapshot made for it, or a cold boot and why. */
export interface SnapshotOutcome {
  kind: "restored" | "created" | "cold";
  detail: string;
}

/** The inputs of `config` booted by `backend`, with the files' identities. */
export async function snapshotInputs(backend: Backend, config: VmConfig, image: string, prewarm: string): Promise<SnapshotInputs> {
  const diskPath = await config.rootDisk();
  const d = diskPath ? statSync(diskPath) : undefined;
  return {
    image,
    disk: d ? `${diskPath}:${d.ino}:${d.size}:${d.mtimeMs}` : "",
    memory: config.memory,
    cpus: config.cpus,
    network: config.network,
    maxProcesses: config.maxProcesses,
    prewarm,
    backend: (await backend.snapshotKey?.(config)) ?? {},
  };
}

function snapshotDir(inputs: SnapshotInputs): string {
  const key = createHash("sha256")
    .update(JSON.stringify({ format: FORMAT, ...inputs }))
    .digest("hex")
    .slice(0, 32);
  return path.join(cacheDir(), "snapshots", key);
}

const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

const readMeta = (dir: string) => JSON.parse(readFileSync(path.join(dir, "meta.json"), "utf8")) as Meta;

/** Why the snapshot in `dir` cannot be used for `inputs`, or undefined when it can. */
function snapshotProblem(dir: string, inputs: SnapshotInputs): string | undefined {
  try {
    return problem(dir, inputs);
  } catch (err) {
    return `unreadable (${(err as Error).message})`;
  }
}

function problem(dir: string, inputs: SnapshotInputs): string | undefined {
  const meta = readMeta(dir);
  if (!meta || typeof meta !== "object") return "meta.json holds no object";
  if (!Array.isArray(meta.kept) || !meta.kept.every((k) => Number.isInteger(k?.session) && Number.isInteger(k?.pid)))
    return "meta.json lists no kept processes";
  if (meta.format !== FORMAT || JSON.stringify(meta.inputs) !== JSON.stringify(inputs)) return "made for other inputs";
  const size = (f: string) => (existsSync(path.join(dir, f)) ? statSync(path.join(dir, f)).size : -1);
  if (size("ram") !== meta.ramBytes || meta.ramBytes !== inputs.memory * 1024 * 1024) return `ram is ${size("ram")} bytes, not ${meta.ramBytes}`;
  if (size("state") !== meta.stateBytes) return `state is ${size("state")} bytes, not ${meta.stateBytes}`;
  if (sha256(path.join(dir, "state")) !== meta.stateSha256) return "state does not match its checksum";
  return undefined;
}

// The backend's restore, which every backend with snapshots or copies has.
function restorer(backend: Backend): NonNullable<Backend["restore"]> {
  if (!backend.restore) throw new SnapshotUnsupportedError(`${backend.describe()} cannot restore a saved VM`);
  return backend.restore.bind(backend);
}

/** A fresh identity for a copy of a saved VM. */
export function cloneIdentity(hostname: string) {
  return { generation: randomInt(1, 2 ** 47), hostname, bootId: randomUUID() };
}

// Boots the template with RAM in `dir`/ram (shared: its pages are the snapshot), readies it,
// saves its state beside, and throws the template away.
async function makeSnapshot(
  backend: Backend,
  config: VmConfig,
  inputs: SnapshotInputs,
  dir: string,
  prewarm: (agent: AgentClient) => Promise<KeptSession[]>,
): Promise<void> {
  const parent = path.dirname(dir);
  mkdirSync(parent, { recursive: true });
  // Work of this key left by a process that died: under the key's lock, nobody else's.
  for (const name of readdirSync(parent)) if (name.startsWith(`${path.basename(dir)}.tmp-`)) rmSync(path.join(parent, name), { recursive: true, force: true });
  const tmp = mkdtempSync(`${dir}.tmp-`);
  let vm: Vm | undefined;
  try {
    vm = await backend.boot({ ...config, name: `${config.name}-template`, consoleKeep: undefined }, { file: path.join(tmp, "ram"), share: true });
    const kept = await prewarm(vm.agent);
    await vm.save!(path.join(tmp, "state"));
    vm.kill();
    await vm.exited;
    const state = path.join(tmp, "state");
    const meta: Meta = {
      format: FORMAT,
      inputs,
      stateBytes: statSync(state).size,
      stateSha256: sha256(state),
      ramBytes: statSync(path.join(tmp, "ram")).size,
      kept,
      createdAt: new Date().toISOString(),
    };
    writeFileSync(path.join(tmp, "meta.json"), `${JSON.stringify(meta, null, 2)}\n`);
    // A published snapshot is never changed in place: the old one is renamed aside whole (clones
    // restoring from it hold links to its files) and the new one renamed in.
    const aside = `${tmp}-old`;
    if (existsSync(dir)) renameSync(dir, aside);
    renameSync(tmp, dir);
    rmSync(aside, { recursive: true, force: true });
  } finally {
    await vm?.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
}

/**
 * A running VM for `config`: restored from the snapshot of `inputs`, made first if there is none.
 * A snapshot that fails verification or restore is replaced; when no snapshot can be made or
 * restored the VM boots cold (unless the failure was a VM that did not boot and
 * `coldAfterBootFailure` is false). The outcome says which, and why.
 */
export async function restoreOrBoot(
  backend: Backend,
  config: VmConfig,
  inputs: SnapshotInputs,
  prewarm: (agent: AgentClient) => Promise<KeptSession[]>,
  opts: { coldAfterBootFailure: boolean } = { coldAfterBootFailure: true },
): Promise<{ vm: Vm; outcome: SnapshotOutcome; kept: KeptSession[] }> {
  const dir = snapshotDir(inputs);
  const key = path.basename(dir);
  const restore = async () => {
    // Links pin the files this restore reads, whatever happens to the snapshot meanwhile (QEMU
    // opens the RAM when it starts, the state only later).
    const own = makeRuntimeDir();
    try {
      const meta = readMeta(dir);
      const files = { ram: path.join(own, "ram"), state: path.join(own, "state") };
      for (const f of ["ram", "state"] as const) {
        try {
          linkSync(path.join(dir, f), files[f]);
        } catch {
          files[f] = path.join(dir, f); // another filesystem: read in place
        }
      }
      const vm = await restorer(backend)(config, { ...files, resume: { ...cloneIdentity(config.name), keep: meta.kept.map((k) => k.session) } });
      return { vm, kept: meta.kept, createdAt: meta.createdAt };
    } finally {
      rmSync(own, { recursive: true, force: true });
    }
  };
  const attempt = async (kind: SnapshotOutcome["kind"], detail: string) => ({ ...(await restore()), outcome: { kind, detail } });
  const existed = existsSync(dir);
  let why = existed ? snapshotProblem(dir, inputs) : "no snapshot yet";
  const seen = why ? undefined : readMeta(dir).createdAt;
  if (!why) {
    try {
      return await attempt("restored", `restored from snapshot ${key}`);
    } catch (err) {
      why = `restoring snapshot ${key} failed: ${(err as Error).message.split("\n")[0]}`;
      debug("sandbox %s: %s", config.name, why);
    }
  }
  try {
    mkdirSync(path.dirname(dir), { recursive: true });
    const made = await withLock(dir, async () => {
      // Another process may have made or replaced it while this one waited for the lock.
      const now = snapshotProblem(dir, inputs) ? undefined : readMeta(dir).createdAt;
      if (now !== undefined && now !== seen) return false;
      await makeSnapshot(backend, config, inputs, dir, prewarm);
      return true;
    });
    const detail = made
      ? existed
        ? `${why}: made snapshot ${key} anew`
        : `made snapshot ${key}`
      : `restored from snapshot ${key}, made meanwhile by another process`;
    return await attempt(made ? (existed ? "cold" : "created") : "restored", detail);
  } catch (err) {
    // A VM that did not boot at all (the template, or a restore) says the backend cannot: a caller
    // with a fallback goes there rather than booting cold here.
    if (!opts.coldAfterBootFailure && (err instanceof VmBootError || err instanceof KrunStartError)) throw err;
    // No snapshot to be had: this sandbox boots the ordinary way.
    const reason = `${why}; snapshot ${key} could not be made or restored (${(err as Error).message.split("\n")[0]}): booted cold`;
    debug("sandbox %s: %s", config.name, reason);
    return { vm: await backend.boot(config), kept: [], outcome: { kind: "cold", detail: reason } };
  }
}

/**
 * A copy of a running VM as it is at this instant, started by `backend` with `config`; the
 * original runs on. Sessions listed in `keep` carry on in the copy (its other processes are
 * killed as it starts), for a host that adopts them.
 */
export async function copyVm(vm: Vm, backend: Backend, config: VmConfig, keep: number[] = []): Promise<Vm> {
  const dir = makeRuntimeDir();
  const state = path.join(dir, "state");
  try {
    try {
      await vm.save!(state);
    } finally {
      await vm.proceed!();
    }
    return await restorer(backend)(config, { state, resume: { ...cloneIdentity(config.name), keep } });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Removes the snapshots of images that are gone, unreadable ones, and work in progress left by a
 * process that died more than an hour ago. Returns the bytes freed.
 */
export async function pruneSnapshots(imageIds: Set<string>): Promise<number> {
  const root = path.join(cacheDir(), "snapshots");
  let freed = 0;
  for (const name of await readdir(root).catch(() => [] as string[])) {
    const dir = path.join(root, name);
    if (name.endsWith(".lock")) continue;
    if (name.includes(".tmp-")) {
      const st = await stat(dir).catch(() => undefined);
      if (!st || Date.now() - st.mtimeMs < 3600_000) continue;
    } else {
      const meta = await readFile(path.join(dir, "meta.json"), "utf8").then(
        (t) => JSON.parse(t) as Meta,
        () => undefined,
      );
      if (meta && imageIds.has(meta.inputs.image)) continue;
    }
    await withLock(dir, async () => {
      for (const f of await readdir(dir).catch(() => [] as string[])) freed += ((await stat(path.join(dir, f)).catch(() => undefined))?.blocks ?? 0) * 512;
      await rm(dir, { recursive: true, force: true });
    });
  }
  return freed;
}
