// Named persistent volumes: ext4 disk images in the cache (volumes/NAME.ext4, sparse, made on
// first use), attached to a sandbox's VM as virtio disks and mounted by the agent at their paths
// with nosuid and nodev. They outlive sandboxes and processes. One writer at a time: a sandbox
// holds a lease on each of its volumes while it runs, recorded in volumes/NAME.users (under a
// lock, so processes agree), a writer excluding everyone and readers only writers; leases of
// processes that died are dropped. There is no shared filesystem with the host: host directories
// go in and out with fs.copyIn / fs.copyOut at the volume's path.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

import type { AgentClient } from "../agent-client/client.js";
import { InvalidArgumentError, MicrosandboxError, VolumeBusyError, VolumeMountError } from "../errors.js";
import { Limit } from "../gen/agent_pb.js";
import { findHostTool, missingToolHint } from "../host-tools.js";
import { checkKeys, keysOf } from "../keys.js";
import { alive, ownStamp, type ProcessStamp, parseStamp } from "../liveness.js";
import { withLock } from "../lock.js";
import { cacheDir } from "../paths.js";

export interface VolumeSpec {
  /** 1–63 of [a-z0-9_.-], starting with a letter or digit. */
  name: string;
  /** Absolute guest path it is mounted at. */
  path: string;
  /** Mounted read-only; readers share a volume, a writer has it alone. */
  readOnly?: boolean;
  /** Size when it is made (default 1024); an existing volume keeps its size. */
  sizeMiB?: number;
}

export interface VolumeInfo {
  name: string;
  sizeBytes: number;
  /** Bytes the sparse image takes on the host's disk. */
  diskBytes: number;
  /** Sandboxes using it now. */
  users: { pid: number; sandbox: string; id: string; readOnly: boolean }[];
}

const MAX_VOLUMES: number = Limit.MAX_VOLUMES;
const NAME = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
// Guest paths: plain names only, nothing for the agent or a shell to interpret.
const GUEST_PATH = /^(\/[A-Za-z0-9_.-]+)+$/;
const RESERVED = ["/proc", "/sys", "/dev", "/run", "/tmp"];

const dir = () => path.join(cacheDir(), "volumes");
export const volumeFile = (name: string) => path.join(dir(), `${name}.ext4`);
const usersFile = (name: string) => path.join(dir(), `${name}.users`);

const VOLUME_KEYS = keysOf<VolumeSpec>({ name: true, path: true, readOnly: true, sizeMiB: true });

export function checkVolumes(value: unknown): Required<VolumeSpec>[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) throw new InvalidArgumentError(`volumes must be an array of { name, path, readOnly?, sizeMiB? }, got ${JSON.stringify(value)}`);
  if (value.length > MAX_VOLUMES) throw new InvalidArgumentError(`${value.length} volumes; at most ${MAX_VOLUMES} a sandbox`);
  const out = value.map((v: unknown) => {
    if (typeof v !== "object" || v === null) throw new InvalidArgumentError(`volume ${JSON.stringify(v)} is invalid: give { name, path, readOnly?, sizeMiB? }`);
    checkKeys("volume option", v, VOLUME_KEYS);
    const { name, path: at, readOnly = false, sizeMiB = 1024 } = v as VolumeSpec;
    if (typeof name !== "string" || !NAME.test(name))
      throw new InvalidArgumentError(`volume name ${JSON.stringify(name)} is invalid: 1-63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit`);
    if (
      typeof at !== "string" ||
      at.length > 128 ||
      !GUEST_PATH.test(at) ||
      at.split("/").some((p) => p === "." || p === "..") ||
      RESERVED.some((r) => at === r || at.startsWith(`${r}/`))
    ) {
      throw new InvalidArgumentError(
        `volume path ${JSON.stringify(at)} is invalid: an absolute guest path of at most 128 letters, digits, '_', '.', '-' (not under ${RESERVED.join(", ")})`,
      );
    }
    if (typeof readOnly !== "boolean") throw new InvalidArgumentError(`volume ${name}: readOnly must be true or false`);
    if (!Number.isInteger(sizeMiB) || sizeMiB < 16 || sizeMiB > 1024 * 1024)
      throw new InvalidArgumentError(`volume ${name}: sizeMiB ${JSON.stringify(sizeMiB)} is invalid: whole MiB from 16 to 1048576`);
    return { name, path: at, readOnly, sizeMiB };
  });
  for (const key of ["name", "path"] as const) {
    const seen = new Set<string>();
    for (const v of out) {
      if (seen.has(v[key])) throw new InvalidArgumentError(`two volumes with the ${key} ${JSON.stringify(v[key])}`);
      seen.add(v[key]);
    }
  }
  return out;
}

/** A lease: the process that holds it (src/liveness.ts: a recycled pid holds nothing), and for whom. */
interface User extends ProcessStamp {
  /** The sandbox's name, and its id (names may repeat across processes and time). */
  sandbox: string;
  id: string;
  readOnly: boolean;
}

// The leases whose processes may still run.
function readUsers(name: string): User[] {
  try {
    const users = JSON.parse(readFileSync(usersFile(name), "utf8")) as User[];
    return users.filter((u) => {
      const stamp = parseStamp(u);
      return stamp !== undefined && alive(stamp);
    });
  } catch {
    return [];
  }
}

/** A sandbox's hold on its volumes; release() when it stops. */
export interface VolumeLease {
  release(): Promise<void>;
}

/**
 * Makes missing volumes (mkfs.ext4 on a sparse file) and takes `sandbox`'s lease on each, or
 * throws VolumeBusyError naming who holds one (taking none).
 */
export async function leaseVolumes(specs: Required<VolumeSpec>[], sandbox: { name: string; id: string }): Promise<VolumeLease> {
  const taken: string[] = [];
  const release = async () => {
    for (const name of taken.splice(0)) {
      await withLock(usersFile(name), async () => {
        const rest = readUsers(name).filter((u) => u.id !== sandbox.id);
        writeFileSync(usersFile(name), JSON.stringify(rest));
      });
    }
  };
  try {
    mkdirSync(dir(), { recursive: true });
    for (const v of specs) {
      await withLock(
        usersFile(v.name),
        async () => {
          const users = readUsers(v.name);
          const writer = users.find((u) => !u.readOnly);
          if (writer || (!v.readOnly && users.length)) {
            const by = writer ?? users[0]!;
            throw new VolumeBusyError(
              `volume ${v.name} is in use by sandbox ${by.sandbox} (pid ${by.pid})${by.readOnly ? " read-only" : " for writing"}: ` +
                `${v.readOnly ? "a reader waits for its writer" : "one writer at a time, and not beside readers"}; stop that sandbox first`,
            );
          }
          if (!existsSync(volumeFile(v.name))) await makeVolume(v.name, v.sizeMiB);
          const lease: User = { ...ownStamp(), sandbox: sandbox.name, id: sandbox.id, readOnly: v.readOnly };
          writeFileSync(usersFile(v.name), JSON.stringify([...users, lease]));
          taken.push(v.name);
        },
        60_000,
      );
    }
  } catch (err) {
    await release();
    throw err;
  }
  return { release };
}

// An empty ext4 filesystem in a sparse file, published by rename so a half-made one is never used.
async function makeVolume(name: string, sizeMiB: number): Promise<void> {
  const file = volumeFile(name);
  const part = `${file}.part`;
  const mkfs = findHostTool("mkfs.ext4");
  if (!mkfs) throw new MicrosandboxError(`cannot make volume ${name}: ${missingToolHint("mkfs.ext4", "it formats volumes")}`);
  const h = await open(part, "w", 0o600);
  await h.truncate(sizeMiB * 2 ** 20);
  await h.close();
  try {
    await promisify(execFile)(mkfs, ["-q", "-F", "-L", name.slice(0, 16), "-E", "root_owner=0:0", part]);
  } catch (err) {
    rmSync(part, { force: true });
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    throw new MicrosandboxError(`mkfs.ext4 failed for volume ${name}: ${e.stderr ?? e.message}`, { cause: err });
  }
  renameSync(part, file);
}

/** Makes an empty volume of `sizeMiB` now rather than at its first use; false if it already exists. */
export async function createVolume(name: string, sizeMiB = 1024): Promise<boolean> {
  if (!NAME.test(name))
    throw new InvalidArgumentError(`volume name ${JSON.stringify(name)} is invalid: 1-63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit`);
  mkdirSync(dir(), { recursive: true });
  return withLock(usersFile(name), async () => {
    if (existsSync(volumeFile(name))) return false;
    await makeVolume(name, sizeMiB);
    return true;
  });
}

/** The volumes in the cache, with who uses them now. */
export function listVolumes(): VolumeInfo[] {
  if (!existsSync(dir())) return [];
  return readdirSync(dir())
    .filter((f) => f.endsWith(".ext4"))
    .map((f) => {
      const name = f.slice(0, -".ext4".length);
      const st = statSync(path.join(dir(), f));
      const users = readUsers(name).map((u) => ({ pid: u.pid, sandbox: u.sandbox, id: u.id, readOnly: u.readOnly }));
      return { name, sizeBytes: st.size, diskBytes: st.blocks * 512, users };
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** Removes a volume and its data; VolumeBusyError while a sandbox uses it. */
export async function removeVolume(name: string): Promise<void> {
  if (!NAME.test(name) || !existsSync(volumeFile(name))) throw new InvalidArgumentError(`no volume named ${JSON.stringify(name)} (msb volume ls lists them)`);
  await withLock(usersFile(name), async () => {
    const users = readUsers(name);
    if (users.length) throw new VolumeBusyError(`volume ${name} is in use by sandbox ${users[0]!.sandbox} (pid ${users[0]!.pid}): stop it first`);
    rmSync(volumeFile(name), { force: true });
    rmSync(usersFile(name), { force: true });
  });
}

/** A volume the agent could not mount fails the boot, named (the console says why). */
export async function checkMounted(agent: AgentClient, volumes: Required<VolumeSpec>[]): Promise<void> {
  if (!volumes.length) return;
  // Read right after boot, before any user code; bounded all the same.
  const mounts = (await agent.readFile("/proc/mounts", { length: 1 << 20 }))
    .toString("utf8")
    .split("\n")
    .map((l) => l.split(" "));
  for (const v of volumes) {
    const m = mounts.find((f) => f[1] === v.path);
    const opts = m?.[3]?.split(",") ?? [];
    if (!m || !opts.includes("nosuid") || !opts.includes("nodev")) {
      throw new VolumeMountError(`volume ${v.name} is not mounted at ${v.path} in the guest: see sandbox.logs({ sources: ["console"] })`);
    }
  }
}
