// The layer writer: a build VM's overlayfs upper dir, as the guest's tar sends it, rewritten into an
// OCI layer (whiteouts ".wh.NAME" for overlayfs's 0:0 character devices, ".wh..wh..opq" for
// directories the guest no longer sees the base's entries of), read back with the store's tar
// reader and applied over the base with the store's applyLayer. No VM: a stand-in agent sends the
// crafted archive of an upper dir and answers which names the guest sees.
import { createHash } from "node:crypto";
import { createReadStream, existsSync, readFileSync } from "node:fs";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type { AgentClient } from "../../src/agent-client/client.js";
import { archiveChanges, upperToLayer } from "../../src/build/layer.js";
import { applyLayer } from "../../src/images/layers.js";
import { readTar, type TarEntry } from "../../src/images/tar.js";
import { TarFileWriter } from "../../src/images/tar-write.js";
import { UPPER } from "../../src/sandbox/guest-io.js";
import { chunked, type TarSpec, tar } from "../images/tar-writer.js";

const MID_DIR = `srv/${"d".repeat(70)}`;
const LONG_DIR = `${MID_DIR}/${"e".repeat(70)}`;
const LONG_FILE = `${LONG_DIR}/file-with-a-long-path.txt`;
const LONG_TARGET = `/${"t".repeat(120)}/target`;
const whiteout = (p: string): TarSpec => ({ path: p, typeflag: "3", mode: 0, devmajor: 0, devminor: 0 });

// An upper dir as busybox tar archives it ("./" paths, parents first) after a build step that
// removed /linuxrc, /etc/group, /opt/old and /var/k1, /var/k2, replaced /usr/sbin by a new
// directory, and added files, among them a path and a link target longer than ustar holds.
const UPPER_TAR = tar([
  { path: "./", mode: 0o755 },
  whiteout("./linuxrc"),
  { path: "./etc/", mode: 0o755 },
  { path: "./etc/from-run", mode: 0o644, uid: 1000, gid: 1000, body: "made by RUN\n" },
  whiteout("./etc/group"),
  { path: "./etc/tty", typeflag: "3", devmajor: 5, devminor: 0 }, // a real device: not a layer's
  { path: "./var/", mode: 0o755 },
  whiteout("./var/k1"),
  { path: "./var/k2", typeflag: "1", linkname: "./var/k1" }, // overlayfs links whiteouts to one inode
  { path: "./usr/", mode: 0o755 },
  { path: "./usr/sbin/", mode: 0o700 },
  { path: "./usr/sbin/only", mode: 0o755, body: "#!/bin/sh\n" },
  { path: "./usr/bin/", mode: 0o755 },
  { path: "./usr/bin/new", mode: 0o755, body: "new\n" },
  { path: "./opt/", mode: 0o755 },
  whiteout("./opt/old"),
  { path: "./srv/", mode: 0o755 },
  { path: `./${MID_DIR}/` },
  { path: `./${LONG_DIR}/` },
  { path: `./${LONG_FILE}`, body: "deep\n" },
  { path: "./srv/long-link", typeflag: "2", linkname: LONG_TARGET },
  { path: "./srv/naïve.txt", body: "ü\n" },
  { path: "./srv/hl", typeflag: "1", linkname: "./etc/from-run" },
  { path: "./fifo", typeflag: "6" },
  // What the layer leaves out: the mount points and what is under them, paths that climb out.
  { path: "./tmp/", mode: 0o1777 },
  { path: "./tmp/junk", body: "junk\n" },
  { path: "./run/microsandbox/x", body: "x\n" },
  { path: "../escape", body: "out\n" },
]);

// What the guest sees (its merged view) where the upper leaves base entries unaccounted for.
const GUEST_SEES: Record<string, string[]> = {
  "/etc": ["from-run", "hosts", "passwd"],
  "/usr/sbin": ["only"],
  "/usr/bin": ["new", "x", "y"],
  "/var": ["keep"],
};

const ok = { exitCode: 0, signal: null, timedOut: false };

/** An agent whose guest tar sends `archive` (exiting with `exitCode`), and whose list() answers from `sees`. */
function fakeGuest(archive: Uint8Array, sees: Record<string, string[]>, exitCode = 0) {
  const calls: { spawned: string[][]; listed: string[] } = { spawned: [], listed: [] };
  const agent = {
    spawn(argv: string[]) {
      calls.spawned.push(argv);
      return {
        async *[Symbol.asyncIterator]() {
          for await (const data of chunked(archive)) yield { stream: "stdout" as const, data: Buffer.from(data) };
          if (exitCode) yield { stream: "stderr" as const, data: Buffer.from("tar: something broke\n") };
        },
        exit: Promise.resolve({ ...ok, exitCode }),
        kill() {},
      };
    },
    async list(p: string) {
      calls.listed.push(p);
      return (sees[p] ?? []).map((name) => ({ name }));
    },
  };
  return { agent: agent as unknown as AgentClient, calls };
}

async function entriesOf(file: string): Promise<Map<string, Omit<TarEntry, "body" | "skip">>> {
  const out = new Map<string, Omit<TarEntry, "body" | "skip">>();
  for await (const e of readTar(createReadStream(file))) {
    const { body: _b, skip: _s, ...meta } = e;
    out.set(e.path, meta);
  }
  return out;
}

let tmp: string;
let base: string;
beforeAll(async () => {
  tmp = await fs.realpath(await fs.mkdtemp(path.join(os.tmpdir(), "msb-build-layer-")));
  base = path.join(tmp, "base");
  const files: Record<string, string> = {
    "etc/passwd": "root:x:0:0::/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "usr/sbin/a": "a\n",
    "usr/sbin/b": "b\n",
    "usr/bin/x": "x\n",
    "usr/bin/y": "y\n",
    "opt/old/file": "old\n",
    "var/k1": "1\n",
    "var/k2": "2\n",
    "var/keep": "keep\n",
  };
  for (const [rel, text] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(base, rel)), { recursive: true });
    await fs.writeFile(path.join(base, rel), text);
  }
  await fs.symlink("/bin/busybox", path.join(base, "linuxrc"));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe("upperToLayer", () => {
  it("tells the opaque-directory check what each directory of the upper holds, whiteouts included, mount points left out", async () => {
    const raw = path.join(tmp, "upper.tar");
    await fs.writeFile(raw, UPPER_TAR);
    let seen: Map<string, Set<string>> | undefined;
    const out = new TarFileWriter(path.join(tmp, "layer-1.tar"));
    await upperToLayer(
      raw,
      out,
      async (dirs) => {
        seen = dirs;
        return new Set(["usr/sbin"]);
      },
      1 << 20,
    );
    await out.end();
    const sorted = Object.fromEntries([...seen!].map(([d, names]) => [d, [...names].sort()]));
    expect(sorted).toEqual({
      etc: ["from-run", "group", "tty"],
      var: ["k1", "k2"],
      usr: ["bin", "sbin"],
      "usr/sbin": ["only"],
      "usr/bin": ["new"],
      opt: ["old"],
      srv: ["d".repeat(70), "hl", "long-link", "naïve.txt"],
      [MID_DIR]: ["e".repeat(70)],
      [LONG_DIR]: ["file-with-a-long-path.txt"],
    });
    const layer = await entriesOf(path.join(tmp, "layer-1.tar"));
    expect(layer.has("usr/sbin/.wh..wh..opq")).toBe(true);
    expect(layer.has("etc/.wh..wh..opq")).toBe(false);
  });
});

describe("archiveChanges", () => {
  it("turns the guest's upper into a layer the store applies: deletions, an opaque directory, new files, long paths", async () => {
    const blobs = path.join(tmp, "blobs");
    const { agent, calls } = fakeGuest(UPPER_TAR, GUEST_SEES);
    const { digest, size } = await archiveChanges(agent, base, blobs, 1 << 20);
    expect(calls.spawned).toEqual([["tar", "-C", UPPER, "-cf", "-", "."]]);
    // The guest was asked about the directories hiding base entries; /usr/sbin is opaque because it
    // no longer sees a/b, /etc and the others are not because it still does.
    expect(calls.listed.sort()).toEqual(["/etc", "/usr/bin", "/usr/sbin", "/var"]);

    // The blob is named by its digest, and nothing else is left in the directory.
    const blob = path.join(blobs, digest.slice("sha256:".length));
    expect(await fs.readdir(blobs)).toEqual([digest.slice("sha256:".length)]);
    const bytes = readFileSync(blob);
    expect(`sha256:${createHash("sha256").update(bytes).digest("hex")}`).toBe(digest);
    expect(bytes.length).toBe(size);

    const layer = await entriesOf(blob);
    const marker = { type: "file", size: 0, mode: 0, uid: 0, gid: 0 };
    for (const wh of [".wh.linuxrc", "etc/.wh.group", "var/.wh.k1", "var/.wh.k2", "opt/.wh.old", "usr/sbin/.wh..wh..opq"]) {
      expect(layer.get(wh), wh).toMatchObject(marker);
    }
    expect([...layer.keys()].filter((p) => p.includes(".wh.")).sort()).toEqual(
      [".wh.linuxrc", "etc/.wh.group", "opt/.wh.old", "usr/sbin/.wh..wh..opq", "var/.wh.k1", "var/.wh.k2"].sort(),
    );
    expect(layer.get("etc/from-run")).toMatchObject({ type: "file", mode: 0o644, uid: 1000, gid: 1000, size: 12 });
    expect(layer.get("usr/sbin/")).toMatchObject({ type: "dir", mode: 0o700 });
    expect(layer.get("srv/hl")).toMatchObject({ type: "hardlink", linkname: "etc/from-run" });
    // Long names come back whole (the writer carries them in PAX records).
    expect(layer.get(LONG_FILE)).toMatchObject({ type: "file", size: 5 });
    expect(layer.get("srv/long-link")).toMatchObject({ type: "symlink", linkname: LONG_TARGET });
    expect(layer.get("srv/naïve.txt")).toMatchObject({ type: "file", size: 3 });
    // Left out: the root, devices, fifos, mount points, paths that climb out.
    for (const p of layer.keys()) expect(p).not.toMatch(/^(\.\/?|tmp\/.*|run\/.*|etc\/tty|fifo|.*escape.*)$/);

    // Applied over (a copy of) the base as the store applies layers.
    const root = path.join(tmp, "applied");
    await fs.cp(base, root, { recursive: true, verbatimSymlinks: true });
    await applyLayer(createReadStream(blob), root, { layer: digest });
    const at = (rel: string) => path.join(root, rel);
    const ls = async (rel: string) => (await fs.readdir(at(rel))).sort();
    expect(await fs.lstat(at("linuxrc")).catch(() => null)).toBeNull();
    expect(await ls("etc")).toEqual(["from-run", "hosts", "passwd"]);
    expect(readFileSync(at("etc/from-run"), "utf8")).toBe("made by RUN\n");
    expect(await ls("usr/sbin")).toEqual(["only"]); // the opaque directory: none of the base's a, b
    expect(await ls("usr/bin")).toEqual(["new", "x", "y"]);
    expect(await ls("var")).toEqual(["keep"]);
    expect(await ls("opt")).toEqual([]);
    expect(readFileSync(at(LONG_FILE), "utf8")).toBe("deep\n");
    expect(await fs.readlink(at("srv/long-link"))).toBe(LONG_TARGET);
    expect(readFileSync(at("srv/naïve.txt"), "utf8")).toBe("ü\n");
    expect((await fs.stat(at("srv/hl"))).ino).toBe((await fs.stat(at("etc/from-run"))).ino);
    expect(existsSync(at("tmp"))).toBe(false);
    expect(existsSync(at("run"))).toBe(false);
    expect(existsSync(at("fifo"))).toBe(false);
    expect(existsSync(path.join(tmp, "escape"))).toBe(false);
  });

  it("fails, leaving nothing behind, when the guest's tar fails, sends garbage or sends more than the limit", async () => {
    for (const [name, archive, exitCode, limit, why] of [
      ["exit", UPPER_TAR, 2, 1 << 20, /exit 2: tar: something broke/],
      ["garbage", new Uint8Array(1024).fill(0x41), 0, 1 << 20, /header field chksum is not octal/],
      ["big", UPPER_TAR, 0, 4096, /more than 4096 bytes/],
    ] as const) {
      const dir = path.join(tmp, `fail-${name}`);
      const { agent } = fakeGuest(archive, GUEST_SEES, exitCode);
      await expect(archiveChanges(agent, base, dir, limit), name).rejects.toThrow(why);
      expect(await fs.readdir(dir), name).toEqual([]);
    }
  });
});
