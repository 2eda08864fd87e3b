// Builds the QEMU guest's initramfs: a reproducible "newc" cpio archive holding the agent as /init,
// plus the modules of a kernel that needs them (ours has every driver built in and needs none).
import { randomBytes } from "node:crypto";
import { readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

export interface CpioEntry {
  /** Path inside the archive; a leading "/" is dropped (the kernel unpacks relative to the rootfs root). */
  path: string;
  /** Full st_mode, type bits included (0o040755 directory, 0o100644 file, 0o120777 symlink). */
  mode: number;
  /** File contents (regular files only). */
  data?: Uint8Array;
  /** Symlink target (symlinks only). */
  target?: string;
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

/** Load-order lists of the guest modules, as bench/debian-kernel.sh writes them: always, and for networking. */
export const MODULE_ORDER_FILES = ["order", "order.net"] as const;

function header(fields: number[]): string {
  // newc: magic, then 13 fields as 8 ASCII hex digits: ino mode uid gid nlink mtime filesize
  // devmajor devminor rdevmajor rdevminor namesize check.
  return `070701${fields.map((f) => f.toString(16).padStart(8, "0")).join("")}`;
}

const pad4 = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);

function record(ino: number, mode: number, nlink: number, name: string, body: Uint8Array): Uint8Array[] {
  const nameBytes = Buffer.from(`${name}\0`, "utf8");
  // uid/gid 0 and mtime 0: the guest runs everything as root, and fixed values keep the archive reproducible.
  const head = Buffer.from(header([ino, mode, 0, 0, nlink, 0, body.length, 0, 0, 0, 0, nameBytes.length, 0]), "ascii");
  // Header + name is padded to a multiple of 4 (the header is 110 bytes), then the body is padded the same way.
  return [head, nameBytes, pad4(head.length + nameBytes.length), body, pad4(body.length)];
}

/** Serialises entries, in the given order, as a newc cpio archive. Parents must precede their children. */
export function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Uint8Array[] = [];
  const seen = new Set<string>();
  let ino = 1; // 0 is avoided: some extractors treat ino 0 as "no inode"; each entry is its own file (no hardlinks)
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, "");
    if (name === "" || name.split("/").some((c) => c === "" || c === "." || c === "..")) {
      throw new Error(`cpio: invalid path ${JSON.stringify(e.path)}`);
    }
    if (seen.has(name)) throw new Error(`cpio: duplicate path ${name}`);
    seen.add(name);
    const type = e.mode & S_IFMT;
    let body: Uint8Array;
    if (type === S_IFDIR) body = new Uint8Array(0);
    else if (type === S_IFREG) body = e.data ?? new Uint8Array(0);
    else if (type === S_IFLNK) {
      if (!e.target) throw new Error(`cpio: symlink ${name} has no target`);
      body = Buffer.from(e.target, "utf8"); // newc stores a symlink's target as its file data
    } else throw new Error(`cpio: unsupported mode ${e.mode.toString(8)} for ${name}`);
    parts.push(...record(ino++, e.mode, type === S_IFDIR ? 2 : 1, name, body));
  }
  parts.push(...record(0, 0, 1, "TRAILER!!!", new Uint8Array(0)));
  return Buffer.concat(parts);
}

export interface InitramfsOptions {
  /** The static guest agent; it becomes /init (PID 1). */
  agentPath: string;
  /** The kernel's dir: modules/*.ko and modules/order beside a kernel that has modules. */
  kernelDir: string;
  /** Where to write the archive (replaced atomically). */
  outPath: string;
}

/** Writes the guest initramfs: /init = agent, and where the kernel has modules, /modules/*.ko and /modules/order. */
export async function buildInitramfs(opts: InitramfsOptions): Promise<void> {
  const modSrc = join(opts.kernelDir, "modules");
  // A kernel with its virtio drivers built in comes without modules at all.
  const kos = (await readdir(modSrc).catch(() => [] as string[])).filter((f) => f.endsWith(".ko")).sort(); // sorted: reproducible output
  const lists: { name: string; data: Buffer }[] = [];
  for (const name of MODULE_ORDER_FILES) {
    const data = await readFile(join(modSrc, name)).catch(() => undefined);
    if (!data) continue;
    // Fail here rather than in the guest, where a missing module only shows up as a missing device.
    for (const ko of data.toString("utf8").split("\n").filter(Boolean)) {
      if (!kos.includes(ko)) throw new Error(`initramfs: ${ko} listed in ${join(modSrc, name)} but missing`);
    }
    lists.push({ name, data });
  }
  // The agent makes its own mount points; modules need their directory.
  const entries: CpioEntry[] = [
    ...(kos.length ? [{ path: "modules", mode: S_IFDIR | 0o755 }] : []),
    { path: "init", mode: S_IFREG | 0o755, data: await readFile(opts.agentPath) },
    ...lists.map((l) => ({ path: `modules/${l.name}`, mode: S_IFREG | 0o644, data: l.data })),
  ];
  for (const ko of kos) entries.push({ path: `modules/${ko}`, mode: S_IFREG | 0o644, data: await readFile(join(modSrc, ko)) });

  // Temp file in the same directory + rename, so a concurrent boot never reads a half-written archive.
  const tmp = join(dirname(opts.outPath), `.${basename(opts.outPath)}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    await writeFile(tmp, cpioNewc(entries));
    await rename(tmp, opts.outPath);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
