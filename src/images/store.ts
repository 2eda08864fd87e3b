// ImageStore: resolves an image name to a root filesystem and materializes it once per content
// into a read-only ext4 disk under the cache (disks/<id>.ext4). Sandboxes share that disk
// read-only; their writes go to a tmpfs upper inside the guest, so nothing is copied per sandbox.
// Images come from scripts/build-image.sh for now; registries arrive through the same seam.
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

import { MicrosandboxError } from "../errors.js";
import { cacheDir } from "../paths.js";

const run = promisify(execFile);

/** The image is unknown or could not be materialized. */
export class ImageError extends MicrosandboxError {
  override readonly code = "MSB_IMAGE";
}

export interface ResolvedImage {
  name: string;
  /** Content id: equal ids mean equal files. */
  id: string;
  rootfs: string;
}

const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export class ImageStore {
  constructor(readonly root: string = cacheDir()) {}

  /** Finds a local image by name; throws ImageError naming what exists and how to build it. */
  resolve(name: string): ResolvedImage {
    if (typeof name !== "string" || !NAME.test(name)) {
      throw new ImageError(`image name ${JSON.stringify(name)} is invalid: use lowercase letters, digits, '.', '_' or '-'`);
    }
    const dir = path.join(this.root, "images", name);
    let id: string;
    try {
      id = readFileSync(path.join(dir, "id"), "utf8").trim();
    } catch {
      throw new ImageError(
        `image ${JSON.stringify(name)} is not in ${path.join(this.root, "images")}.\n` +
          `Possible solutions:\n- build it: sudo bash scripts/build-image.sh ${this.root} ${name} (busybox, python or node)`,
      );
    }
    return { name, id, rootfs: path.join(dir, "rootfs") };
  }

  /** The image's read-only ext4 disk, made on first use. */
  async disk(image: ResolvedImage): Promise<string> {
    const disk = path.join(this.root, "disks", `${image.id}.ext4`);
    if (existsSync(disk)) return disk;
    mkdirSync(path.dirname(disk), { recursive: true });
    // Built aside and renamed into place: a concurrent materialization wastes work, never corrupts.
    const tmp = `${disk}.${process.pid}.${Date.now()}.tmp`;
    try {
      const { stdout } = await run("du", ["-s", "-B1", "--apparent-size", image.rootfs]);
      const { stdout: count } = await run("sh", ["-c", 'find "$1" | wc -l', "sh", image.rootfs]);
      const bytes = Number(stdout.split(/\s/)[0]);
      const inodes = Number(count.trim()) * 2 + 4096;
      // Room for filesystem metadata and block rounding; the disk is never written by the guest.
      const mib = Math.ceil((bytes * 1.3 + inodes * 256) / 2 ** 20) + 32;
      await run("mkfs.ext4", ["-q", "-F", "-d", image.rootfs, "-L", "msb-root", "-N", String(inodes), "-O", "^has_journal", "-m", "0", tmp, `${mib}M`]);
      renameSync(tmp, disk);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw new ImageError(`cannot materialize image ${image.name} into ${disk}: ${(err as Error).message}`, { cause: err });
    }
    return disk;
  }
}
