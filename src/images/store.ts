// ImageStore: the content-addressed image cache. Image references resolve to an unpacked root
// filesystem, materialized once per content into a read-only ext4 disk that every sandbox of that
// image shares (their writes go to a tmpfs upper inside the guest: nothing is copied per sandbox).
//
// Layout under the cache dir:
//   blobs/sha256/<hex>        registry and archive blobs, verified
//   images/<id>/rootfs/       an unpacked image; <id> is its config digest (hex)
//   images/<id>/config.json   the image config (Env, WorkingDir, User, Entrypoint, Cmd)
//   refs/<encoded reference>  which image id a reference names
//   disks/<id>.ext4           the read-only disk made from images/<id>/rootfs
//   local/<name>/             images built by scripts/build-image.sh (reference "local:<name>")
// Everything is written aside and renamed into place, under a lock per entry.
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

import { PACKAGE_ROOT } from "../artifacts.js";
import { ImageError } from "../errors.js";
import { findHostTool, missingToolHint } from "../host-tools.js";
import { withLock } from "../lock.js";
import { cacheDir } from "../paths.js";

const run = promisify(execFile);

/** What a sandbox takes from the image config. */
export interface ImageConfig {
  /** "KEY=VALUE" entries. */
  env: string[];
  workingDir?: string;
  user?: string;
  entrypoint?: string[];
  cmd?: string[];
}

export interface ResolvedImage {
  /** The reference as given. */
  ref: string;
  /** Content id: equal ids mean equal images. */
  id: string;
  rootfs: string;
  config: ImageConfig;
}

export interface ImageInfo {
  ref: string;
  id: string;
  /** Bytes on disk of the unpacked tree plus its ext4 disk. */
  size: number;
}

/** Reads the subset of an OCI / Docker image config a sandbox uses; tolerates missing fields. */
export function imageConfig(raw: unknown): ImageConfig {
  const c = ((raw as { config?: Record<string, unknown> })?.config ?? {}) as Record<string, unknown>;
  const strings = (v: unknown) => (Array.isArray(v) && v.every((s) => typeof s === "string") ? (v as string[]) : undefined);
  const config: ImageConfig = { env: strings(c.Env) ?? [] };
  if (typeof c.WorkingDir === "string" && c.WorkingDir.startsWith("/")) config.workingDir = c.WorkingDir;
  if (typeof c.User === "string" && c.User !== "") config.user = c.User;
  const entrypoint = strings(c.Entrypoint);
  if (entrypoint?.length) config.entrypoint = entrypoint;
  const cmd = strings(c.Cmd);
  if (cmd?.length) config.cmd = cmd;
  return config;
}

const encodeRef = (ref: string) => encodeURIComponent(ref);

export class ImageStore {
  constructor(readonly root: string = cacheDir()) {}

  get blobDir(): string {
    return path.join(this.root, "blobs", "sha256");
  }

  imageDir(id: string): string {
    return path.join(this.root, "images", id);
  }

  /**
   * The image a reference names, if it is in the store (no network). `identity`, for archive
   * sources, must match the one the reference was tagged with (the file may have changed).
   */
  async lookup(ref: string, identity?: string): Promise<ResolvedImage | undefined> {
    if (ref.startsWith("local:")) return this.local(ref);
    const [id, tagged] = (await readFile(path.join(this.root, "refs", encodeRef(ref)), "utf8").catch(() => "")).split("\n");
    if (!id || !existsSync(path.join(this.imageDir(id), "rootfs"))) return undefined;
    if (identity !== undefined && tagged !== identity) return undefined;
    return this.loadImage(ref, id);
  }

  /** The image with content id `id` (named `ref` in messages), if it is in the store. */
  async byId(id: string, ref: string = id): Promise<ResolvedImage | undefined> {
    return existsSync(path.join(this.imageDir(id), "rootfs")) ? this.loadImage(ref, id) : undefined;
  }

  private async loadImage(ref: string, id: string): Promise<ResolvedImage> {
    const raw = JSON.parse(await readFile(path.join(this.imageDir(id), "config.json"), "utf8")) as unknown;
    return { ref, id, rootfs: path.join(this.imageDir(id), "rootfs"), config: imageConfig(raw) };
  }

  // Images from scripts/build-image.sh: a rootfs and a content id, no config.
  private local(ref: string): ResolvedImage {
    const name = ref.slice("local:".length);
    const dir = path.join(this.root, "local", name);
    let id: string;
    try {
      if (!/^[a-z0-9][a-z0-9._-]{0,62}$/.test(name)) throw new Error("bad name");
      id = readFileSync(path.join(dir, "id"), "utf8").trim();
    } catch {
      // The script that makes local images is part of a checkout, not of the installed package.
      const script = path.join(PACKAGE_ROOT, "scripts", "build-image.sh");
      throw new ImageError(
        `image ${JSON.stringify(ref)} is not built in ${path.join(this.root, "local")}.\nPossible solutions:\n` +
          (existsSync(script)
            ? `- build it: sudo bash ${script} ${this.root} ${name || "NAME"} (busybox, python, node or busybox-aarch64)`
            : "- local: images are built from Debian packages in a checkout of microsandbox (scripts/build-image.sh); " +
              'use a registry image instead, such as "python:3.12-slim", or an OCI archive (oci-archive:FILE)'),
      );
    }
    return { ref, id: `local-${id}`, rootfs: path.join(dir, "rootfs"), config: { env: [] } };
  }

  /**
   * Publishes an unpacked image: `build` fills a fresh directory with rootfs/ and config.json;
   * it runs only if image `id` is not there yet, under the image's lock. `ref` then names it,
   * unless it is undefined (an image a build keeps in its step cache: prune may remove it).
   */
  async publish(ref: string | undefined, id: string, build: (dir: string) => Promise<void>, identity?: string): Promise<ResolvedImage> {
    const final = this.imageDir(id);
    await mkdir(path.dirname(final), { recursive: true, mode: 0o700 });
    await withLock(final, async () => {
      // Tagged under the lock, so prune never sees the image published but not yet named.
      if (!existsSync(path.join(final, "rootfs"))) {
        const tmp = `${final}.${process.pid}.tmp`;
        await rm(tmp, { recursive: true, force: true });
        await mkdir(path.join(tmp, "rootfs"), { recursive: true });
        try {
          await build(tmp);
          await rm(final, { recursive: true, force: true }); // the remains of an interrupted removal
          await rename(tmp, final);
        } catch (err) {
          await rm(tmp, { recursive: true, force: true });
          throw err;
        }
      }
      if (ref !== undefined) await this.tag(ref, id, identity);
    });
    return this.loadImage(ref ?? id, id);
  }

  /** Points a reference at an image id (and, for archives, the identity of the file it came from). */
  async tag(ref: string, id: string, identity?: string): Promise<void> {
    const dir = path.join(this.root, "refs");
    await mkdir(dir, { recursive: true });
    const file = path.join(dir, encodeRef(ref));
    const tmp = `${file}.${randomBytes(6).toString("hex")}.tmp`;
    await writeFile(tmp, identity === undefined ? id : `${id}\n${identity}`);
    await rename(tmp, file);
  }

  /** The image's read-only ext4 disk, made on first use. */
  async disk(image: ResolvedImage): Promise<string> {
    const disk = path.join(this.root, "disks", `${image.id}.ext4`);
    if (existsSync(disk)) return disk;
    await mkdir(path.dirname(disk), { recursive: true });
    const mkfs = findHostTool("mkfs.ext4");
    if (!mkfs)
      throw new ImageError(`cannot materialize image ${image.ref} into a disk: ${missingToolHint("mkfs.ext4", "it makes each image's read-only disk")}`);
    await withLock(disk, async () => {
      if (existsSync(disk)) return;
      const tmp = `${disk}.${process.pid}.tmp`;
      try {
        const { stdout } = await run("du", ["-s", "-B1", "--apparent-size", image.rootfs]);
        const { stdout: count } = await run("sh", ["-c", 'find "$1" | wc -l', "sh", image.rootfs]);
        const bytes = Number(stdout.split(/\s/)[0]);
        const inodes = Number(count.trim()) * 2 + 4096;
        // Room for filesystem metadata and block rounding; the guest never writes to this disk.
        const mib = Math.ceil((bytes * 1.3 + inodes * 256) / 2 ** 20) + 32;
        await run(mkfs, ["-q", "-F", "-d", image.rootfs, "-L", "msb-root", "-N", String(inodes), "-O", "^has_journal", "-m", "0", tmp, `${mib}M`]);
        await rename(tmp, disk);
      } catch (err) {
        await rm(tmp, { force: true });
        throw new ImageError(`cannot materialize image ${image.ref} into ${disk}: ${(err as Error).message}`, { cause: err });
      }
    });
    return disk;
  }

  /** Every tagged image with its size. */
  async list(): Promise<ImageInfo[]> {
    const refs = await readdir(path.join(this.root, "refs")).catch(() => [] as string[]);
    const out: ImageInfo[] = [];
    for (const file of refs.filter((f) => !f.endsWith(".tmp"))) {
      const id = (await readFile(path.join(this.root, "refs", file), "utf8")).split("\n")[0]!.trim();
      out.push({ ref: decodeURIComponent(file), id, size: await this.size(id) });
    }
    return out.sort((a, b) => a.ref.localeCompare(b.ref));
  }

  /** The ids of every image there is: stored by reference, and built locally. */
  async imageIds(): Promise<Set<string>> {
    const ids = new Set((await this.list()).map((i) => i.id));
    for (const name of await readdir(path.join(this.root, "local")).catch(() => [] as string[])) {
      const id = await readFile(path.join(this.root, "local", name, "id"), "utf8").catch(() => "");
      if (id.trim()) ids.add(id.trim());
    }
    return ids;
  }

  private async size(id: string): Promise<number> {
    const { stdout } = await run("du", ["-s", "-B1", this.imageDir(id)]).catch(() => ({ stdout: "0" }));
    const disk = await stat(path.join(this.root, "disks", `${id}.ext4`)).catch(() => undefined);
    return Number(stdout.split(/\s/)[0]) + (disk ? disk.blocks * 512 : 0);
  }

  /** Removes a reference, and its image once no reference names it. Returns false if it was unknown. */
  async remove(ref: string): Promise<boolean> {
    const file = path.join(this.root, "refs", encodeRef(ref));
    const id = (await readFile(file, "utf8").catch(() => "")).split("\n")[0]!.trim();
    if (!id) return false;
    await rm(file, { force: true });
    if (!(await this.list()).some((i) => i.id === id)) await this.dropImage(id);
    return true;
  }

  /** Removes images, disks and blobs no reference names; returns the bytes freed. */
  async prune(): Promise<number> {
    const keep = new Set((await this.list()).map((i) => i.id));
    let freed = 0;
    for (const id of await readdir(path.join(this.root, "images")).catch(() => [] as string[])) {
      // Locks and half-built images belong to work in progress.
      if (keep.has(id) || id.endsWith(".lock") || id.endsWith(".tmp")) continue;
      freed += await this.size(id);
      await this.dropImage(id);
    }
    // Blobs are only a download cache once their images are unpacked.
    for (const blob of await readdir(this.blobDir).catch(() => [] as string[])) {
      const st = await stat(path.join(this.blobDir, blob)).catch(() => undefined);
      freed += st?.size ?? 0;
      await rm(path.join(this.blobDir, blob), { force: true });
    }
    return freed;
  }

  private async dropImage(id: string): Promise<void> {
    await withLock(this.imageDir(id), async () => {
      await rm(this.imageDir(id), { recursive: true, force: true });
      await rm(path.join(this.root, "disks", `${id}.ext4`), { force: true });
    });
  }
}

/** sha256 of bytes, as "sha256:<hex>". */
export function sha256(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}
