// A streaming reader for tar archives (ustar/POSIX, GNU long names, PAX) that treats its input as
// hostile: bodies are streamed, never buffered; metadata records are capped; bad headers throw TarError.
import { TarError } from "../errors.js";

export type TarEntryType = "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo" | "sparse" | "other";

export interface TarEntry {
  path: string;
  type: TarEntryType;
  /** The raw typeflag character, for messages about "other" entries. */
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch; PAX may make it fractional. */
  mtime: number;
  size: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Byte offset of the entry's header in the archive. */
  offset: number;
  /** The body, exactly `size` bytes, as it arrives. Usable once, before the next entry is requested. */
  body(): AsyncGenerator<Uint8Array>;
  /** Discards whatever of the body was not read. The reader also does this when you move on. */
  skip(): Promise<void>;
}

export interface TarLimits {
  /** Cap on one GNU long name/link or PAX record set; default 1 MiB. */
  maxMetaSize?: number;
  /** Cap on one entry's declared size; default Number.MAX_SAFE_INTEGER. */
  maxEntrySize?: number;
}

const BLOCK = 512;
const MAX_META_HEADERS = 16; // consecutive L/K/x/g headers before a real one: more is garbage
const TYPES: Record<string, TarEntryType> = {
  "0": "file",
  "\0": "file",
  "7": "file",
  "1": "hardlink",
  "2": "symlink",
  "3": "char",
  "4": "block",
  "5": "dir",
  "6": "fifo",
  S: "sparse",
};
const utf8 = new TextDecoder();

/** Pulls exact byte counts out of an async chunk source, keeping at most one source chunk. */
class ByteReader {
  private buf: Uint8Array = new Uint8Array(0);
  private pos = 0;
  offset = 0;
  constructor(private readonly it: AsyncIterator<Uint8Array>) {}

  private async fill(): Promise<boolean> {
    while (this.pos >= this.buf.length) {
      const r = await this.it.next();
      if (r.done) return false;
      this.buf = r.value;
      this.pos = 0;
    }
    return true;
  }

  /** Reads n bytes (n is capped by the callers); null on a clean EOF before the first byte. */
  async read(n: number, what: string, entry = ""): Promise<Uint8Array | null> {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      if (!(await this.fill())) {
        if (got === 0) return null;
        throw new TarError(`truncated archive: ${what} ends after ${got} of ${n} bytes`, this.offset - got, entry);
      }
      const take = Math.min(n - got, this.buf.length - this.pos);
      out.set(this.buf.subarray(this.pos, this.pos + take), got);
      this.pos += take;
      got += take;
      this.offset += take;
    }
    return out;
  }

  async *chunks(n: number, what: string, entry = ""): AsyncGenerator<Uint8Array> {
    while (n > 0) {
      if (!(await this.fill())) throw new TarError(`truncated archive: ${what} is missing ${n} bytes`, this.offset, entry);
      const take = Math.min(n, this.buf.length - this.pos);
      const chunk = this.buf.subarray(this.pos, this.pos + take);
      this.pos += take;
      this.offset += take;
      n -= take;
      yield chunk;
    }
  }

  async skip(n: number, what: string, entry = ""): Promise<void> {
    for await (const _ of this.chunks(n, what, entry));
  }

  close(): void {
    void this.it.return?.();
  }
}

function cstring(b: Uint8Array): string {
  const nul = b.indexOf(0);
  return utf8.decode(nul < 0 ? b : b.subarray(0, nul));
}

/** Octal (NUL/space terminated) or GNU base-256 (high bit set in the first byte). */
function numeric(b: Uint8Array, field: string, offset: number, entry = "", signed = false): number {
  if (b[0]! & 0x80) {
    const negative = b[0] === 0xff;
    let v = 0;
    for (let i = 0; i < b.length; i++) {
      const byte = i === 0 ? b[0]! & 0x7f : b[i]!;
      v = v * 256 + (negative ? 0xff - byte : byte);
      if (v > Number.MAX_SAFE_INTEGER) throw new TarError(`header field ${field} is out of range`, offset, entry);
    }
    if (negative && !signed) throw new TarError(`header field ${field} is negative`, offset, entry);
    return negative ? -(v + 1) : v;
  }
  const s = utf8
    .decode(b)
    .replace(/[\0 ]+$/, "")
    .replace(/^ +/, "");
  const end = s.indexOf("\0");
  const digits = end < 0 ? s : s.slice(0, end);
  if (!/^[0-7]*$/.test(digits)) throw new TarError(`header field ${field} is not octal: ${JSON.stringify(digits)}`, offset, entry);
  return digits === "" ? 0 : parseInt(digits, 8);
}

/** Unsigned sum with the checksum field read as spaces; some old writers summed signed bytes. */
function checksumOk(h: Uint8Array, offset: number, entry: string): boolean {
  if (h[148]! & 0x80) return false; // the checksum is always octal
  const stored = numeric(h.subarray(148, 156), "chksum", offset, entry);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

/** PAX records: "<len> <key>=<value>\n", len counting the whole record. */
function parsePax(data: Uint8Array, offset: number): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < data.length) {
    if (data[i] === 0) break; // some writers pad with NULs
    const sp = data.indexOf(0x20, i);
    const lenText = sp < 0 ? "" : utf8.decode(data.subarray(i, sp));
    const len = /^[0-9]{1,8}$/.test(lenText) ? Number(lenText) : NaN;
    if (!(len > sp - i + 1) || i + len > data.length || data[i + len - 1] !== 0x0a) {
      throw new TarError("malformed PAX extended header record", offset);
    }
    const record = utf8.decode(data.subarray(sp + 1, i + len - 1));
    const eq = record.indexOf("=");
    if (eq <= 0) throw new TarError("malformed PAX extended header record", offset);
    out.set(record.slice(0, eq), record.slice(eq + 1));
    i += len;
  }
  return out;
}

function paxNumber(v: string, key: string, offset: number, fractional = false): number {
  const ok = fractional ? /^-?[0-9]{1,20}(\.[0-9]*)?$/.test(v) : /^[0-9]{1,20}$/.test(v);
  const n = Number(v);
  if (!ok || !Number.isFinite(n) || Math.abs(n) > Number.MAX_SAFE_INTEGER) {
    throw new TarError(`PAX ${key} is not a valid number: ${JSON.stringify(v.slice(0, 40))}`, offset);
  }
  return n;
}

function noNul(s: string, what: string, offset: number): string {
  if (s.includes("\0")) throw new TarError(`${what} contains a NUL byte`, offset, s.replace(/\0/g, "\\0"));
  return s;
}

const padding = (size: number) => (BLOCK - (size % BLOCK)) % BLOCK;

/** Yields the archive's entries in order. Each entry's body must be consumed (or not) before asking for the next. */
export async function* readTar(source: AsyncIterable<Uint8Array>, limits: TarLimits = {}): AsyncGenerator<TarEntry> {
  const maxMeta = limits.maxMetaSize ?? 1024 * 1024;
  const maxSize = limits.maxEntrySize ?? Number.MAX_SAFE_INTEGER;
  const r = new ByteReader(source[Symbol.asyncIterator]());
  try {
    let longName: string | undefined;
    let longLink: string | undefined;
    let pax = new Map<string, string>();
    let metaHeaders = 0;
    for (;;) {
      const offset = r.offset;
      const h = await r.read(BLOCK, "a header");
      if (!h || h.every((b) => b === 0)) return; // EOF or the end-of-archive marker
      const rawName = cstring(h.subarray(0, 100));
      const num = (from: number, to: number, field: string, signed = false) => numeric(h.subarray(from, to), field, offset, rawName, signed);
      if (!checksumOk(h, offset, rawName)) throw new TarError("header checksum mismatch (corrupt or not a tar archive)", offset, rawName);
      const typeflag = String.fromCharCode(h[156]!);
      let size = num(124, 136, "size");

      if (typeflag === "L" || typeflag === "K" || typeflag === "x" || typeflag === "g") {
        if (++metaHeaders > MAX_META_HEADERS) throw new TarError("too many consecutive extended headers", offset, rawName);
        if (size > maxMeta) throw new TarError(`extended header of ${size} bytes exceeds the ${maxMeta}-byte cap`, offset, rawName);
        const data = size === 0 ? new Uint8Array(0) : await r.read(size, "an extended header", rawName);
        if (!data) throw new TarError("truncated archive: an extended header has no body", offset, rawName);
        await r.skip(padding(size), "header padding", rawName);
        if (typeflag === "L") longName = noNul(cstring(data), "GNU long name", offset);
        else if (typeflag === "K") longLink = noNul(cstring(data), "GNU long link name", offset);
        else if (typeflag === "x") for (const [k, v] of parsePax(data, offset)) pax.set(k, v);
        else parsePax(data, offset); // global headers: validated, then ignored
        continue;
      }

      if (pax.has("size")) size = paxNumber(pax.get("size")!, "size", offset);
      if (size > maxSize) throw new TarError(`declared size ${size} is larger than allowed (${maxSize})`, offset, rawName);
      const ustar = utf8.decode(h.subarray(257, 263)) === "ustar\0";
      const prefix = ustar ? cstring(h.subarray(345, 500)) : "";
      let path = longName ?? (prefix ? `${prefix}/${rawName}` : rawName);
      let linkname = longLink ?? cstring(h.subarray(157, 257));
      let uid = num(108, 116, "uid");
      let gid = num(116, 124, "gid");
      let mtime = num(136, 148, "mtime", true);
      if (pax.has("path")) path = noNul(pax.get("path")!, "PAX path", offset);
      if (pax.has("linkpath")) linkname = noNul(pax.get("linkpath")!, "PAX linkpath", offset);
      if (pax.has("uid")) uid = paxNumber(pax.get("uid")!, "uid", offset);
      if (pax.has("gid")) gid = paxNumber(pax.get("gid")!, "gid", offset);
      if (pax.has("mtime")) mtime = paxNumber(pax.get("mtime")!, "mtime", offset, true);
      let type = TYPES[typeflag] ?? "other";
      // PAX-format GNU sparse files hide behind typeflag '0'; their bodies are not the file's bytes.
      if ([...pax.keys()].some((k) => k.startsWith("GNU.sparse."))) type = "sparse";
      // Pre-POSIX archives mark directories only with a trailing slash.
      if (typeflag === "\0" && path.endsWith("/")) type = "dir";
      longName = longLink = undefined;
      pax = new Map();
      metaHeaders = 0;

      // Links, devices, fifos and directories carry no body whatever their size field claims.
      const bodySize = type === "file" || type === "sparse" || type === "other" ? size : 0;
      let remaining = bodySize;
      let started = false;
      const what = "the entry's body";
      const entry: TarEntry = {
        path,
        type,
        typeflag,
        linkname,
        uid,
        gid,
        mtime,
        offset,
        mode: num(100, 108, "mode") & 0o7777,
        size: bodySize,
        devmajor: num(329, 337, "devmajor"),
        devminor: num(337, 345, "devminor"),
        async *body() {
          if (started) throw new TarError(`${what} was already read`, offset, path);
          started = true;
          for await (const chunk of r.chunks(remaining, what, path)) {
            remaining -= chunk.length;
            yield chunk;
          }
        },
        async skip() {
          started = true;
          const n = remaining;
          remaining = 0;
          await r.skip(n, what, path);
        },
      };
      yield entry;
      await entry.skip();
      await r.skip(padding(bodySize), "entry padding", path);
    }
  } finally {
    r.close();
  }
}
