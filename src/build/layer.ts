// A build VM's changes as an OCI layer: the guest's writable overlayfs layer (its upper dir) is
// archived by the guest's own tar, read back as untrusted input (tar.ts), and rewritten by the
// host into a layer the image store applies (layers.ts): overlayfs records a deleted file as a
// 0:0 character device, which becomes a whiteout ".wh.NAME"; a directory removed and made anew is
// marked opaque by an xattr busybox tar cannot carry, so the host finds those directories by
// asking the guest which of the base's entries it still sees, and marks them ".wh..wh..opq".

import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, readdir, rename, rm } from "node:fs/promises";
import path from "node:path";

import type { AgentClient } from "../agent-client/client.js";
import { clean, lstatOrNull } from "../images/rootpath.js";
import { readTar, type TarEntry } from "../images/tar.js";
import { TarFileWriter } from "../images/tar-write.js";
import { guestToFile, MOUNT_POINTS, UPPER } from "../sandbox/guest-io.js";

const WH = ".wh.";
const OPAQUE = ".wh..wh..opq";
const parentOf = (rel: string) => rel.slice(0, Math.max(0, rel.lastIndexOf("/")));
const baseName = (rel: string) => rel.slice(rel.lastIndexOf("/") + 1);

// A path of the guest's archive, relative and clean; null for what a layer leaves out: the root
// itself, the mount points and what is under them, and paths that climb out.
function layerPath(p: string): string | null {
  let rel: string;
  try {
    rel = clean(p);
  } catch {
    return null;
  }
  if (rel === "" || MOUNT_POINTS.has(rel.split("/")[0]!)) return null;
  return rel;
}

const isWhiteout = (e: TarEntry) => e.type === "char" && e.devmajor === 0 && e.devminor === 0;

/** The directory `rel` of the base root as a list of names, if it is a real directory there (symlinks are not followed). */
async function baseDir(root: string, rel: string): Promise<string[] | undefined> {
  let at = root;
  for (const c of rel.split("/")) {
    at = path.join(at, c);
    if (!lstatOrNull(at)?.isDirectory()) return undefined;
  }
  return readdir(at);
}

// The directories of the upper that hide the base's: one the guest does not see a base entry
// of, though the upper neither has nor whited out that entry, is opaque.
async function opaqueDirs(agent: AgentClient, baseRoot: string, dirs: Map<string, Set<string>>): Promise<Set<string>> {
  const opaque = new Set<string>();
  for (const [dir, names] of dirs) {
    const below = await baseDir(baseRoot, dir);
    const hidden = below?.filter((n) => !names.has(n));
    if (!hidden?.length) continue;
    const seen = new Set((await agent.list(`/${dir}`)).map((e) => e.name));
    if (!seen.has(hidden[0]!)) opaque.add(dir);
  }
  return opaque;
}

/**
 * Rewrites `raw`, a tar of an overlayfs upper dir, as a layer into `out`: whiteouts for its 0:0
 * devices, an opaque marker in each directory `opaque` picks from the upper's directories (each
 * with the names it holds).
 */
export async function upperToLayer(
  raw: string,
  out: TarFileWriter,
  opaque: (dirs: Map<string, Set<string>>) => Promise<Set<string>>,
  maxEntrySize: number,
): Promise<void> {
  const tar = () => readTar(createReadStream(raw), { maxEntrySize });
  // First pass: what each directory of the upper holds, whiteouts included.
  const dirs = new Map<string, Set<string>>();
  for await (const e of tar()) {
    const rel = layerPath(e.path);
    if (rel === null) continue;
    if (e.type === "dir" && !dirs.has(rel)) dirs.set(rel, new Set());
    const parent = parentOf(rel);
    if (parent !== "") (dirs.get(parent) ?? dirs.set(parent, new Set()).get(parent)!).add(baseName(rel));
  }
  const opaqueDirs = await opaque(dirs);
  // Second pass: the layer. overlayfs links whiteouts to one inode, so tar may give a later one
  // as a hardlink to the first.
  const whiteouts = new Set<string>();
  const marker = (p: string, mtime: number) => out.add({ path: p, type: "file", mode: 0, uid: 0, gid: 0, mtime, size: 0 });
  for await (const e of tar()) {
    const rel = layerPath(e.path);
    if (rel === null) continue;
    const meta = { mode: e.mode, uid: e.uid, gid: e.gid, mtime: Math.floor(e.mtime) };
    const link = e.type === "hardlink" ? layerPath(e.linkname) : null;
    if (isWhiteout(e) || (link !== null && whiteouts.has(link))) {
      whiteouts.add(rel);
      await marker(path.posix.join(parentOf(rel), WH + baseName(rel)), meta.mtime);
    } else if (e.type === "dir") {
      await out.add({ path: rel, type: "dir", ...meta });
      if (opaqueDirs.has(rel)) await marker(`${rel}/${OPAQUE}`, meta.mtime);
    } else if (e.type === "file") await out.add({ path: rel, type: "file", ...meta, size: e.size }, e.body());
    else if (e.type === "symlink") await out.add({ path: rel, type: "symlink", ...meta, linkname: e.linkname });
    else if (e.type === "hardlink" && link !== null) await out.add({ path: rel, type: "hardlink", ...meta, linkname: link });
    // Devices, fifos and sockets are left out: a sandbox gets its /dev from the guest kernel.
  }
}

/**
 * Archives the guest's changes since boot (over `baseRoot`, the image it booted) into a layer tar
 * in `dir`, named by its digest; returns the digest. `limit` caps the guest's archive in bytes.
 */
export async function archiveChanges(
  agent: AgentClient,
  baseRoot: string,
  dir: string,
  limit: number,
  signal?: AbortSignal,
): Promise<{ digest: string; size: number }> {
  await mkdir(dir, { recursive: true });
  // Names of their own: two builds of one process can archive in the same millisecond.
  const unique = `${process.pid}-${randomBytes(6).toString("hex")}`;
  const raw = path.join(dir, `.upper-${unique}.tar`);
  const out = path.join(dir, `.layer-${unique}.tar`);
  const writer = new TarFileWriter(out);
  try {
    await guestToFile(agent, ["tar", "-C", UPPER, "-cf", "-", "."], raw, limit, signal);
    await upperToLayer(raw, writer, (dirs) => opaqueDirs(agent, baseRoot, dirs), limit);
    const { digest, size } = await writer.end();
    await rename(out, path.join(dir, digest.slice("sha256:".length)));
    return { digest, size };
  } finally {
    await writer.abort();
    await rm(raw, { force: true });
    await rm(out, { force: true });
  }
}
