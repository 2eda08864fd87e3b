// The image store end to end against a real registry (Debian's docker-registry on 127.0.0.1):
// pull once, reuse offline, import OCI layouts and docker archives, concurrent pulls from two
// processes, nothing half-published on failure, and a sandbox booted from a pulled image.
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { pullEvents, pullImage, resolveImage } from "../../src/images/sources.js";
import { ImageStore } from "../../src/images/store.js";
import { CustomSandbox, ImageError, LayerError, LayerFormatError } from "../../src/index.js";
import { buildImage, pushImage, startFaultyProxy, startRegistry, type TestRegistry } from "./registry-helpers.js";

let registry: TestRegistry;
let root: string;
const dirs: string[] = [];
const tempDir = (prefix: string) => {
  const d = mkdtempSync(path.join(tmpdir(), prefix));
  dirs.push(d);
  return d;
};

const appImage = buildImage({
  layers: [
    { "etc/": "", "etc/app.conf": "version=1\n" },
    { "srv/": "", "srv/hello.txt": "hello from layer two\n" },
  ],
  env: ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hi"],
  cmd: ["cat", "/srv/hello.txt"],
  workingDir: "/srv",
});

beforeAll(async () => {
  registry = await startRegistry();
  await pushImage(registry.url, "test/app", "v1", appImage);
  root = tempDir("msb-store-test-");
}, 60_000);

afterAll(async () => {
  await registry?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const insecure = () => ({ registry: { insecure: [registry.host] } });

describe("pull and reuse", () => {
  it("pulls, unpacks once, honours the config, and resolves again without the registry", async () => {
    const store = new ImageStore(root);
    const ref = `${registry.host}/test/app:v1`;
    const image = await resolveImage(store, ref, insecure());
    expect(image.id).toBe(appImage.config.digest.slice(7));
    expect(readFileSync(path.join(image.rootfs, "srv/hello.txt"), "utf8")).toBe("hello from layer two\n");
    expect(image.config).toMatchObject({ env: expect.arrayContaining(["GREETING=hi"]), workingDir: "/srv", cmd: ["cat", "/srv/hello.txt"] });

    // Offline now: a bogus registry setting proves the cached image is used without any request.
    const again = await resolveImage(store, ref, { registry: { insecure: [], retries: 0 } });
    expect(again.id).toBe(image.id);
    const listed = await store.list();
    expect(listed).toEqual([{ ref, id: image.id, size: expect.any(Number) }]);
    expect(listed[0]!.size).toBeGreaterThan(0);
  });

  it("reports pull progress as an async iterable of typed events", async () => {
    const store = new ImageStore(tempDir("msb-store-events-"));
    const { events, image } = pullEvents(store, `${registry.host}/test/app:v1`, insecure());
    const seen: string[] = [];
    for await (const e of events) seen.push(e.type);
    expect(seen[0]).toBe("resolved");
    expect(seen.filter((t) => t === "layer-done")).toHaveLength(3); // config + 2 layers
    expect(seen.at(-1)).toBe("done");
    expect((await image).id).toBe(appImage.config.digest.slice(7));
  });

  it("removes and prunes", async () => {
    const store = new ImageStore(tempDir("msb-store-rm-"));
    const image = await resolveImage(store, `${registry.host}/test/app:v1`, insecure());
    expect(await store.remove(`${registry.host}/test/app:v1`)).toBe(true);
    expect(existsSync(store.imageDir(image.id))).toBe(false);
    expect(await store.remove(`${registry.host}/test/app:v1`)).toBe(false);
    expect(await store.prune()).toBeGreaterThan(0); // the blobs
    expect(readdirSync(store.blobDir)).toEqual([]);
  });

  it("never publishes half an image when a download fails or a blob is tampered with", async () => {
    const proxy = await startFaultyProxy(registry.host);
    try {
      const store = new ImageStore(tempDir("msb-store-cut-"));
      proxy.cutNext(10);
      await expect(pullImage(store, `${proxy.host}/test/app:v1`, { registry: { insecure: [proxy.host], retries: 0 } })).rejects.toThrow(
        /cut|ended|body|terminated/i,
      );
      expect(await store.list()).toEqual([]);
      expect(existsSync(path.join(store.root, "images")) ? readdirSync(path.join(store.root, "images")) : []).toEqual([]);
      // Tampered: the registry's stored layer no longer matches its digest.
      const layerHex = appImage.layers[0]!.digest.slice(7);
      const data = path.join(registry.storage, "docker/registry/v2/blobs/sha256", layerHex.slice(0, 2), layerHex, "data");
      const original = readFileSync(data);
      writeFileSync(data, Buffer.alloc(original.length, 0x41));
      try {
        await expect(pullImage(store, `${registry.host}/test/app:v1`, insecure())).rejects.toMatchObject({ code: "MSB_DIGEST_MISMATCH" });
        expect(await store.list()).toEqual([]);
      } finally {
        writeFileSync(data, original);
      }
    } finally {
      await proxy.close();
    }
  });

  it("lets two processes pull one image at once: one unpack, both succeed", async () => {
    const shared = tempDir("msb-store-race-");
    const script = `
      import { pullImage } from ${JSON.stringify(new URL("../../dist/images/sources.js", import.meta.url).href)};
      import { ImageStore } from ${JSON.stringify(new URL("../../dist/images/store.js", import.meta.url).href)};
      const image = await pullImage(new ImageStore(${JSON.stringify(shared)}), ${JSON.stringify(`${registry.host}/test/app:v1`)}, { registry: { insecure: [${JSON.stringify(registry.host)}] } });
      console.log(image.id);`;
    const run = () => {
      const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout!.on("data", (d) => (out += d));
      return once(child, "exit").then(([code]) => ({ code, out: out.trim() }));
    };
    const [a, b] = await Promise.all([run(), run()]);
    expect(a).toEqual({ code: 0, out: appImage.config.digest.slice(7) });
    expect(b).toEqual(a);
    expect(readdirSync(path.join(shared, "images"))).toEqual([a.out]);
  });
});

describe("layer compression", () => {
  // A layer of `zst` bytes standing for `tar`, with the media type registries use for zstd.
  const zstdImage = (zst: Buffer, tar: Buffer) => {
    const image = buildImage({ gzipLayers: [] });
    // Swap the layer for its zstd form, with the media type registries use for it.
    const layerDigest = `sha256:${createHash("sha256").update(zst).digest("hex")}`;
    image.blobs.set(layerDigest, zst);
    const config = JSON.parse(image.blobs.get(image.config.digest)!.toString());
    config.rootfs.diff_ids = [`sha256:${createHash("sha256").update(tar).digest("hex")}`];
    const configBytes = Buffer.from(JSON.stringify(config));
    const configDigest = `sha256:${createHash("sha256").update(configBytes).digest("hex")}`;
    image.blobs.set(configDigest, configBytes);
    image.config = { ...image.config, digest: configDigest, size: configBytes.length };
    image.layers = [{ mediaType: "application/vnd.oci.image.layer.v1.tar+zstd", digest: layerDigest, size: zst.length }];
    image.bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: image.mediaType, config: image.config, layers: image.layers }));
    image.digest = `sha256:${createHash("sha256").update(image.bytes).digest("hex")}`;
    return image;
  };

  it("unpacks zstd layers (through fzstd where Node's zlib has no zstd), and refuses a broken one", async () => {
    const gz = buildImage({ layers: [{ "z/": "", "z/data.txt": "compressed with zstd\n" }] });
    const tar = gunzipSync(gz.blobs.get(gz.layers[0]!.digest)!);
    const zst = execFileSync("zstd", ["-q", "-c"], { input: tar });
    await pushImage(registry.url, "test/zstd", "1", zstdImage(zst, tar));
    const pulled = await resolveImage(new ImageStore(tempDir("msb-store-zstd-")), `${registry.host}/test/zstd:1`, insecure());
    expect(readFileSync(path.join(pulled.rootfs, "z/data.txt"), "utf8")).toBe("compressed with zstd\n");
    // The zstd magic, then bytes that are no zstd frame.
    const broken = Buffer.concat([zst.subarray(0, 4), Buffer.alloc(64, 0xa5)]);
    await pushImage(registry.url, "test/zstd", "broken", zstdImage(broken, tar));
    const err = await resolveImage(new ImageStore(tempDir("msb-store-zstd-")), `${registry.host}/test/zstd:broken`, insecure()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LayerError);
    expect((err as LayerError).cause).toBeInstanceOf(LayerFormatError);
    expect(String(err)).toMatch(/zstd could not decompress layer sha256:/);
  });
});

describe("local sources", () => {
  it("imports an OCI layout directory, an OCI archive and a docker-save archive made by skopeo", async () => {
    const work = tempDir("msb-store-archives-");
    const src = `docker://${registry.host}/test/app:v1`;
    const skopeo = (dest: string) => execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", src, dest]);
    skopeo(`oci:${work}/layout:v1`);
    skopeo(`oci-archive:${work}/app.oci.tar:v1`);
    skopeo(`docker-archive:${work}/app.docker.tar:test/app:v1`);
    const store = new ImageStore(tempDir("msb-store-import-"));
    for (const ref of [`oci:${work}/layout:v1`, `oci-archive:${work}/app.oci.tar:v1`, `docker-archive:${work}/app.docker.tar`]) {
      const image = await resolveImage(store, ref);
      expect(readFileSync(path.join(image.rootfs, "srv/hello.txt"), "utf8")).toBe("hello from layer two\n");
      expect(image.config.workingDir).toBe("/srv");
    }
    await expect(resolveImage(store, `oci:${work}/layout:nope`)).rejects.toThrow(/no image tagged nope .*tags: v1/);
  });

  it("refuses archive members that are links to files outside the archive", async () => {
    const work = tempDir("msb-store-evil-");
    mkdirSync(path.join(work, "a"));
    symlinkSync("/dev/zero", path.join(work, "a", "manifest.json"));
    execFileSync("tar", ["-C", path.join(work, "a"), "-cf", path.join(work, "evil.tar"), "."]);
    const store = new ImageStore(tempDir("msb-store-evil-store-"));
    await expect(resolveImage(store, `docker-archive:${work}/evil.tar`)).rejects.toThrow(/manifest.json of .* (leads outside|is not a regular file)/);
  });

  it("re-imports an archive whose file changed at the same path", async () => {
    const work = tempDir("msb-store-reimport-");
    const store = new ImageStore(tempDir("msb-store-reimport-store-"));
    const archive = `${work}/app.tar`;
    execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${registry.host}/test/app:v1`, `oci-archive:${archive}:v1`]);
    const first = await resolveImage(store, `oci-archive:${archive}:v1`);
    const other = buildImage({ layers: [{ "srv/": "", "srv/hello.txt": "a different image\n" }] });
    await pushImage(registry.url, "test/other", "v1", other);
    rmSync(archive);
    execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${registry.host}/test/other:v1`, `oci-archive:${archive}:v1`]);
    const second = await resolveImage(store, `oci-archive:${archive}:v1`);
    expect(second.id).not.toBe(first.id);
    expect(readFileSync(path.join(second.rootfs, "srv/hello.txt"), "utf8")).toBe("a different image\n");
  });

  it("rejects an OCI layout whose blob does not match its digest", async () => {
    const work = tempDir("msb-store-tamper-");
    execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${registry.host}/test/app:v1`, `oci:${work}/layout:v1`]);
    const blobs = path.join(work, "layout", "blobs", "sha256");
    const layer = appImage.layers[1]!.digest.slice(7);
    if (existsSync(path.join(blobs, layer))) writeFileSync(path.join(blobs, layer), "tampered");
    const store = new ImageStore(tempDir("msb-store-tamper-store-"));
    await expect(resolveImage(store, `oci:${work}/layout:v1`)).rejects.toBeInstanceOf(ImageError);
    expect(await store.list()).toEqual([]);
  });
});

describe("a sandbox from a pulled image", () => {
  it("boots it and honours Env, WorkingDir and Cmd", async () => {
    // A bootable image: the busybox root filesystem as one gzipped layer.
    const busybox = (await new ImageStore().lookup("local:busybox"))!.rootfs;
    const layer = execFileSync("tar", ["-C", busybox, "-cz", "."], { maxBuffer: 64 * 1024 * 1024 });
    const image = buildImage({
      gzipLayers: [layer],
      env: ["PATH=/bin:/sbin:/usr/bin", "GREETING=hello from the image config"],
      cmd: ["sh", "-c", 'echo "$GREETING in $(pwd)"'],
      workingDir: "/srv",
    });
    await pushImage(registry.url, "test/busybox", "1", image);
    const sb = await CustomSandbox.create({ image: `${registry.host}/test/busybox:1`, registry: { insecure: [registry.host] }, memory: 128 });
    try {
      const r = await sb.command.run();
      expect(await r.output()).toBe("hello from the image config in /srv");
      const env = await sb.command.run("sh", ["-c", "echo $GREETING"], { env: { GREETING: "overridden" } });
      expect(await env.output()).toBe("overridden");
    } finally {
      await sb.stop();
    }
  });
});
