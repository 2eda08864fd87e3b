// Applies one OCI image layer (an untrusted, decompressed tar stream) onto a directory with the
// image-spec's semantics (replacement, whiteouts, opaque dirs), never touching anything outside it.
import { execFile } from "node:child_process";
import fs, { constants, type Stats } from "node:fs";
import { promisify } from "node:util";

import { LayerError, TarError } from "../errors.js";
import { clean, lstatOrNull, Refusal, RootPath } from "./rootpath.js";
import { readTar, type TarEntry } from "./tar.js";

const run = promisify(execFile);

/**
 * Counts per entry kind. devicesSkipped: char/block devices, never created (the guest's devtmpfs
 * provides /dev). ownershipSkipped: uid/gid not applied because this process is not root.
 * bytes: regular-file content written. tarBytes: tar stream read, what `maxBytes` caps.
 */
export interface LayerStats {
  entries: number;
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  fifos: number;
  whiteouts: number;
  devicesSkipped: number;
  ownershipSkipped: number;
  bytes: number;
  tarBytes: number;
}

export interface ApplyLayerOptions {
  layer: string; // digest or name, for messages
  maxBytes?: number; // cap on tar bytes read, the decompression-bomb guard; default 32 GiB
  maxEntries?: number; // default 2,000,000
}

const QUEUED_FILE_MAX = 1 << 20; // larger files are written in line, never held in memory
const QUEUED_FILES = 32;
const WH = ".wh.";
const OPAQUE = ".wh..wh..opq";

const show = (p: string) => JSON.stringify(p.length > 200 ? `${p.slice(0, 200)}…` : p);
const join = (dir: string, name: string) => (dir ? `${dir}/${name}` : name);
const parentOf = (rel: string) => rel.slice(0, Math.max(0, rel.lastIndexOf("/")));

const kind = (st: Stats) => (st.isDirectory() ? "a directory" : st.isSymbolicLink() ? "a symlink" : "not a regular file");

// The fs calls below (and in rootpath.ts) are synchronous on purpose: each is microseconds on a local
// disk, and a layer's tens of thousands of entries spend far longer hopping through the libuv
// threadpool. applyLayer yields to the event loop every 10 ms or so, so it never hogs it for long.
class Applier {
  readonly stats: LayerStats = {
    entries: 0,
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    fifos: 0,
    whiteouts: 0,
    devicesSkipped: 0,
    ownershipSkipped: 0,
    bytes: 0,
    tarBytes: 0,
  };
  // What this layer put in place (and their ancestors): an opaque marker or whiteout spares them.
  private readonly kept = new Set<string>();
  private readonly keptAncestors = new Set<string>();
  // Parent path as written -> its resolved, existing, symlink-free dir. Only removals can make an
  // entry stale (creations never touch an existing dir chain), so every removal empties it.
  private readonly dirCache = new Map<string, string>();
  // Directory modes and mtimes are set last: later entries still write into them.
  private readonly dirMeta = new Map<string, { mode: number; mtime: number }>();
  // New small files are created on the thread pool, several at once: creating files is the
  // kernel's slowest step here, and it overlaps. Anything else waits until they are all done, so
  // only fresh files under already-resolved parents are ever in flight.
  private readonly inflight = new Map<string, Promise<void>>();
  // Files whose path was taken (by a lower layer's entry): replaced in line when the queue drains.
  private readonly taken: { at: string; e: TarEntry; data: Buffer }[] = [];
  private failure: { entry: string; err: unknown } | undefined;

  private readonly rootPath: RootPath;

  constructor(
    private readonly root: string,
    private readonly asRoot: boolean,
  ) {
    this.rootPath = new RootPath(root);
  }

  /** Waits for every file in flight; rethrows the first failure (see `failed` for its entry). */
  async drain(): Promise<void> {
    await Promise.all(this.inflight.values());
    this.inflight.clear();
    if (this.failure) throw this.failure.err;
    for (const { at, e, data } of this.taken.splice(0)) await this.file(at, e, data);
  }

  /** Waits for every file in flight, ignoring failures. */
  async settle(): Promise<void> {
    await Promise.allSettled(this.inflight.values());
  }

  get failed(): { entry: string; err: unknown } | undefined {
    return this.failure;
  }

  private host = (rel: string) => this.rootPath.host(rel);

  /** Creates missing directories along a resolved path (which holds no symlinks). */
  private makeDirs(rel: string): void {
    let at = "";
    for (const c of rel ? rel.split("/") : []) {
      at = join(at, c);
      const st = lstatOrNull(this.host(at));
      if (!st) fs.mkdirSync(this.host(at), 0o755);
      else if (!st.isDirectory()) throw new Refusal(`needs ${show(at)} to be a directory, but it is not`);
    }
  }

  private keep(rel: string): void {
    this.kept.add(rel);
    for (let p = rel; p !== ""; ) {
      p = parentOf(p);
      if (this.keptAncestors.has(p)) break;
      this.keptAncestors.add(p);
    }
  }

  /** Removes rel and everything below it except what this layer put there. Never follows symlinks. */
  private prune(rel: string): void {
    const st = lstatOrNull(this.host(rel));
    if (!st) return;
    if (this.kept.has(rel) || this.keptAncestors.has(rel)) {
      if (st.isDirectory()) for (const child of fs.readdirSync(this.host(rel))) this.prune(join(rel, child));
      return;
    }
    this.dirCache.clear();
    fs.rmSync(this.host(rel), { recursive: true, force: true });
  }

  /** Clears the final component for a new entry; true when an existing directory stays (dir over dir). */
  private clear(rel: string, forDir: boolean): boolean {
    const st = lstatOrNull(this.host(rel));
    if (!st) return false;
    if (st.isDirectory() && forDir) return true;
    if (!st.isFile()) this.dirCache.clear();
    if (st.isDirectory()) fs.rmSync(this.host(rel), { recursive: true, force: true });
    else fs.unlinkSync(this.host(rel)); // a symlink here is replaced, never followed
    return false;
  }

  private own(set: () => void): void {
    if (this.asRoot) set();
    else this.stats.ownershipSkipped++;
  }

  async apply(e: TarEntry): Promise<void> {
    if (e.type !== "file") await this.drain();
    const rel = clean(e.path);
    if (rel === "") {
      if (e.type !== "dir") throw new Refusal("would replace the image root with a non-directory");
      return this.dir("", e);
    }
    const name = rel.slice(rel.lastIndexOf("/") + 1);
    const parents = parentOf(rel).split("/");
    // AUFS metadata (.wh..wh.plnk/ and the like) means nothing outside AUFS.
    if (name.startsWith(WH + WH) && name !== OPAQUE) return;
    if (parents.some((c) => c.startsWith(WH + WH))) return;
    if (parents.some((c) => c.startsWith(WH))) throw new Refusal("has a whiteout as a parent directory");
    if (name.startsWith(WH)) return this.whiteout(parentOf(rel), name);
    if (e.type === "char" || e.type === "block") {
      this.stats.devicesSkipped++;
      return;
    }
    if (e.type === "sparse") throw new Refusal("is a GNU sparse file, which is not supported");
    if (e.type === "other") throw new Refusal(`has the unsupported tar typeflag ${JSON.stringify(e.typeflag)}`);

    // The final component is never followed: whatever is there gets replaced.
    let dir = this.dirCache.get(parentOf(rel));
    if (dir === undefined) {
      dir = this.rootPath.resolveDir(parentOf(rel));
      this.makeDirs(dir);
      if (this.dirCache.size > 4096) this.dirCache.clear();
      this.dirCache.set(parentOf(rel), dir);
    }
    const at = join(dir, name);
    if (e.type === "dir") this.dir(at, e);
    else if (e.type === "file") await this.fileOrQueue(at, e);
    else if (e.type === "symlink") this.symlink(at, e);
    else if (e.type === "hardlink") this.hardlink(at, e);
    else await this.fifo(at, e);
    this.keep(at);
  }

  private whiteout(parent: string, name: string): void {
    this.stats.whiteouts++;
    const dir = this.rootPath.resolveDir(parent);
    if (name === OPAQUE) {
      const st = lstatOrNull(this.host(dir));
      if (st?.isDirectory()) for (const child of fs.readdirSync(this.host(dir))) this.prune(join(dir, child));
      return;
    }
    const victim = name.slice(WH.length);
    if (victim === "" || victim === "." || victim === "..") throw new Refusal("is a whiteout of an invalid name");
    this.prune(join(dir, victim));
  }

  private dir(at: string, e: TarEntry): void {
    if (!this.clear(at, true)) fs.mkdirSync(this.host(at), 0o700);
    this.own(() => fs.lchownSync(this.host(at), e.uid, e.gid));
    this.dirMeta.set(at, { mode: e.mode, mtime: e.mtime });
    this.stats.dirs++;
  }

  // A small file goes to the thread pool; a large one, or a second entry for a path in flight,
  // is written in line. (No lstat first: beside creates in flight it waits on the directory lock.)
  private async fileOrQueue(at: string, e: TarEntry): Promise<void> {
    if (e.size > QUEUED_FILE_MAX || this.inflight.has(at)) {
      await this.drain();
      return this.file(at, e);
    }
    const chunks: Uint8Array[] = [];
    for await (const chunk of e.body()) chunks.push(chunk);
    const data = Buffer.concat(chunks);
    this.stats.files++;
    this.stats.bytes += data.length;
    const entry = e.path;
    const create = this.create(at, e, data).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") this.taken.push({ at, e, data });
      else this.failure ??= { entry, err };
    });
    this.inflight.set(at, create);
    if (this.inflight.size >= QUEUED_FILES) await this.drain();
  }

  private async create(at: string, e: TarEntry, data: Buffer): Promise<void> {
    const h = await fs.promises.open(this.host(at), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      for (let off = 0; off < data.length; ) off += (await h.write(data, off)).bytesWritten;
      if (this.asRoot) await h.chown(e.uid, e.gid);
      else this.stats.ownershipSkipped++;
      await h.chmod(e.mode); // after chown, which clears setuid/setgid
      await h.utimes(e.mtime, e.mtime);
    } finally {
      await h.close();
    }
  }

  /** Writes a file in line: the entry's body, or `data` already read (and counted) for it. */
  private async file(at: string, e: TarEntry, data?: Buffer): Promise<void> {
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    // O_EXCL|O_NOFOLLOW: never opens what is there; whatever is there is cleared first.
    let fd: number;
    try {
      fd = fs.openSync(this.host(at), flags, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      this.clear(at, false);
      fd = fs.openSync(this.host(at), flags, 0o600);
    }
    try {
      for await (const chunk of data ? [data] : e.body()) {
        for (let off = 0; off < chunk.length; ) off += fs.writeSync(fd, chunk, off);
        if (!data) this.stats.bytes += chunk.length;
      }
      // chown clears setuid/setgid, so the mode goes on after it.
      this.own(() => fs.fchownSync(fd, e.uid, e.gid));
      fs.fchmodSync(fd, e.mode);
      fs.futimesSync(fd, e.mtime, e.mtime);
    } finally {
      fs.closeSync(fd);
    }
    if (!data) this.stats.files++;
  }

  private symlink(at: string, e: TarEntry): void {
    if (!e.linkname) throw new Refusal("is a symlink with an empty target");
    this.clear(at, false);
    fs.symlinkSync(e.linkname, this.host(at));
    this.own(() => fs.lchownSync(this.host(at), e.uid, e.gid));
    fs.lutimesSync(this.host(at), e.mtime, e.mtime);
    this.stats.symlinks++;
  }

  private hardlink(at: string, e: TarEntry): void {
    const why = `is a hardlink to ${show(e.linkname)}`;
    let target: string;
    try {
      target = clean(e.linkname);
    } catch {
      throw new Refusal(`${why}, which is outside the image root`);
    }
    if (!target) throw new Refusal(`${why}, which is the image root`);
    const src = join(this.rootPath.resolveDir(parentOf(target)), target.slice(target.lastIndexOf("/") + 1));
    const st = lstatOrNull(this.host(src));
    if (!st) throw new Refusal(`${why}, which does not exist in the image`);
    if (!st.isFile()) throw new Refusal(`${why}, which is ${kind(st)}; only regular files can be hardlinked`);
    if (src !== at) {
      this.clear(at, false);
      fs.linkSync(this.host(src), this.host(at)); // link(2) does not follow; src was checked to be a file
    }
    this.stats.hardlinks++;
  }

  private async fifo(at: string, e: TarEntry): Promise<void> {
    this.clear(at, false);
    // Node has no mkfifo(3); the coreutils tool does exactly that one call.
    await run("mkfifo", ["-m", "600", "--", this.host(at)]);
    this.own(() => fs.lchownSync(this.host(at), e.uid, e.gid));
    fs.chmodSync(this.host(at), e.mode);
    fs.utimesSync(this.host(at), e.mtime, e.mtime);
    this.stats.fifos++;
  }

  /** Sets directory modes and mtimes, re-checking that no path component became a symlink meanwhile. */
  finish(): void {
    for (const [rel, { mode, mtime }] of this.dirMeta) {
      let at = "";
      let plain = lstatOrNull(this.root)?.isDirectory();
      for (const c of rel ? rel.split("/") : []) {
        at = join(at, c);
        if (plain) plain = lstatOrNull(this.host(at))?.isDirectory();
      }
      if (!plain) continue; // replaced or removed later in this layer
      // Root writes into any directory; another user only into its own writable ones. A layer's
      // 0555 /usr/lib (Fedora's, UBI's) would stop the next layer and the disk's copy of the tree,
      // so without root a directory stays open to its owner (the guest sees u+rwx on it).
      fs.chmodSync(this.host(rel), this.asRoot ? mode : mode | 0o700);
      fs.utimesSync(this.host(rel), mtime, mtime);
    }
  }
}

/** Applies one layer's tar stream onto `target` (created if missing). Layers go in order onto the same dir. */
export async function applyLayer(tarStream: AsyncIterable<Uint8Array>, target: string, opts: ApplyLayerOptions): Promise<LayerStats> {
  const maxBytes = opts.maxBytes ?? 32 * 1024 ** 3;
  const maxEntries = opts.maxEntries ?? 2_000_000;
  fs.mkdirSync(target, { recursive: true });
  const a = new Applier(fs.realpathSync(target), process.getuid?.() === 0);
  let current = "";
  let turn = performance.now();
  const fail = (why: string, cause?: unknown) => new LayerError(opts.layer, current, why, { cause });

  async function* counted(): AsyncGenerator<Uint8Array> {
    for await (const chunk of tarStream) {
      a.stats.tarBytes += chunk.length;
      if (a.stats.tarBytes > maxBytes) throw fail(`takes the layer past its cap of ${maxBytes} tar bytes (a decompression bomb?)`);
      yield chunk;
    }
  }

  try {
    for await (const e of readTar(counted(), { maxEntrySize: maxBytes })) {
      current = e.path;
      if (++a.stats.entries > maxEntries) throw fail(`takes the layer past its cap of ${maxEntries} entries`);
      await a.apply(e);
      if (performance.now() - turn > 10) {
        await new Promise(setImmediate); // the fs calls are synchronous: let other work run
        turn = performance.now();
      }
    }
    await a.drain();
    a.finish();
  } catch (caught) {
    await a.settle(); // nothing of this layer may still be writing once it has failed
    let err = caught;
    if (a.failed) {
      current = a.failed.entry;
      err = a.failed.err;
    }
    if (err instanceof LayerError) throw err;
    if (err instanceof Refusal) throw fail(err.message);
    if (err instanceof TarError) throw new LayerError(opts.layer, err.entry, `is malformed at byte ${err.offset}: ${err.message}`, { cause: err });
    const e = err as NodeJS.ErrnoException;
    throw fail(`could not be applied: ${e.code ?? e.name}: ${e.message}`, err);
  }
  return a.stats;
}
