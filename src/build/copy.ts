// COPY's host side: what a source (a file or a directory tree) holds, its content digest for the
// step cache, and the tar that carries it into the guest. Inside a directory, symlinks are copied
// as links, never followed; a hardlinked file is copied as a file.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { lstat, readdir, readlink, stat } from "node:fs/promises";
import path from "node:path";

import { InvalidArgumentError } from "../errors.js";
import { TarFileWriter } from "../images/tar-write.js";
import { type ContextIgnore, Exclusions } from "./ignore.js";

export interface SourceEntry {
  /** Relative to the source ("" for a file source itself). */
  rel: string;
  abs: string;
  type: "file" | "dir" | "symlink";
  mode: number;
  size: number;
  mtime: number;
  linkname?: string;
}

/**
 * The source's entries, parents before children, in name order. The source itself is followed if a
 * symlink. With `ignore`, what the .dockerignore excludes is left out (a directory it excludes is
 * kept only for what an exception keeps in it); a source it excludes wholly is an error.
 */
export async function walkSource(src: string, ignore?: ContextIgnore): Promise<SourceEntry[]> {
  const top = await stat(src).catch((err: NodeJS.ErrnoException) => {
    throw new InvalidArgumentError(`copy source ${src} cannot be read: ${err.code ?? err.message}`);
  });
  const ex = ignore && new Exclusions(ignore);
  const excluded = () => new InvalidArgumentError(`copy source ${src} is excluded by ${path.join(ignore!.context, ".dockerignore")}`);
  if (ex?.excludes(src) && !(top.isDirectory() && ex.lookInside)) throw excluded();
  if (top.isFile()) return [{ rel: "", abs: src, type: "file", mode: top.mode & 0o7777, size: top.size, mtime: Math.floor(top.mtimeMs / 1000) }];
  if (!top.isDirectory()) throw new InvalidArgumentError(`copy source ${src} is neither a file nor a directory`);
  const walk = async (dir: string, rel: string): Promise<SourceEntry[]> => {
    const out: SourceEntry[] = [];
    for (const name of (await readdir(dir)).sort()) {
      const abs = path.join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(abs);
      const base = { rel: r, abs, mode: st.mode & 0o7777, size: 0, mtime: Math.floor(st.mtimeMs / 1000) };
      const skip = ex?.excludes(abs) ?? false;
      if (st.isDirectory()) {
        if (skip && !ex!.lookInside) continue;
        const inside = await walk(abs, r);
        if (skip && !inside.length) continue;
        out.push({ ...base, type: "dir" });
        for (const e of inside) out.push(e); // not push(...inside): a big tree would overflow the stack
      } else if (skip) continue;
      else if (st.isFile()) out.push({ ...base, type: "file", size: st.size });
      else if (st.isSymbolicLink()) out.push({ ...base, type: "symlink", linkname: await readlink(abs) });
      else throw new InvalidArgumentError(`copy source ${abs} is a socket, fifo or device: only files, directories and symlinks are copied`);
    }
    return out;
  };
  const entries = await walk(src, "");
  if (!entries.length && ex?.excludes(src)) throw excluded();
  return entries;
}

/** A digest of what the entries hold (names, kinds, modes, link targets, bytes), not of when or whose. */
export async function sourceDigest(entries: SourceEntry[]): Promise<string> {
  const h = createHash("sha256");
  for (const e of entries) {
    h.update(`${JSON.stringify([e.rel, e.type, e.mode, e.linkname ?? "", e.size])}\n`);
    if (e.type === "file") for await (const chunk of createReadStream(e.abs)) h.update(chunk as Buffer);
  }
  return `sha256:${h.digest("hex")}`;
}

/**
 * Writes the tar that puts `entries` at `target` (an absolute guest path) into `file`, owned by
 * uid:gid, with `mode` on every entry when given. `withTarget`: a directory source also makes
 * `target` itself (only where it does not exist yet; an existing one is left as it is).
 */
export async function copyTar(
  entries: SourceEntry[],
  target: string,
  owner: { uid: number; gid: number; mode?: number },
  withTarget: boolean,
  file: string,
): Promise<void> {
  const w = new TarFileWriter(file);
  const at = (rel: string) => path.posix.join(target, rel).slice(1);
  const meta = (e: Pick<SourceEntry, "mode" | "mtime">) => ({ uid: owner.uid, gid: owner.gid, mode: owner.mode ?? e.mode, mtime: e.mtime });
  try {
    if (withTarget) await w.add({ path: at(""), type: "dir", ...meta({ mode: 0o755, mtime: Math.floor(Date.now() / 1000) }) });
    for (const e of entries) {
      if (e.type === "file") await w.add({ path: at(e.rel), type: "file", size: e.size, ...meta(e) }, createReadStream(e.abs));
      else if (e.type === "dir") await w.add({ path: at(e.rel), type: "dir", ...meta(e) });
      else await w.add({ path: at(e.rel), type: "symlink", linkname: e.linkname!, ...meta(e), mode: 0o777 });
    }
    await w.end();
  } catch (err) {
    await w.abort();
    throw err;
  }
}
