// applyLayer against crafted layers: OCI semantics on well-formed images, then a corpus of hostile
// layers, each applied in its own target inside a jail whose outside must come through untouched.

import { createHash, randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Readable } from "node:stream";
import { createGunzip, createGzip } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LayerError } from "../../src/errors.js";

import { type ApplyLayerOptions, applyLayer, type LayerStats } from "../../src/images/layers.js";
import { chunked, concat, header, pad, type TarSpec, tar } from "./tar-writer.js";

const asRoot = process.getuid?.() === 0;
let tmp: string;
beforeAll(async () => {
  tmp = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), "msb-layers-")));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

type Layer = Uint8Array | (() => AsyncIterable<Uint8Array>);
const stream = (l: Layer) => (l instanceof Uint8Array ? chunked(l) : l());

async function applyAll(target: string, layers: Layer[], opts: Partial<ApplyLayerOptions> = {}): Promise<LayerStats[]> {
  const stats: LayerStats[] = [];
  for (const [i, l] of layers.entries()) stats.push(await applyLayer(stream(l), target, { layer: `layer${i}`, ...opts }));
  return stats;
}

let n = 0;
const freshTarget = () => path.join(tmp, `t${n++}`);
const read = (p: string) => readFileSync(p, "utf8");
const perm = async (p: string) => (await fs.lstat(p)).mode & 0o7777;

describe("applyLayer: image semantics", () => {
  it("creates files, dirs, symlinks, hardlinks and fifos with modes, owners and mtimes", async () => {
    const t = freshTarget();
    const [s] = await applyAll(t, [
      tar([
        { path: "./", mode: 0o755 },
        { path: "etc/", mode: 0o750, mtime: 1_500_000_000, uid: 1000, gid: 1000 },
        { path: "etc/hosts", mode: 0o640, uid: 1000, gid: 1001, mtime: 1_600_000_000, body: "127.0.0.1 localhost\n" },
        { path: "bin/su", mode: 0o4755, body: "#!/bin/sh\n" },
        { path: "etc/link", typeflag: "2", linkname: "hosts", uid: 1000, gid: 1000, mtime: 1_400_000_000 },
        { path: "etc/hosts2", typeflag: "1", linkname: "./etc/hosts" },
        { path: "run/fifo", typeflag: "6", mode: 0o640, uid: 1000 },
      ]),
    ]);
    expect(s).toMatchObject({ entries: 7, files: 1 + 1, dirs: 2, symlinks: 1, hardlinks: 1, fifos: 1, bytes: 30 });
    expect(read(`${t}/etc/hosts`)).toBe("127.0.0.1 localhost\n");
    const hosts = await fs.lstat(`${t}/etc/hosts`);
    expect(hosts.mode & 0o7777).toBe(0o640);
    expect(hosts.mtimeMs).toBe(1_600_000_000_000);
    expect(hosts.nlink).toBe(2);
    expect((await fs.lstat(`${t}/etc/hosts2`)).ino).toBe(hosts.ino);
    expect(await perm(`${t}/bin/su`)).toBe(0o4755);
    expect(await perm(`${t}/etc`)).toBe(0o750);
    expect((await fs.lstat(`${t}/etc`)).mtimeMs).toBe(1_500_000_000_000); // set after its children were written
    expect(await fs.readlink(`${t}/etc/link`)).toBe("hosts");
    expect((await fs.lstat(`${t}/etc/link`)).mtimeMs).toBe(1_400_000_000_000);
    const fifo = await fs.lstat(`${t}/run/fifo`);
    expect(fifo.isFIFO()).toBe(true);
    expect(fifo.mode & 0o7777).toBe(0o640);
    expect(await perm(`${t}/run`)).toBe(0o755); // a missing parent
    if (asRoot) {
      expect([hosts.uid, hosts.gid]).toEqual([1000, 1001]);
      expect((await fs.lstat(`${t}/etc/link`)).uid).toBe(1000);
      expect((await fs.lstat(`${t}/etc`)).gid).toBe(1000);
      expect(fifo.uid).toBe(1000);
    }
  });

  it("whiteouts delete a lower file and a lower directory tree, and are never created", async () => {
    const t = freshTarget();
    const [, s] = await applyAll(t, [
      tar([
        { path: "a/file", body: "x" },
        { path: "a/keep", body: "k" },
        { path: "d/sub/x", body: "x" },
        { path: "d/y", body: "y" },
      ]),
      tar([{ path: "a/.wh.file" }, { path: ".wh.d" }, { path: "a/new", body: "n" }]),
    ]);
    expect(s!.whiteouts).toBe(2);
    expect((await fs.readdir(t)).sort()).toEqual(["a"]);
    expect((await fs.readdir(`${t}/a`)).sort()).toEqual(["keep", "new"]);
  });

  it("an opaque directory hides every lower child but keeps this layer's, before or after the marker", async () => {
    const t = freshTarget();
    await applyAll(t, [
      tar([
        { path: "o/old", body: "1" },
        { path: "o/olddir/x", body: "x" },
        { path: "o/same", body: "lower" },
        { path: "p/untouched", body: "p" },
      ]),
      tar([
        { path: "o/before", body: "b" },
        { path: "o/olddir/kept-before", body: "k" },
        { path: "o/.wh..wh..opq" },
        { path: "o/after", body: "a" },
        { path: "o/same", body: "upper" },
      ]),
    ]);
    expect((await fs.readdir(`${t}/o`)).sort()).toEqual(["after", "before", "olddir", "same"]);
    expect(await fs.readdir(`${t}/o/olddir`)).toEqual(["kept-before"]);
    expect(read(`${t}/o/same`)).toBe("upper");
    expect(read(`${t}/p/untouched`)).toBe("p");
  });

  it("spares this layer's own entries from its whiteouts, skips AUFS metadata, never writes through a hardlink", async () => {
    const t = freshTarget();
    const [, s] = await applyAll(t, [
      tar([
        { path: "w/lower", body: "l" },
        { path: "etc/shadow", body: "orig" },
        { path: "x", typeflag: "1", linkname: "etc/shadow" },
      ]),
      tar([
        { path: "w/mine", body: "m" },
        { path: "w/.wh.mine" },
        { path: "w/.wh.lower" },
        { path: ".wh..wh.plnk/" },
        { path: ".wh..wh.plnk/1234.5678", body: "aufs" },
        { path: ".wh..wh.aufs" },
        { path: "x", body: "new" },
      ]),
    ]);
    expect(await fs.readdir(`${t}/w`)).toEqual(["mine"]);
    expect(existsSync(`${t}/.wh..wh.plnk`) || existsSync(`${t}/.wh..wh.aufs`)).toBe(false);
    expect(read(`${t}/x`)).toBe("new");
    expect(read(`${t}/etc/shadow`)).toBe("orig");
    expect(s!.whiteouts).toBe(2);
  });

  it("follows usrmerge symlinks in parents: lib/x.so lands in usr/lib", async () => {
    const t = freshTarget();
    await applyAll(t, [
      tar([
        { path: "usr/lib/" },
        { path: "usr/bin/" },
        { path: "lib", typeflag: "2", linkname: "usr/lib" },
        { path: "bin", typeflag: "2", linkname: "/usr/bin" },
      ]),
      tar([
        { path: "lib/x.so", body: "elf" },
        { path: "/bin/sh", body: "sh", mode: 0o755 },
        { path: "lib/sub/y.so", body: "y" },
      ]),
    ]);
    expect(read(`${t}/usr/lib/x.so`)).toBe("elf");
    expect(read(`${t}/usr/lib/sub/y.so`)).toBe("y");
    expect(read(`${t}/usr/bin/sh`)).toBe("sh");
    expect((await fs.lstat(`${t}/lib`)).isSymbolicLink()).toBe(true);
    expect((await fs.lstat(`${t}/bin`)).isSymbolicLink()).toBe(true);
  });

  it("replaces a directory with a file, a file with a directory, a symlink with a file; merges dir over dir", async () => {
    const t = freshTarget();
    await applyAll(t, [
      tar([
        { path: "p/child/deep", body: "c" },
        { path: "q", body: "file" },
        { path: "r/", mode: 0o755 },
        { path: "r/a", body: "a" },
        { path: "s", typeflag: "2", linkname: "r/a" },
      ]),
      tar([
        { path: "p", body: "now a file" },
        { path: "q/", mode: 0o711 },
        { path: "q/inner", body: "i" },
        { path: "r/", mode: 0o700, uid: 7 },
        { path: "s", body: "plain" },
      ]),
    ]);
    expect(read(`${t}/p`)).toBe("now a file");
    expect((await fs.lstat(`${t}/q`)).isDirectory()).toBe(true);
    expect(await perm(`${t}/q`)).toBe(0o711);
    expect(read(`${t}/q/inner`)).toBe("i");
    expect(read(`${t}/r/a`)).toBe("a");
    expect(await perm(`${t}/r`)).toBe(0o700);
    if (asRoot) expect((await fs.lstat(`${t}/r`)).uid).toBe(7);
    expect((await fs.lstat(`${t}/s`)).isFile()).toBe(true);
    expect(read(`${t}/r/a`)).toBe("a");
  });

  it("reads GNU long names and links, PAX paths, ustar prefixes, PAX/base-256 numbers, byte by byte", async () => {
    const long = `${"d".repeat(60)}/${"e".repeat(60)}/${"f".repeat(40)}`;
    const longer = `${"p".repeat(120)}/${"q".repeat(130)}`;
    const archive = tar([
      { path: long, body: "gnu", longNames: "gnu" },
      { path: longer, body: "pax" },
      { path: "gnulink", typeflag: "2", linkname: long, longNames: "gnu" },
      { path: "paxlink", typeflag: "2", linkname: longer },
      { path: "name.txt", prefix: "u".repeat(120), body: "prefixed" },
      { path: "owned", body: "o", pax: { uid: "4000000", gid: "12", mtime: "1234567890.5" } },
      { path: "big-uid", body: "b", uid: 3_000_000, mtime: 2 ** 33 },
      { path: "sized", body: "12345", size: 999, pax: { size: "5" } },
    ]);
    for (const sizes of [[1], [100_000]]) {
      const t = freshTarget();
      await applyLayer(chunked(archive, sizes), t, { layer: "long" });
      expect(read(`${t}/${long}`)).toBe("gnu");
      expect(read(`${t}/${longer}`)).toBe("pax");
      expect(await fs.readlink(`${t}/gnulink`)).toBe(long);
      expect(await fs.readlink(`${t}/paxlink`)).toBe(longer);
      expect(read(`${t}/${"u".repeat(120)}/name.txt`)).toBe("prefixed");
      expect(read(`${t}/sized`)).toBe("12345");
      const owned = await fs.lstat(`${t}/owned`);
      expect(owned.mtimeMs).toBe(1_234_567_890_500);
      if (asRoot) expect([owned.uid, owned.gid, (await fs.lstat(`${t}/big-uid`)).uid]).toEqual([4_000_000, 12, 3_000_000]);
      expect((await fs.lstat(`${t}/big-uid`)).mtimeMs).toBe(2 ** 33 * 1000);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The hostile corpus.

interface Hostile {
  name: string;
  layers: (jail: string) => Layer[];
  opts?: Partial<ApplyLayerOptions>;
  /** Rejected: the entry the error must name and a pattern for the reason. */
  rejects?: [entry: string | null, why: RegExp];
  /** Contained: checks inside the target after all layers applied. */
  contained?: (t: string, stats: LayerStats[], jail: string) => Promise<void> | void;
}

const sym = (p: string, linkname: string): TarSpec => ({ path: p, typeflag: "2", linkname });
const hard = (p: string, linkname: string): TarSpec => ({ path: p, typeflag: "1", linkname });
const file = (p: string, body = "pwned"): TarSpec => ({ path: p, body });

/** ~200 MB of zeros in `count` tar entries, gzipped (to ~200 KB), then gunzipped as a stream into applyLayer. */
async function* bomb(count: number): AsyncGenerator<Uint8Array> {
  const size = (200 * 1024 * 1024) / count;
  async function* plain() {
    const zeros = new Uint8Array(1 << 20);
    for (let e = 0; e < count; e++) {
      yield header({ name: `bomb${e}`, size });
      for (let i = 0; i < size / zeros.length; i++) yield zeros;
    }
    yield new Uint8Array(1024);
  }
  const gz = Buffer.concat(
    await Readable.from(plain())
      .pipe(createGzip({ level: 1 }))
      .toArray(),
  );
  expect(gz.length).toBeLessThan(2 * 1024 * 1024);
  yield* Readable.from([gz]).pipe(createGunzip());
}

const corpus: Hostile[] = [
  { name: "../ traversal", layers: () => [tar([file("../sentinel2")])], rejects: ["../sentinel2", /escapes the image root/] },
  { name: "a/../../x", layers: () => [tar([file("a/../../x")])], rejects: ["a/../../x", /escapes the image root/] },
  {
    name: "deep ./../ chain",
    layers: () => [tar([file("./../../../../../../../tmp/msb-pwned")])],
    rejects: ["./../../../../../../../tmp/msb-pwned", /escapes/],
  },
  {
    name: "absolute paths land inside",
    layers: () => [tar([file("/etc/msb-pwned"), file("/etc/passwd", "root:x:0:0::/:/bin/sh\n")])],
    contained: (t) => expect(read(`${t}/etc/passwd`)).toContain("root:x"),
  },
  {
    name: "evil -> / then evil/etc/msb-pwned",
    layers: () => [tar([sym("evil", "/"), file("evil/etc/msb-pwned")])],
    contained: (t) => expect(read(`${t}/etc/msb-pwned`)).toBe("pwned"),
  },
  {
    name: "up -> .. then up/sentinel2",
    layers: () => [tar([sym("up", ".."), file("up/sentinel2"), sym("up2", "../../../.."), file("up2/sentinel")])],
    contained: (t) => expect([read(`${t}/sentinel2`), read(`${t}/sentinel`)]).toEqual(["pwned", "pwned"]),
  },
  {
    name: "absolute symlink to the real outside dir",
    layers: (jail) => [tar([sym("out", `${jail}/outside`), file("out/secret"), file("out/new")])],
    contained: (t, _, jail) => expect(read(`${t}/${jail}/outside/secret`)).toBe("pwned"),
  },
  {
    name: "symlink chain to the root and beyond",
    layers: () => [tar([{ path: "c/" }, sym("a", "b"), sym("b", "c/../../../.."), file("a/sentinel1")])],
    contained: (t) => expect(read(`${t}/sentinel1`)).toBe("pwned"),
  },
  { name: "symlink loop", layers: () => [tar([sym("l1", "l2"), sym("l2", "l1"), file("l1/x")])], rejects: ["l1/x", /too many levels of symbolic links/] },
  {
    name: "symlink replaced by a directory in a later layer, then written through",
    layers: () => [tar([sym("d", "../../..")]), tar([{ path: "d/" }, file("d/sentinel")])],
    contained: async (t) => {
      expect((await fs.lstat(`${t}/d`)).isDirectory()).toBe(true);
      expect(read(`${t}/d/sentinel`)).toBe("pwned");
    },
  },
  {
    name: "file written over a symlink to an outside file",
    layers: (jail) => [tar([sym("x", `${jail}/sentinel`)]), tar([file("x")])],
    contained: (t) => expect(read(`${t}/x`)).toBe("pwned"),
  },
  {
    name: "directory (mode 0700) written over a symlink to an outside dir",
    layers: () => [tar([sym("o", "../../../outside"), { path: "o/", mode: 0o700 }, file("o/secret")])],
    contained: async (t) => expect(await perm(`${t}/o`)).toBe(0o700),
  },
  { name: "hardlink to /etc/passwd", layers: () => [tar([hard("h", "/etc/passwd")])], rejects: ["h", /does not exist in the image/] },
  {
    name: "hardlink to /etc/passwd when the image has one",
    layers: () => [tar([file("etc/passwd", "image"), hard("h", "/etc/passwd")])],
    contained: async (t) => {
      expect((await fs.lstat(`${t}/h`)).ino).toBe((await fs.lstat(`${t}/etc/passwd`)).ino);
      expect((await fs.lstat(`${t}/h`)).ino).not.toBe((await fs.lstat("/etc/passwd")).ino);
    },
  },
  { name: "hardlink to ../outside", layers: () => [tar([hard("h", "../../../outside/secret")])], rejects: ["h", /outside the image root/] },
  { name: "hardlink to a symlink", layers: () => [tar([sym("s", "/etc/passwd"), hard("h", "s")])], rejects: ["h", /which is a symlink/] },
  { name: "hardlink to a directory", layers: () => [tar([{ path: "d/" }, hard("h", "d")])], rejects: ["h", /which is a directory/] },
  {
    name: "hardlink through a symlinked parent pointing outside",
    layers: (jail) => [tar([sym("s", `${jail}/outside`), sym("s2", "../../../outside"), hard("h", "s/secret")])],
    rejects: ["h", /does not exist in the image/],
  },
  {
    name: "hardlink through a relative symlinked parent pointing outside",
    layers: () => [tar([sym("s2", "../../../outside"), hard("h", "s2/secret")])],
    rejects: ["h", /does not exist in the image/],
  },
  { name: "whiteout of ..", layers: () => [tar([file(".wh..."), file("x")])], rejects: [".wh...", /whiteout of an invalid name/] },
  { name: "whiteout in ../", layers: () => [tar([file("../.wh.sentinel2")])], rejects: ["../.wh.sentinel2", /escapes the image root/] },
  {
    name: "whiteout through a symlinked parent pointing outside",
    layers: (jail) => [
      tar([sym("s", `${jail}/outside`), sym("s2", "../../.."), file("keep")]),
      tar([file("s/.wh.secret"), file("s2/.wh.sentinel"), file("s2/.wh.l1")]),
    ],
    contained: (t, stats) => {
      expect(stats[1]!.whiteouts).toBe(3);
      expect(read(`${t}/keep`)).toBe("pwned");
    },
  },
  {
    name: "opaque marker in a symlinked dir pointing outside",
    layers: (jail) => [tar([sym("s", `${jail}/outside`), sym("s2", "../../../outside"), file("s2/.wh..wh..opq"), file("s/.wh..wh..opq")])],
    contained: async (t) => expect((await fs.lstat(`${t}/s`)).isSymbolicLink()).toBe(true),
  },
  {
    name: "opaque marker through up -> .. (the root itself)",
    layers: () => [tar([file("lower")]), tar([sym("up", ".."), file("up/.wh..wh..opq")])],
    contained: async (t) => expect(await fs.readdir(t)).toEqual(["up"]),
  },
  {
    name: "char and block devices",
    layers: () => [
      tar([
        { path: "dev/null", typeflag: "3", devmajor: 1, devminor: 3 },
        { path: "dev/sda", typeflag: "4", devmajor: 8, devminor: 0 },
        { path: "sentinel2", typeflag: "3", devmajor: 1, devminor: 1 },
      ]),
    ],
    contained: (t, [s]) => {
      expect(s!.devicesSkipped).toBe(3);
      expect(existsSync(`${t}/dev/null`) || existsSync(`${t}/dev/sda`) || existsSync(`${t}/sentinel2`)).toBe(false);
    },
  },
  {
    name: "gzip bomb (8 x 25 MB entries)",
    layers: () => [() => bomb(8)],
    opts: { maxBytes: 50 * 1024 * 1024 },
    rejects: ["bomb1", /cap of 52428800 tar bytes/],
  },
  {
    name: "gzip bomb (one 200 MB entry)",
    layers: () => [() => bomb(1)],
    opts: { maxBytes: 50 * 1024 * 1024 },
    rejects: ["bomb0", /declared size 209715200 is larger than allowed/],
  },
  {
    name: "huge declared size with little data",
    layers: () => [concat([header({ name: "big", size: 10 * 1024 ** 3 }), new Uint8Array(1000)])],
    rejects: ["big", /truncated/],
  },
  {
    name: "absurd base-256 size",
    layers: () => [concat([header({ name: "absurd", size: 2n ** 60n }), new Uint8Array(1024)])],
    rejects: ["absurd", /out of range/],
  },
  { name: "PAX size above maxBytes", layers: () => [tar([{ path: "paxbig", pax: { size: String(2 ** 40) } }])], rejects: ["paxbig", /declared size/] },
  { name: "GNU sparse entry", layers: () => [tar([{ path: "sparse", typeflag: "S", body: "x" }])], rejects: ["sparse", /sparse/] },
  {
    name: "PAX-format sparse entry",
    layers: () => [tar([{ path: "psparse", body: "x", pax: { "GNU.sparse.major": "1", "GNU.sparse.minor": "0" } }])],
    rejects: ["psparse", /sparse/],
  },
  { name: "PAX path containing NUL", layers: () => [tar([{ path: "ok", body: "x", pax: { path: "etc/\0/../../x" } }])], rejects: ["etc/\\0/../../x", /NUL/] },
  {
    name: "corrupted header checksum",
    layers: () => [tar([file("fine"), { path: "corrupt", body: "x", checksumDelta: 1 }])],
    rejects: ["corrupt", /checksum/],
  },
  { name: "random header garbage", layers: () => [concat([randomBytes(512).map((b) => b | 1), new Uint8Array(1024)])], rejects: [null, /checksum|octal/] },
  {
    name: "non-octal size with a valid checksum",
    layers: () => [concat([header({ name: "nonoctal", patch: [124, new TextEncoder().encode("9999")] }), pad(0)])],
    rejects: ["nonoctal", /not octal/],
  },
  { name: "oversized PAX header", layers: () => [tar([{ path: "p", pax: { comment: "x".repeat(2 * 1024 * 1024) } }])], rejects: ["PaxHeaders/x", /cap/] },
  { name: "path of 400k components", layers: () => [tar([file(`${"a/".repeat(400_000)}x`)])], rejects: [`${"a/".repeat(400_000)}x`, /ENAMETOOLONG/] },
  { name: "unknown typeflag", layers: () => [tar([{ path: "weird", typeflag: "Z" }])], rejects: ["weird", /unsupported tar typeflag "Z"/] },
  { name: "root replaced by a file", layers: () => [tar([{ path: ".", typeflag: "0", body: "x" }])], rejects: [".", /image root with a non-directory/] },
  {
    name: "too many entries",
    layers: () => [tar(Array.from({ length: 11 }, (_, i) => file(`f${i}`)))],
    opts: { maxEntries: 10 },
    rejects: ["f10", /cap of 10 entries/],
  },
];

/** Everything under `dir` except the targets, with what a change would alter. */
async function snapshot(dir: string, skip: (p: string) => boolean): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const name of await fs.readdir(d)) {
      const p = path.join(d, name);
      if (skip(p)) continue;
      const st = await fs.lstat(p);
      const link = st.isSymbolicLink() ? await fs.readlink(p) : "";
      const hash = st.isFile() ? createHash("sha256").update(readFileSync(p)).digest("hex") : "";
      out.set(p, [st.mode, st.uid, st.gid, st.size, st.mtimeMs, st.nlink, link, hash].join(" "));
      if (st.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return out;
}

describe("applyLayer: hostile layers stay inside the target", () => {
  let jail: string;
  let box: string;
  let before: Map<string, string>;
  let passwd: { text: string; mtimeMs: number; nlink: number };
  const targets = corpus.map((_, i) => `t${String(i).padStart(2, "0")}`);
  const isTarget = (p: string) => path.dirname(p) === box && targets.includes(path.basename(p));

  beforeAll(async () => {
    jail = path.join(tmp, "jail");
    box = path.join(jail, "l1", "l2");
    await fs.mkdir(path.join(jail, "outside", "sub"), { recursive: true });
    await fs.mkdir(path.join(jail, "etc"));
    await fs.mkdir(box, { recursive: true });
    await fs.writeFile(path.join(jail, "sentinel"), "SENTINEL");
    await fs.writeFile(path.join(jail, "l1", "sentinel1"), "SENTINEL1");
    await fs.writeFile(path.join(box, "sentinel2"), "SENTINEL2");
    await fs.writeFile(path.join(jail, "outside", "secret"), "SECRET", { mode: 0o600 });
    await fs.writeFile(path.join(jail, "outside", "sub", "deep"), "DEEP");
    await fs.writeFile(path.join(jail, "etc", "passwd"), "fake");
    await fs.symlink("outside", path.join(jail, "outside-link"));
    for (const t of targets) await fs.mkdir(path.join(box, t));
    const old = new Date("2001-01-01T00:00:00Z");
    for (const p of (await snapshot(jail, () => false)).keys()) if (!isTarget(p)) await fs.lutimes(p, old, old);
    before = await snapshot(jail, isTarget);
    const st = await fs.stat("/etc/passwd");
    passwd = { text: read("/etc/passwd"), mtimeMs: st.mtimeMs, nlink: st.nlink };
  });

  corpus.forEach((c, i) => {
    it(`${c.rejects ? "rejects" : "contains"}: ${c.name}`, async () => {
      const t = path.join(box, targets[i]!);
      const layers = c.layers(jail);
      if (c.rejects) {
        const err = await applyAll(t, layers, c.opts).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(LayerError);
        const le = err as LayerError;
        expect(le.code).toBe("MSB_LAYER");
        if (c.rejects[0] !== null) expect(le.entry).toBe(c.rejects[0]);
        expect(le.message).toMatch(c.rejects[1]);
        if (c.rejects[0]) expect(le.message).toContain(`entry ${JSON.stringify(c.rejects[0]).slice(0, 60)}`);
      } else {
        const stats = await applyAll(t, layers, c.opts);
        await c.contained!(t, stats, jail);
      }
    });
  });

  it("left everything outside the targets as it was", async () => {
    expect(corpus.length).toBeGreaterThanOrEqual(20);
    const after = await snapshot(jail, isTarget);
    expect(after).toEqual(before);
    expect(read(path.join(jail, "sentinel"))).toBe("SENTINEL");
    expect(read(path.join(box, "sentinel2"))).toBe("SENTINEL2");
    expect(read(path.join(jail, "outside", "secret"))).toBe("SECRET");
    const st = await fs.stat("/etc/passwd");
    expect({ text: read("/etc/passwd"), mtimeMs: st.mtimeMs, nlink: st.nlink }).toEqual(passwd);
    for (const p of ["/etc/msb-pwned", "/msb-pwned", "/tmp/msb-pwned", path.join(tmp, "x"), path.join(tmp, "sentinel2")]) expect(existsSync(p)).toBe(false);
  });
});
