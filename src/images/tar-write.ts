// A tar writer for the archives microsandbox makes itself (image layers of builds, files sent into a
// guest): POSIX ustar headers, with a PAX record where a path, link target, size or id does not fit
// a ustar field. Its input is ours, so it is strict instead of forgiving: a NUL in a name throws.
// (Written here rather than taken from npm: the store's reader, tar.ts, is ours too, and what a
// layer needs — files, dirs, links, whiteouts — is a small, fixed part of the format.)
import { createHash, type Hash } from "node:crypto";
import { once } from "node:events";
import { createWriteStream, type WriteStream } from "node:fs";
import { finished } from "node:stream/promises";

export interface TarWriteEntry {
  path: string;
  type: "file" | "dir" | "symlink" | "hardlink";
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch. */
  mtime: number;
  /** For symlinks and hardlinks. */
  linkname?: string;
  /** For files: the byte count `body` will yield. */
  size?: number;
}

const BLOCK = 512;
const TYPEFLAG = { file: "0", hardlink: "1", symlink: "2", dir: "5" } as const;
const enc = new TextEncoder();
const ZEROS = new Uint8Array(BLOCK * 2);

function octal(h: Uint8Array, off: number, len: number, v: number): boolean {
  const s = Math.trunc(v).toString(8);
  if (v < 0 || s.length > len - 1) return false;
  h.set(enc.encode(`${s.padStart(len - 1, "0")}\0`), off);
  return true;
}

// "<len> <key>=<value>\n", len counting the whole record in bytes (its own digits included).
function paxRecord(key: string, value: string): string {
  const rest = enc.encode(` ${key}=${value}\n`).length;
  let len = rest + 1;
  while (String(len).length + rest !== len) len = String(len).length + rest;
  return `${len} ${key}=${value}\n`;
}

function block(name: string, typeflag: string, size: number, e: Pick<TarWriteEntry, "mode" | "uid" | "gid" | "mtime">, linkname = ""): Uint8Array {
  const h = new Uint8Array(BLOCK);
  h.set(enc.encode(name).subarray(0, 100), 0);
  octal(h, 100, 8, e.mode & 0o7777);
  octal(h, 108, 8, e.uid);
  octal(h, 116, 8, e.gid);
  octal(h, 124, 12, size);
  octal(h, 136, 12, Math.max(0, e.mtime));
  h[156] = typeflag.charCodeAt(0);
  h.set(enc.encode(linkname).subarray(0, 100), 157);
  h.set(enc.encode("ustar\x0000"), 257);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.set(enc.encode(`${sum.toString(8).padStart(6, "0")}\0 `), 148);
  return h;
}

const padding = (size: number) => new Uint8Array((BLOCK - (size % BLOCK)) % BLOCK);

/** The header block(s) of one entry: a PAX extended header first when a field does not fit. */
export function tarHeader(e: TarWriteEntry): Uint8Array[] {
  for (const [what, v] of [
    ["path", e.path],
    ["link target", e.linkname ?? ""],
  ] as const) {
    if (v.includes("\0")) throw new TypeError(`tar: the ${what} ${JSON.stringify(v)} contains a NUL byte`);
  }
  const size = e.type === "file" ? (e.size ?? 0) : 0;
  const name = e.type === "dir" && !e.path.endsWith("/") ? `${e.path}/` : e.path;
  const pax: string[] = [];
  if (enc.encode(name).length > 100 || /[^\x20-\x7e]/.test(name)) pax.push(paxRecord("path", name));
  const link = e.linkname ?? "";
  if (enc.encode(link).length > 100 || /[^\x20-\x7e]/.test(link)) pax.push(paxRecord("linkpath", link));
  if (size > 0o77777777777) pax.push(paxRecord("size", String(size)));
  if (e.uid > 0o7777777) pax.push(paxRecord("uid", String(e.uid)));
  if (e.gid > 0o7777777) pax.push(paxRecord("gid", String(e.gid)));
  const out: Uint8Array[] = [];
  if (pax.length) {
    const data = enc.encode(pax.join(""));
    out.push(block("././@PaxHeader", "x", data.length, { mode: 0o644, uid: 0, gid: 0, mtime: 0 }), data, padding(data.length));
  }
  const ustarId = (v: number) => (v > 0o7777777 ? 0 : v);
  out.push(block(name, TYPEFLAG[e.type], size > 0o77777777777 ? 0 : size, { ...e, uid: ustarId(e.uid), gid: ustarId(e.gid) }, link));
  return out;
}

/** Writes a tar archive to a file, hashing it (sha256) as it goes. */
export class TarFileWriter {
  private readonly out: WriteStream;
  private readonly hash: Hash = createHash("sha256");
  private bytes = 0;

  constructor(readonly file: string) {
    this.out = createWriteStream(file, { mode: 0o600 });
    this.out.on("error", () => {}); // surfaced by the next write or end()
  }

  private async write(chunk: Uint8Array): Promise<void> {
    if (!chunk.length) return;
    this.hash.update(chunk);
    this.bytes += chunk.length;
    if (!this.out.write(chunk)) await Promise.race([once(this.out, "drain"), once(this.out, "error").then(([err]) => Promise.reject(err))]);
  }

  /** Adds an entry; a file's body must yield exactly its size in bytes. */
  async add(e: TarWriteEntry, body?: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<void> {
    for (const b of tarHeader(e)) await this.write(b);
    if (e.type !== "file") return;
    let n = 0;
    for await (const chunk of body ?? []) {
      n += chunk.length;
      await this.write(chunk);
    }
    if (n !== (e.size ?? 0)) throw new Error(`tar: ${JSON.stringify(e.path)} gave ${n} bytes, not the ${e.size ?? 0} its header says`);
    await this.write(padding(n));
  }

  /** Ends the archive; returns its digest ("sha256:<hex>") and size. */
  async end(): Promise<{ digest: string; size: number }> {
    await this.write(ZEROS);
    this.out.end();
    await finished(this.out);
    return { digest: `sha256:${this.hash.digest("hex")}`, size: this.bytes };
  }

  /** Gives up: closes the file (the caller removes it). */
  async abort(): Promise<void> {
    this.out.destroy();
    await finished(this.out).catch(() => {});
  }
}
