// A tar writer for tests only: builds ustar headers byte by byte (PAX or GNU records for long names),
// with any typeflag and any (hostile) path, size or checksum, so layer tests can craft their input.

const enc = new TextEncoder();

export interface HeaderFields {
  name: string;
  typeflag?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  /** Declared size; defaults to the body's length. May lie. */
  size?: number | bigint;
  mtime?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  prefix?: string;
  /** Add this to the computed checksum (a corrupt header). */
  checksumDelta?: number;
  /** Raw bytes to put over the header before the checksum is computed: [offset, bytes]. */
  patch?: [number, Uint8Array];
}

function putString(h: Uint8Array, off: number, len: number, s: string): void {
  const b = enc.encode(s);
  if (b.length > len) throw new Error(`tar-writer: ${JSON.stringify(s.slice(0, 40))} does not fit ${len} bytes`);
  h.set(b, off);
}

/** Octal when it fits, else GNU base-256. */
function putNumber(h: Uint8Array, off: number, len: number, v: number | bigint): void {
  const n = BigInt(v);
  const octal = n.toString(8);
  if (n >= 0n && octal.length <= len - 1) {
    putString(h, off, len, `${octal.padStart(len - 1, "0")}\0`);
    return;
  }
  let x = n < 0n ? (1n << BigInt(len * 8)) + n : n;
  for (let i = len - 1; i >= 0; i--) {
    h[off + i] = Number(x & 0xffn);
    x >>= 8n;
  }
  h[off] = n < 0n ? 0xff : 0x80;
}

export function header(f: HeaderFields): Uint8Array {
  const h = new Uint8Array(512);
  putString(h, 0, 100, f.name);
  putNumber(h, 100, 8, f.mode ?? 0o644);
  putNumber(h, 108, 8, f.uid ?? 0);
  putNumber(h, 116, 8, f.gid ?? 0);
  putNumber(h, 124, 12, f.size ?? 0);
  putNumber(h, 136, 12, f.mtime ?? 1_700_000_000);
  putString(h, 156, 1, f.typeflag ?? "0");
  putString(h, 157, 100, f.linkname ?? "");
  putString(h, 257, 8, "ustar\x0000");
  putString(h, 265, 32, "root");
  putString(h, 297, 32, "root");
  putNumber(h, 329, 8, f.devmajor ?? 0);
  putNumber(h, 337, 8, f.devminor ?? 0);
  putString(h, 345, 155, f.prefix ?? "");
  if (f.patch) h.set(f.patch[1], f.patch[0]);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  putString(h, 148, 8, `${(sum + (f.checksumDelta ?? 0)).toString(8).padStart(6, "0")}\0 `);
  return h;
}

/** PAX records "<len> <key>=<value>\n", where len counts the whole record. */
export function paxRecords(records: Record<string, string>): Uint8Array {
  let out = "";
  for (const [k, v] of Object.entries(records)) {
    const rest = ` ${k}=${v}\n`;
    const restLen = enc.encode(rest).length;
    let len = restLen + 1;
    while (String(len).length + restLen !== len) len = String(len).length + restLen;
    out += `${len}${rest}`;
  }
  return enc.encode(out);
}

export const pad = (n: number) => new Uint8Array((512 - (n % 512)) % 512);

export interface TarSpec extends Omit<HeaderFields, "name"> {
  path: string;
  body?: Uint8Array | string;
  /** Extra PAX records for this entry. */
  pax?: Record<string, string>;
  /** How a path or linkname over 100 bytes is carried; default "pax". */
  longNames?: "pax" | "gnu";
}

/** The blocks of one entry, including any PAX or GNU records it needs. */
export function entry(s: TarSpec): Uint8Array[] {
  const body = typeof s.body === "string" ? enc.encode(s.body) : (s.body ?? new Uint8Array(0));
  const out: Uint8Array[] = [];
  let name = s.path;
  let linkname = s.linkname ?? "";
  const pax: Record<string, string> = { ...s.pax };
  const long = (v: string) => enc.encode(v).length > 100;
  if (s.longNames === "gnu") {
    for (const [flag, v] of [
      ["L", name],
      ["K", linkname],
    ] as const) {
      if (!long(v)) continue;
      const data = enc.encode(`${v}\0`);
      out.push(header({ name: "././@LongLink", typeflag: flag, size: data.length }), data, pad(data.length));
    }
  } else {
    if (long(name)) pax.path = name;
    if (long(linkname)) pax.linkpath = linkname;
  }
  if (long(name)) name = name.slice(0, 99);
  if (long(linkname)) linkname = linkname.slice(0, 99);
  if (Object.keys(pax).length) {
    const data = paxRecords(pax);
    out.push(header({ name: "PaxHeaders/x", typeflag: "x", size: data.length }), data, pad(data.length));
  }
  const typeflag = s.typeflag ?? (s.path.endsWith("/") ? "5" : "0");
  out.push(header({ ...s, name, linkname, typeflag, size: s.size ?? body.length }), body, pad(body.length));
  return out;
}

/** A whole archive; `end: false` leaves off the two zero blocks. */
export function tar(specs: TarSpec[], opts: { end?: boolean } = {}): Uint8Array {
  const parts = specs.flatMap(entry);
  if (opts.end !== false) parts.push(new Uint8Array(1024));
  return concat(parts);
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Feeds bytes in awkward chunk sizes, so headers and bodies straddle chunk boundaries. */
export async function* chunked(buf: Uint8Array, sizes: number[] = [1, 7, 511, 513, 4096, 100]): AsyncGenerator<Uint8Array> {
  let i = 0;
  for (let off = 0; off < buf.length; i++) {
    const n = sizes[i % sizes.length]!;
    yield buf.subarray(off, off + n);
    off += n;
  }
}
